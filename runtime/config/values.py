"""Typed reads of YAML values (string, number, size, choice, list, I/O entry ...) for one source.

Every error is a ConfigError naming the key path ("functions.aws[0].lambda.input[1].path") and the source.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from conveyor.config.model import IOSpec, ProviderRef
from conveyor.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}

# A section of the document to merge with others: (the YAML value, its key path as errors name it).
Section = tuple[Any, str]


def join(prefix: str, key: str | int) -> str:
    """A key path one level down: `a.b`, or `a[0]` for a list index."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def kind(value: Any) -> str:
    """What a YAML value is, for an error message: "a mapping", "a string ('x')", "null" ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string ({value!r})" if len(value) <= 40 else "a string"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return type(value).__name__


class Values:
    """The typed accessors for values read from `source`; `None` (absent) gives the default."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, source=self.source)

    def mapping(self, value: Any, key: str) -> Mapping[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping, not {kind(value)}")
        return value

    def string(self, value: Any, key: str, default: str | None = None) -> str | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(key, f"must be a string, not {kind(value)}")
        return str(value)

    def boolean(self, value: Any, key: str, default: bool | None) -> bool | None:
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise self.fail(key, f"must be true or false, not {value!r}")

    def number(self, value: Any, key: str, default: float | None) -> float | None:
        if value is None:
            return default
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number) or number < 0:
            raise self.fail(key, f"must be a non-negative number of seconds, not {value!r}")
        return number

    def size(self, value: Any, key: str, default: int | None) -> int | None:
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and (match := _SIZE.match(value)):
            unit = match.group(2).lower() if match.group(2) else None
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
        raise self.fail(key, f"must be a non-negative size in bytes (e.g. 1048576 or '512Mi'), not {value!r}")

    def choice(self, value: Any, key: str, default: str, choices: tuple[str, ...], upper: bool) -> str:
        text = self.string(value, key)
        if text is None:
            return default
        text = text.strip().upper() if upper else text.strip().lower()
        if upper and text == "WARN":
            text = "WARNING"
        if text not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return text

    def str_list(self, value: Any, key: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of strings, not {kind(value)}")
        items = []
        for i, item in enumerate(value):
            text = self.string(item, join(key, i))
            if text is None:
                raise self.fail(join(key, i), "must be a string, not null")
            items.append(text)
        return tuple(items)

    def variables(self, value: Any, key: str) -> dict[str, str]:
        """Environment variables: scalars as strings (booleans as true/false, null as "")."""
        out: dict[str, str] = {}
        for name, val in self.mapping(value, key).items():
            where = join(key, str(name))
            if isinstance(val, bool):
                out[str(name)] = "true" if val else "false"
            elif val is None:
                out[str(name)] = ""
            elif isinstance(val, (str, int, float)):
                out[str(name)] = str(val)
            else:
                raise self.fail(where, f"must be a string, not {kind(val)}")
        return out

    def provider_ref(self, value: Any, key: str) -> ProviderRef:
        if value is None:
            raise self.fail(key, "is required (e.g. 'minio.default' or 's3')")
        text = self.string(value, key) or ""
        try:
            return ProviderRef.parse(text)
        except ConfigError as exc:
            raise self.fail(key, exc.message) from None

    def io_spec(self, value: Any, key: str) -> IOSpec:
        if value is None:
            raise self.fail(key, "must be a mapping with storage_provider and path, not null")
        entry = self.mapping(value, key)
        ref = self.provider_ref(entry.get("storage_provider"), join(key, "storage_provider"))
        path = self.string(entry.get("path"), join(key, "path"))
        if path is None or not path.strip("/ "):
            raise self.fail(join(key, "path"), "is required: 'bucket' or 'bucket/folder'")
        return IOSpec(
            provider=ref,
            path=path.strip(),
            prefix=self.str_list(entry.get("prefix"), join(key, "prefix")),
            suffix=self.str_list(entry.get("suffix"), join(key, "suffix")),
        )

    def io_list(self, value: Any, key: str) -> tuple[IOSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of {{storage_provider, path}} entries, not {kind(value)}")
        return tuple(self.io_spec(item, join(key, i)) for i, item in enumerate(value))
