"""The user script (contract section 4): where it comes from, as bytes.

First found wins: env SCRIPT (base64), then /oscar/config/script.sh, then `init_script` (a file, or
the script's text), then OSCAR's `script`. A script file the config names but that is missing raises
ScriptMissing, which the loader records in FunctionConfig.script_error instead of failing: only the
script handler needs a script, and a per-call event `script` overrides it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

from conveyor.config.model import DEFAULTS_SOURCE, LAMBDA_TASK_DIR, OSCAR_SCRIPT_PATH, ReadFile, is_inline_script
from conveyor.config.sources import b64_bytes, read
from conveyor.config.values import Values
from conveyor.errors import ConfigError
from conveyor.platform import Platform


class ScriptMissing(Exception):
    """The config names a script file that is not there: recorded, raised by require_script()."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


def resolve_script(
    values: Values,
    environ: Mapping[str, str],
    platform: Platform,
    read_file: ReadFile,
    init_script: tuple[str | None, str],
    oscar_script: tuple[Any, str],
) -> tuple[bytes | None, str | None]:
    """(the script, where it came from), or (None, None) when there is none anywhere.

    `init_script` and `oscar_script` are (the value, its key path). Raises ScriptMissing.
    """
    encoded = environ.get("SCRIPT")
    if encoded and encoded.strip():
        return b64_bytes(encoded, "env SCRIPT", "SCRIPT"), "env SCRIPT"
    text = read(read_file, OSCAR_SCRIPT_PATH)
    if text is not None:
        return _encode(text), OSCAR_SCRIPT_PATH
    init_value, init_key = init_script
    if init_value is not None and init_value.strip():
        return _named_script(values, platform, read_file, init_value, init_key, inline_if=is_inline_script)
    oscar_value, oscar_key = oscar_script
    oscar_text = values.string(oscar_value, oscar_key)
    if oscar_text is not None and oscar_text.strip():
        # OSCAR writes the script's text here; oscar-cli definitions hold a file name
        return _named_script(values, platform, read_file, oscar_text, oscar_key, inline_if=_inline_or_command)
    return None, None


def _inline_or_command(value: str) -> bool:
    """OSCAR's `script` is taken as the text itself when it is not a file: several lines, or a command line."""
    return is_inline_script(value) or " " in value.strip()


def _named_script(
    values: Values, platform: Platform, read_file: ReadFile, value: str, key: str, inline_if: Callable[[str], bool]
) -> tuple[bytes, str]:
    """A script named by the config: a readable file, else (if `inline_if`) the text itself."""
    candidates = [] if is_inline_script(value) else script_paths(value.strip(), values.source, platform)
    for candidate in candidates:
        text = read(read_file, candidate, values.source)
        if text is not None:
            return _encode(text), f"{key} {candidate}"
    if inline_if(value):
        return _encode(value), f"{key} (inline)"
    raise ScriptMissing(values.fail(key, f"script file not found (looked in {', '.join(candidates)})"))


def script_paths(value: str, source: str, platform: Platform) -> list[str]:
    """Where a relative script path may be: next to the config file, in /var/task (Lambda), the cwd."""
    if PurePosixPath(value).is_absolute():
        return [value]
    candidates: list[str] = []
    if source != DEFAULTS_SOURCE and not source.startswith("env "):
        candidates.append(os.path.normpath(os.path.join(os.path.dirname(source), value)))
    if platform is Platform.LAMBDA:
        # SCAR copies the script next to function_config.yaml, under its base name
        candidates.append(f"{LAMBDA_TASK_DIR}/{PurePosixPath(value).name}")
    candidates.append(value)
    return list(dict.fromkeys(candidates))


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")
