"""Where the function definition comes from, read as text and parsed as YAML.

First found wins:
  always:     --config FILE (explicit, wins over everything; a missing file is an error)
  Lambda:     /var/task/function_config.yaml, then env FDL (base64 YAML)
  elsewhere:  /oscar/config/function_config.yaml, then env FUNCTION_CONFIG (base64 YAML)
  none found: the defaults (source "<defaults>")
A definition written as JSON (a subset of YAML; what tools generate) is read by json, without
importing yaml (8 ms of every cold start), when YAML would read it the same way (a surrogate pair
escaped as \\ud83d\\ude00 becomes the one character it stands for, where YAML made two halves).
Beneath the definition's `conveyor:` block lie the image's defaults: /etc/conveyor/defaults.yaml, or
the file CONVEYOR_DEFAULTS names. Every file is read through the `read_file` seam (ReadFile).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from conveyor.config.model import (
    DEFAULTS_SOURCE,
    IMAGE_DEFAULTS_PATH,
    LAMBDA_CONFIG_PATH,
    OSCAR_CONFIG_PATH,
    ReadFile,
)
from conveyor.config.values import Section
from conveyor.errors import ConfigError
from conveyor.platform import Platform


class AliasRefused(Exception):
    """A definition uses a YAML alias (`*name`): refused, so a nest of aliases cannot expand without bound."""


def _check_no_alias(text: str) -> None:
    """AliasRefused at the first alias event. Anchors alone are harmless; aliases are what expand (billion laughs).

    The events are scanned before the document is built, so nothing is expanded. No SCAR or OSCAR
    definition in tests/configs uses anchors or aliases.
    """
    import yaml

    for event in yaml.parse(text, Loader=_yaml_loader()):
        if isinstance(event, yaml.AliasEvent):
            mark = event.start_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise AliasRefused(f"YAML aliases (*{event.anchor}) are not allowed in a definition{where}")


def read_text_file(path: str) -> str | None:
    """The default `read_file`: the file's text (undecodable bytes kept as surrogates), None when absent."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def read(reader: ReadFile, path: str, source: str | None = None) -> str | None:
    """`reader(path)`, an unreadable file (OSError) raised as a ConfigError naming it (or `source`)."""
    try:
        return reader(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", source=source or path) from None


def find_source(
    environ: Mapping[str, str], platform: Platform, path: str | None, reader: ReadFile
) -> tuple[str | None, str]:
    """(the definition's text or None, where it came from), in the order the module docstring gives."""
    if path is not None:
        text = read(reader, path)
        if text is None:
            raise ConfigError(f"config file not found: {path}", source=path)
        return text, path
    file_path, env_name = (
        (LAMBDA_CONFIG_PATH, "FDL") if platform is Platform.LAMBDA else (OSCAR_CONFIG_PATH, "FUNCTION_CONFIG")
    )
    text = read(reader, file_path)
    if text is not None:
        return text, file_path
    encoded = environ.get(env_name)
    if encoded and encoded.strip():
        source = f"env {env_name}"
        return b64_text(encoded, source, env_name), source
    return None, DEFAULTS_SOURCE


def image_defaults(environ: Mapping[str, str], reader: ReadFile) -> list[Section]:
    """The image's `conveyor:` block, as a section beneath the definition's (none when absent)."""
    path = environ.get("CONVEYOR_DEFAULTS") or IMAGE_DEFAULTS_PATH
    text = read(reader, path)
    if text is None:
        if environ.get("CONVEYOR_DEFAULTS"):
            raise ConfigError(f"image defaults file not found: {path}", key="CONVEYOR_DEFAULTS", source=path)
        return []
    doc = parse_yaml(text, path)
    if doc is None:
        return []
    if not isinstance(doc, Mapping) or not isinstance(doc.get("conveyor", {}), Mapping):
        raise ConfigError("must be a mapping with a `conveyor:` mapping", key="conveyor", source=path)
    return [(doc.get("conveyor"), f"{path}: conveyor")]


def b64_bytes(value: str, source: str, key: str) -> bytes:
    """Base64 as the platforms write it (wrapped or not); ConfigError naming `key` and `source` otherwise."""
    compact = "".join(value.split())  # `base64` wraps at 76 columns
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("not valid base64", key=key, source=source) from None


def b64_text(value: str, source: str, key: str) -> str:
    try:
        return b64_bytes(value, source, key).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("decodes to bytes that are not UTF-8 text", key=key, source=source) from None


def _yaml_loader() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # a safe loader (libyaml when available)


class _NotLikeYaml(ValueError):
    """A JSON number or constant that YAML reads otherwise (1e5 and NaN are strings in YAML 1.1)."""


def _yaml_float(literal: str) -> float:
    """A JSON float literal as YAML 1.1 reads it: a float needs a '.', and a signed exponent."""
    exponent = literal.lower().partition("e")[2]
    if "." not in literal or (exponent and exponent[0] not in "+-"):
        raise _NotLikeYaml(literal)
    return float(literal)


def _not_like_yaml(literal: str) -> Any:
    raise _NotLikeYaml(literal)


def _json_document(text: str) -> tuple[bool, Any]:
    """(True, the document) when `text` is a JSON object that YAML reads the same way; else (False, None)."""
    if not text.lstrip(" \t\r\n").startswith("{"):
        return False, None
    try:
        return True, json.loads(text, parse_float=_yaml_float, parse_constant=_not_like_yaml)
    except (ValueError, RecursionError):  # not JSON after all, or JSON YAML reads otherwise: YAML decides
        return False, None


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document (safe loader); any failure is one ConfigError line naming the source."""
    is_json, document = _json_document(text)
    if is_json:
        return document
    import yaml

    try:
        _check_no_alias(text)
        return yaml.load(text, Loader=_yaml_loader())
    except AliasRefused as exc:
        raise ConfigError(str(exc), source=source) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"not valid YAML: {problem}{where}", source=source) from None
    except (yaml.YAMLError, ValueError) as exc:  # e.g. unencodable characters
        raise ConfigError(f"not valid YAML: {' '.join(str(exc).split())}", source=source) from None
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply", source=source) from None
