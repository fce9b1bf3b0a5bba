"""The function definition (contract section 3), parsed once into frozen dataclasses.

Sources, first found wins:
  always:     --config FILE (explicit, wins over everything; a missing file is an error)
  Lambda:     /var/task/function_config.yaml, then env FDL (base64 YAML)
  elsewhere:  /oscar/config/function_config.yaml, then env FUNCTION_CONFIG (base64 YAML)
  none found: the defaults (source "<defaults>")
Env overrides: LOG_LEVEL, EXECUTION_MODE, TIMEOUT_THRESHOLD. Conveyor's own keys live under
`conveyor:`; an image may set their defaults in /etc/conveyor/defaults.yaml (or the file
CONVEYOR_DEFAULTS names), beneath the definition's. Unknown keys are ignored; a wrong type fails
with the key path and the source named.

Shapes understood, unchanged:
  - the flat file SCAR writes into the image (/var/task/function_config.yaml, and base64 in the
    Batch job's FUNCTION_CONFIG): the `lambda:` section of the user's definition, plus
    `storage_providers` and, in batch mode, `batch: {multi_node_parallel: ...}`;
  - the flat service OSCAR writes into /oscar/config/function_config.yaml (`image`, `script`,
    `environment.variables`, `minio.default` with `hidden` keys ...);
  - the user-facing definitions (for --config): SCAR's `functions: {aws: [{lambda: {...}, batch: {...}}]}`
    and oscar-cli's `functions: {oscar: [{<cluster>: {...}}]}`, with `storage_providers` at the top.

The user script is resolved here too (contract section 4): env SCRIPT (base64), then
/oscar/config/script.sh, then `init_script` (a file, or the script's text), then OSCAR's `script`.
A script file the config names but that is missing is recorded in `script_error`, not raised:
only the script handler needs a script, and a per-call event `script` overrides it
(FunctionConfig.require_script() raises it where a script is really needed).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import yaml

from conveyor.errors import ConfigError, CredentialsError
from conveyor.platform import Platform

log = logging.getLogger("conveyor")

LAMBDA_CONFIG_PATH = "/var/task/function_config.yaml"
LAMBDA_TASK_DIR = "/var/task"  # where SCAR copies init_script (by its base name) next to the config
OSCAR_CONFIG_PATH = "/oscar/config/function_config.yaml"
OSCAR_SCRIPT_PATH = "/oscar/config/script.sh"
MINIO_SECRETS_DIR = "/var/run/secrets/providers"  # <dir>/minio.default/accessKey, .../secretKey
MINIO_DEFAULT_ENDPOINT = "http://minio-service.minio:9000"
# An image's own defaults for the `conveyor:` block (its handler, say): the function definition's
# `conveyor:` keys win over them. CONVEYOR_DEFAULTS names another file.
IMAGE_DEFAULTS_PATH = "/etc/conveyor/defaults.yaml"

PROVIDER_TYPES = ("s3", "minio", "onedata", "webdav", "local")
EXECUTION_MODES = ("lambda", "batch", "lambda-batch")
LOG_LEVELS = ("NOTSET", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ISOLATION_LEVELS = ("SERVICE", "USER")
HIDDEN = "hidden"  # what OSCAR writes in place of the minio.default keys: not a key
REDACTED = "***"
DEFAULTS_SOURCE = "<defaults>"
ENV_SOURCE = "environment"

# Environment variables and handler options whose names look like secrets are redacted too.
_SECRET_NAME = re.compile(r"secret|token|passw|credential|private|api_?key|access_?key", re.IGNORECASE)
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

ReadFile = Callable[[str], "str | None"]
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class ProviderRef:
    """A `storage_provider` value: `<type>` or `<type>.<id>`; the id defaults to `default`."""

    type: str
    id: str = "default"

    def __str__(self) -> str:
        return f"{self.type}.{self.id}"

    @classmethod
    def parse(cls, value: str, default_type: str | None = None) -> ProviderRef:
        """`minio` -> minio.default, `minio.default`, `s3.my.bucket` -> (s3, my.bucket): split on the first dot.

        The type is case-insensitive (faas-supervisor upper-cases it). With `default_type`, a value
        whose first segment is not a known type is taken as a bare id of that type: the
        delegated-event form faas-supervisor 1.5.8 expects (`default` -> minio.default).
        """
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"storage provider must be a non-empty string like 'minio.default', not {value!r}")
        text = value.strip()
        type_, dot, id_ = text.partition(".")
        type_ = type_.lower()
        if type_ not in PROVIDER_TYPES:
            if default_type is not None:
                return cls(default_type.lower(), text)
            choices = ", ".join(PROVIDER_TYPES)
            raise ConfigError(f"unknown storage provider type {type_!r} in {value!r} (known: {choices})")
        if dot and not id_:
            raise ConfigError(f"storage provider {value!r} has an empty id")
        return cls(type_, id_ or "default")


S3_DEFAULT = ProviderRef("s3")
MINIO_DEFAULT = ProviderRef("minio")


@dataclass(frozen=True)
class StorageProvider:
    """Credentials and location of one configured provider. Secrets are never logged (not in repr)."""

    ref: ProviderRef
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint: str | None = None  # minio (and s3 when an S3-compatible endpoint is given)
    verify: bool = True
    # onedata / webdav (parsed, not implemented as stores yet)
    host: str | None = None  # onedata oneprovider_host, webdav hostname
    token: str | None = field(default=None, repr=False)
    space: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    root: str | None = None  # local provider: the folder that stands for the buckets
    credentials_source: str | None = None  # where the keys came from: "<dir>/minio.default" or "<source>: <key path>"

    @property
    def has_keys(self) -> bool:
        return bool(self.access_key and self.secret_key)


@dataclass(frozen=True)
class IOSpec:
    """One `input[]` / `output[]` entry."""

    provider: ProviderRef
    path: str  # "bucket/prefix/in/bucket"
    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()

    @property
    def bucket(self) -> str:
        return self.path.strip("/").split("/", 1)[0]

    @property
    def key_prefix(self) -> str:
        parts = self.path.strip("/").split("/", 1)
        return parts[1] if len(parts) > 1 else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "storage_provider": str(self.provider),
            "path": self.path,
            "prefix": list(self.prefix),
            "suffix": list(self.suffix),
        }


@dataclass(frozen=True)
class HandlerSpec:
    """`conveyor: handler:` - which handler runs the model, and its own options."""

    name: str = "script"
    options: Mapping[str, Any] = field(default_factory=_frozen)


@dataclass(frozen=True)
class ConveyorSettings:
    """Conveyor's own additions, all under the top-level `conveyor:` key."""

    handler: HandlerSpec = field(default_factory=HandlerSpec)
    timeout: float | None = None  # per-record handler deadline, seconds (None: only the platform's)
    grace_period: float = 10.0  # seconds between SIGTERM and SIGKILL for the child
    # A failed record removes what it had uploaded; while the store is unreachable it keeps trying this long.
    withdraw_timeout: float = 30.0
    status: IOSpec | None = None  # where result records are uploaded
    expected_duration: float | None = None  # lambda-batch: expected handler seconds
    lambda_max_size: int | None = None  # lambda-batch: largest object (bytes) Lambda should take
    log_tail_bytes: int = 4096  # how much of the log the result record keeps
    log_max_bytes: int = 10 * 1024 * 1024  # cap of the per-record log file
    # A record whose model wrote no file is FAILED. None (auto): required when the config has
    # output entries and the caller does not wait for a response (whose body may be stdout).
    require_output: bool | None = None


@dataclass(frozen=True)
class FunctionConfig:
    name: str = "conveyor"
    log_level: str = "INFO"
    execution_mode: str = "lambda"  # lambda | batch | lambda-batch
    file_stage_in: bool = False
    init_script: str | None = None  # a path (SCAR) or the script's text
    image: str | None = None
    timeout_threshold: float = 10.0
    # container.environment.Variables (SCAR) merged with environment.variables (OSCAR)
    environment: Mapping[str, str] = field(default_factory=_frozen)
    multi_node_parallel: bool = False
    inputs: tuple[IOSpec, ...] = ()
    outputs: tuple[IOSpec, ...] = ()
    isolation_level: str = "SERVICE"
    bucket_list: tuple[str, ...] = ()
    providers: Mapping[str, StorageProvider] = field(default_factory=_frozen)  # "minio.default" -> provider
    conveyor: ConveyorSettings = field(default_factory=ConveyorSettings)
    script: bytes | None = field(default=None, repr=False)  # env SCRIPT (base64), /oscar/config/script.sh, init_script
    script_source: str | None = None  # where `script` came from ("env SCRIPT", a path ...)
    script_error: str | None = None  # the config names a script file that is not there (see require_script)
    source: str = DEFAULTS_SOURCE  # where the definition was read from
    secrets_dir: str | None = MINIO_SECRETS_DIR  # where minio.default's secret files were looked for

    def require_script(self) -> bytes:
        """The user script, or ConfigError: none anywhere, or the file `init_script` names is missing.

        Loading does not fail on a missing script file, because only the script handler needs one and
        a per-call event `script` overrides it; call this where the script is really about to run.
        """
        if self.script is not None:
            return self.script
        if self.script_error:
            raise ConfigError(self.script_error)
        raise ConfigError(
            "no user script: set SCRIPT, mount /oscar/config/script.sh, or give init_script", source=self.source
        )

    def provider(self, ref: ProviderRef | str) -> StorageProvider:
        """The configured provider for a ref, with `default` fallbacks.

        s3.default with nothing configured is the platform's own credentials (no keys). A MinIO
        provider without keys raises CredentialsError; any other id not configured, ConfigError.
        """
        if not isinstance(ref, ProviderRef):
            ref = ProviderRef.parse(ref)
        found = self.providers.get(str(ref))
        if found is None:
            if ref == S3_DEFAULT:
                return StorageProvider(ref)
            if ref == MINIO_DEFAULT:
                raise CredentialsError(self._missing_minio_keys(ref), provider=str(ref))
            raise ConfigError(
                f"storage provider '{ref}' is not configured (add it under storage_providers)",
                key=f"storage_providers.{ref.type}.{ref.id}",
                source=self.source,
            )
        if ref.type == "minio" and not found.has_keys:
            raise CredentialsError(self._missing_minio_keys(ref), provider=str(ref))
        return found

    def _missing_minio_keys(self, ref: ProviderRef) -> str:
        looked = []
        if ref == MINIO_DEFAULT:
            if self.secrets_dir:
                looked.append(f"the secret files {self.secrets_dir}/minio.default/accessKey and secretKey are absent")
            else:
                looked.append("no secrets folder was given for the minio.default secret files")
        looked.append(
            f"storage_providers.minio.{ref.id} in {self.source} has no access_key/secret_key"
            f" (the value '{HIDDEN}' does not count)"
        )
        return f"no credentials for storage provider '{ref}': " + "; ".join(looked)

    def redacted(self) -> dict[str, Any]:
        """A JSON-ready dict with every secret replaced by '***' and the script shown by length only."""
        return {
            "source": self.source,
            "name": self.name,
            "log_level": self.log_level,
            "execution_mode": self.execution_mode,
            "file_stage_in": self.file_stage_in,
            "init_script": _script_label(self.init_script),
            "image": self.image,
            "timeout_threshold": self.timeout_threshold,
            "environment": {k: REDACTED if _SECRET_NAME.search(k) else v for k, v in self.environment.items()},
            "multi_node_parallel": self.multi_node_parallel,
            "input": [spec.to_dict() for spec in self.inputs],
            "output": [spec.to_dict() for spec in self.outputs],
            "isolation_level": self.isolation_level,
            "bucket_list": list(self.bucket_list),
            "storage_providers": {key: _provider_dict(p) for key, p in sorted(self.providers.items())},
            "conveyor": _conveyor_dict(self.conveyor),
            "script": _script_dict(self),
        }


def _script_dict(config: FunctionConfig) -> dict[str, Any] | None:
    if config.script is not None:
        return {"length": len(config.script), "source": config.script_source}
    return None if config.script_error is None else {"error": config.script_error}


def _script_label(value: str | None) -> str | None:
    """init_script as shown by `inspect`: a path as is, inline text by its length only."""
    if value is None or not _looks_like_text(value):
        return value
    return f"<inline script, {len(value.encode(errors='surrogateescape'))} bytes>"


def _provider_dict(p: StorageProvider) -> dict[str, Any]:
    out: dict[str, Any] = {"type": p.ref.type, "id": p.ref.id}
    for name in ("endpoint", "region", "host", "space", "login", "root"):
        if getattr(p, name) is not None:
            out[name] = getattr(p, name)
    if p.ref.type in ("s3", "minio"):
        out["verify"] = p.verify
    for name in ("access_key", "secret_key", "token", "password"):
        if getattr(p, name) is not None:
            out[name] = REDACTED
    out["credentials"] = p.credentials_source
    return out


def _redact_options(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): REDACTED if _SECRET_NAME.search(str(k)) else _redact_options(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_options(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # dates and other YAML scalars


def _conveyor_dict(c: ConveyorSettings) -> dict[str, Any]:
    return {
        "handler": {"name": c.handler.name, "options": _redact_options(c.handler.options)},
        "timeout": c.timeout,
        "grace_period": c.grace_period,
        "withdraw_timeout": c.withdraw_timeout,
        "status": None if c.status is None else c.status.to_dict(),
        "expected_duration": c.expected_duration,
        "lambda_max_size": c.lambda_max_size,
        "log_tail_bytes": c.log_tail_bytes,
        "log_max_bytes": c.log_max_bytes,
        "require_output": c.require_output,
    }


# --------------------------------------------------------------------------------------------
# Loading


def read_text_file(path: str) -> str | None:
    """The default `read_file`: the file's text (undecodable bytes kept as surrogates), None when absent."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def load_config(
    environ: Mapping[str, str],
    platform: Platform | str,
    path: str | Path | None = None,
    read_file: ReadFile | None = None,
    secrets_dir: str | Path | None = MINIO_SECRETS_DIR,
) -> FunctionConfig:
    """Find and parse the function definition. `read_file(path)` returns text or None (absent).

    Raises ConfigError (naming the key and the source) for anything unusable.
    """
    platform = Platform(platform)
    reader = read_file or read_text_file
    text, source = _find_source(environ, platform, None if path is None else str(path), reader)
    doc = _parse_yaml(text, source) if text is not None else {}
    secrets = None if secrets_dir is None else str(secrets_dir)
    parser = _Parser(source, environ, platform, reader, secrets)
    parser.base_conveyor = _image_defaults(environ, reader)
    return parser.build(doc)


def _image_defaults(environ: Mapping[str, str], reader: ReadFile) -> list[tuple[Any, str]]:
    """The image's `conveyor:` block, as a section beneath the definition's (none when absent)."""
    path = environ.get("CONVEYOR_DEFAULTS") or IMAGE_DEFAULTS_PATH
    text = _read(reader, path)
    if text is None:
        if environ.get("CONVEYOR_DEFAULTS"):
            raise ConfigError(f"image defaults file not found: {path}", key="CONVEYOR_DEFAULTS", source=path)
        return []
    doc = _parse_yaml(text, path)
    if doc is None:
        return []
    if not isinstance(doc, Mapping) or not isinstance(doc.get("conveyor", {}), Mapping):
        raise ConfigError("must be a mapping with a `conveyor:` mapping", key="conveyor", source=path)
    return [(doc.get("conveyor"), f"{path}: conveyor")]


def _read(reader: ReadFile, path: str, source: str | None = None) -> str | None:
    try:
        return reader(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", source=source or path) from None


def _find_source(
    environ: Mapping[str, str], platform: Platform, path: str | None, reader: ReadFile
) -> tuple[str | None, str]:
    if path is not None:
        text = _read(reader, path)
        if text is None:
            raise ConfigError(f"config file not found: {path}", source=path)
        return text, path
    file_path, env_name = (
        (LAMBDA_CONFIG_PATH, "FDL") if platform is Platform.LAMBDA else (OSCAR_CONFIG_PATH, "FUNCTION_CONFIG")
    )
    text = _read(reader, file_path)
    if text is not None:
        return text, file_path
    encoded = environ.get(env_name)
    if encoded and encoded.strip():
        source = f"env {env_name}"
        return _b64_text(encoded, source, env_name), source
    return None, DEFAULTS_SOURCE


def _b64_bytes(value: str, source: str, key: str) -> bytes:
    compact = "".join(value.split())  # `base64` wraps at 76 columns
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("not valid base64", key=key, source=source) from None


def _b64_text(value: str, source: str, key: str) -> str:
    try:
        return _b64_bytes(value, source, key).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("decodes to bytes that are not UTF-8 text", key=key, source=source) from None


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # a safe loader (libyaml when available)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"not valid YAML: {problem}{where}", source=source) from None
    except (yaml.YAMLError, ValueError) as exc:  # e.g. unencodable characters
        raise ConfigError(f"not valid YAML: {' '.join(str(exc).split())}", source=source) from None
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply", source=source) from None


def _looks_like_text(value: str) -> bool:
    return "\n" in value or value.lstrip().startswith("#!")


def _join(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


class _Parser:
    """Turns one parsed YAML document into a FunctionConfig; every error names key path and source."""

    def __init__(
        self, source: str, environ: Mapping[str, str], platform: Platform, reader: ReadFile, secrets_dir: str | None
    ) -> None:
        self.source = source
        self.environ = environ
        self.platform = platform
        self.reader = reader
        self.secrets_dir = secrets_dir
        self.status_key = "conveyor.status.storage_provider"
        self.base_conveyor: list[tuple[Any, str]] = []  # the image's defaults, beneath the definition's

    # -- typed accessors --------------------------------------------------------------------

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, source=self.source)

    def mapping(self, value: Any, key: str) -> Mapping[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping, not {_kind(value)}")
        return value

    def string(self, value: Any, key: str, default: str | None = None) -> str | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(key, f"must be a string, not {_kind(value)}")
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
            raise self.fail(key, f"must be a list of strings, not {_kind(value)}")
        items = []
        for i, item in enumerate(value):
            text = self.string(item, _join(key, i))
            if text is None:
                raise self.fail(_join(key, i), "must be a string, not null")
            items.append(text)
        return tuple(items)

    def variables(self, value: Any, key: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, val in self.mapping(value, key).items():
            where = _join(key, str(name))
            if isinstance(val, bool):
                out[str(name)] = "true" if val else "false"
            elif val is None:
                out[str(name)] = ""
            elif isinstance(val, (str, int, float)):
                out[str(name)] = str(val)
            else:
                raise self.fail(where, f"must be a string, not {_kind(val)}")
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
        ref = self.provider_ref(entry.get("storage_provider"), _join(key, "storage_provider"))
        path = self.string(entry.get("path"), _join(key, "path"))
        if path is None or not path.strip("/ "):
            raise self.fail(_join(key, "path"), "is required: 'bucket' or 'bucket/folder'")
        return IOSpec(
            provider=ref,
            path=path.strip(),
            prefix=self.str_list(entry.get("prefix"), _join(key, "prefix")),
            suffix=self.str_list(entry.get("suffix"), _join(key, "suffix")),
        )

    def io_list(self, value: Any, key: str) -> tuple[IOSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of {{storage_provider, path}} entries, not {_kind(value)}")
        return tuple(self.io_spec(item, _join(key, i)) for i, item in enumerate(value))

    # -- document layout --------------------------------------------------------------------

    def select_function(self, doc: Mapping[Any, Any]) -> tuple[dict[str, Any], dict[str, str], list, list]:
        """(flat function, key -> path in the document, storage_providers sections, conveyor sections)."""
        providers = [(doc.get("storage_providers"), "storage_providers")]
        conveyor = [(doc.get("conveyor"), "conveyor")]
        if "functions" not in doc or "name" in doc:
            return dict(doc), {}, providers, conveyor
        functions = self.mapping(doc["functions"], "functions")
        candidates: list[tuple[str | None, dict[str, Any], dict[str, str]]] = []
        for platform_key in ("aws", "oscar"):
            entries = functions.get(platform_key)
            if entries is None:
                continue
            where = _join("functions", platform_key)
            if not isinstance(entries, list):
                raise self.fail(where, f"must be a list of function definitions, not {_kind(entries)}")
            for i, entry in enumerate(entries):
                entry_key = _join(where, i)
                entry = self.mapping(entry, entry_key)
                if platform_key == "aws":
                    candidates.append(self._scar_function(entry, entry_key))
                else:
                    for cluster, service in entry.items():
                        service_key = _join(entry_key, str(cluster))
                        flat = dict(self.mapping(service, service_key))
                        candidates.append((_name_of(flat), flat, {k: _join(service_key, k) for k in flat}))
        if not candidates:
            raise self.fail(
                "functions",
                "holds no function definition (expected functions.aws[].lambda"
                " as SCAR writes it, or functions.oscar[].<cluster> as oscar-cli does)",
            )
        chosen = self._choose(candidates)
        flat, paths = chosen[1], chosen[2]
        for name, sections in (("storage_providers", providers), ("conveyor", conveyor)):
            if name in flat:  # function-level sections win over the top-level ones
                sections.append((flat[name], paths[name]))
        return flat, paths, providers, conveyor

    def _scar_function(self, entry: Mapping[Any, Any], key: str) -> tuple[str | None, dict[str, Any], dict[str, str]]:
        lambda_key = _join(key, "lambda")
        if "lambda" not in entry:
            raise self.fail(lambda_key, "is required in every functions.aws entry")
        flat = dict(self.mapping(entry["lambda"], lambda_key))
        paths = {k: _join(lambda_key, str(k)) for k in flat}
        if "batch" in entry:
            flat["batch"] = entry["batch"]
            paths["batch"] = _join(key, "batch")
        return _name_of(flat), flat, paths

    def _choose(self, candidates: list) -> tuple:
        if len(candidates) == 1:
            return candidates[0]
        wanted = [self.environ.get(v) for v in ("AWS_LAMBDA_FUNCTION_NAME", "OSCAR_SERVICE_NAME")]
        for candidate in candidates:
            if candidate[0] is not None and candidate[0] in wanted:
                return candidate
        names = ", ".join(str(c[0]) for c in candidates)
        raise self.fail(
            "functions",
            f"holds {len(candidates)} functions ({names}): set AWS_LAMBDA_FUNCTION_NAME or OSCAR_SERVICE_NAME"
            " to the one this worker runs",
        )

    # -- the whole definition ---------------------------------------------------------------

    def build(self, doc: Any) -> FunctionConfig:
        if doc is None:
            doc = {}
        if not isinstance(doc, Mapping):
            raise ConfigError(f"the definition must be a YAML mapping, not {_kind(doc)}", source=self.source)
        flat, paths, provider_sections, conveyor_sections = self.select_function(doc)

        def at(key: str) -> str:
            return paths.get(key, key)

        container = self.mapping(flat.get("container"), at("container"))
        container_env = self.mapping(container.get("environment"), _join(at("container"), "environment"))
        environment = self.variables(container_env.get("Variables"), _join(at("container"), "environment.Variables"))
        oscar_env = self.mapping(flat.get("environment"), at("environment"))
        environment.update(self.variables(oscar_env.get("variables"), _join(at("environment"), "variables")))

        if "timeout_threshold" in container:
            threshold_value, threshold_key = container["timeout_threshold"], _join(at("container"), "timeout_threshold")
        else:
            threshold_value, threshold_key = flat.get("timeout_threshold"), at("timeout_threshold")
        image_key = _join(at("container"), "image") if container.get("image") is not None else at("image")
        image_value = container.get("image") if container.get("image") is not None else flat.get("image")

        batch = self.mapping(flat.get("batch"), at("batch"))
        mnp_key = _join(at("batch"), "multi_node_parallel")
        mnp = self.mapping(batch.get("multi_node_parallel"), mnp_key)

        providers = self.providers(provider_sections)
        inputs = self.io_list(flat.get("input"), at("input"))
        outputs = self.io_list(flat.get("output"), at("output"))
        conveyor = self.conveyor([*self.base_conveyor, *conveyor_sections])
        refs = [
            (spec, _join(_join(at(name), i), "storage_provider"))
            for name, specs in (("input", inputs), ("output", outputs))
            for i, spec in enumerate(specs)
        ]
        if conveyor.status is not None:
            refs.append((conveyor.status, self.status_key))
        for spec, key in refs:
            self.check_configured(spec.provider, providers, key)

        init_script = self.string(flat.get("init_script"), at("init_script"))
        config = FunctionConfig(
            name=self.string(flat.get("name"), at("name"), "conveyor") or "conveyor",
            log_level=self.choice(flat.get("log_level"), at("log_level"), "INFO", LOG_LEVELS, upper=True),
            execution_mode=self.choice(
                flat.get("execution_mode"), at("execution_mode"), "lambda", EXECUTION_MODES, upper=False
            ),
            file_stage_in=self.boolean(flat.get("file_stage_in"), at("file_stage_in"), False),
            init_script=init_script,
            image=self.string(image_value, image_key),
            timeout_threshold=self.number(threshold_value, threshold_key, 10.0) or 0.0,
            environment=_frozen(environment),
            multi_node_parallel=self.boolean(mnp.get("enabled"), _join(mnp_key, "enabled"), False),
            inputs=inputs,
            outputs=outputs,
            isolation_level=self.choice(
                flat.get("isolation_level"), at("isolation_level"), "SERVICE", ISOLATION_LEVELS, upper=True
            ),
            bucket_list=self.str_list(flat.get("bucket_list"), at("bucket_list")),
            providers=_frozen(providers),
            conveyor=conveyor,
            source=self.source,
            secrets_dir=self.secrets_dir,
        )
        config = self.env_overrides(config)
        try:
            script, script_source = self.script(init_script, at("init_script"), flat.get("script"), at("script"))
        except _ScriptMissing as missing:  # only the script handler needs it, and the event may bring one
            log.debug("%s", missing.error)
            return _replace(config, script_error=str(missing.error))
        return _replace(config, script=script, script_source=script_source)

    def env_overrides(self, config: FunctionConfig) -> FunctionConfig:
        """LOG_LEVEL, EXECUTION_MODE, TIMEOUT_THRESHOLD win over the file; errors name the variable."""
        names = ("LOG_LEVEL", "EXECUTION_MODE", "TIMEOUT_THRESHOLD")
        env = {name: value for name in names if (value := self.environ.get(name, "")).strip()}
        parser = _Parser(ENV_SOURCE, self.environ, self.platform, self.reader, self.secrets_dir)
        changes: dict[str, Any] = {}
        if "LOG_LEVEL" in env:
            changes["log_level"] = parser.choice(env["LOG_LEVEL"], "LOG_LEVEL", "INFO", LOG_LEVELS, upper=True)
        if "EXECUTION_MODE" in env:
            changes["execution_mode"] = parser.choice(
                env["EXECUTION_MODE"], "EXECUTION_MODE", "lambda", EXECUTION_MODES, upper=False
            )
        if "TIMEOUT_THRESHOLD" in env:
            changes["timeout_threshold"] = parser.number(env["TIMEOUT_THRESHOLD"], "TIMEOUT_THRESHOLD", 10.0)
        return _replace(config, **changes) if changes else config

    # -- storage providers ------------------------------------------------------------------

    def providers(self, sections: list[tuple[Any, str]]) -> dict[str, StorageProvider]:
        raw: dict[ProviderRef, tuple[Mapping[Any, Any], str]] = {}
        for section, key in sections:
            for type_name, ids in self.mapping(section, key).items():
                type_key = _join(key, str(type_name))
                if str(type_name).lower() not in PROVIDER_TYPES:
                    log.debug("ignoring storage provider type %r (%s)", type_name, type_key)
                    continue
                ids = self.mapping(ids, type_key)
                if _legacy_provider(ids):  # early SCAR: one unnamed provider per type
                    ids = {"default": ids}
                for id_, entry in ids.items():
                    entry_key = _join(type_key, str(id_))
                    raw[ProviderRef(str(type_name).lower(), str(id_))] = (self.mapping(entry, entry_key), entry_key)
        out: dict[str, StorageProvider] = {}
        for ref, (entry, key) in raw.items():
            out[str(ref)] = self.provider(ref, entry, key)
        files = self.minio_secret_files()
        if files is not None:
            base = out.get(str(MINIO_DEFAULT)) or StorageProvider(MINIO_DEFAULT, endpoint=MINIO_DEFAULT_ENDPOINT)
            out[str(MINIO_DEFAULT)] = _replace(
                base, access_key=files[0], secret_key=files[1], credentials_source=f"{self.secrets_dir}/minio.default"
            )
        return out

    def provider(self, ref: ProviderRef, entry: Mapping[Any, Any], key: str) -> StorageProvider:
        def text(name: str) -> str | None:
            value = self.string(entry.get(name), _join(key, name))
            return value if value is not None and value.strip() else None

        def secret(name: str) -> str | None:
            value = text(name)
            return None if value is None or value.strip() == HIDDEN else value

        def required(name: str) -> str:
            value = text(name)
            if value is None:
                raise self.fail(_join(key, name), f"is required for a {ref.type} provider")
            return value

        verify = self.boolean(entry.get("verify"), _join(key, "verify"), True)
        if ref.type in ("s3", "minio"):
            access, secret_key = secret("access_key"), secret("secret_key")
            if (access is None) != (secret_key is None) and ref != MINIO_DEFAULT:
                missing = "secret_key" if secret_key is None else "access_key"
                raise self.fail(_join(key, missing), "is missing (access_key and secret_key go together)")
            endpoint = text("endpoint")
            if endpoint is None and ref == MINIO_DEFAULT:
                endpoint = MINIO_DEFAULT_ENDPOINT
            return StorageProvider(
                ref,
                access_key=access,
                secret_key=secret_key,
                region=text("region"),
                endpoint=endpoint,
                verify=verify,
                credentials_source=f"{self.source}: {key}" if access and secret_key else None,
            )
        if ref.type == "onedata":
            return StorageProvider(
                ref,
                host=required("oneprovider_host"),
                token=required("token"),
                space=required("space"),
                credentials_source=f"{self.source}: {key}",
            )
        if ref.type == "webdav":
            return StorageProvider(
                ref,
                host=required("hostname"),
                login=text("login"),
                password=text("password"),
                verify=verify,
                credentials_source=f"{self.source}: {key}" if text("login") else None,
            )
        return StorageProvider(ref, root=required("root"))  # local

    def minio_secret_files(self) -> tuple[str, str] | None:
        if self.secrets_dir is None:
            return None
        folder = Path(self.secrets_dir) / "minio.default"
        values = []
        for name in ("accessKey", "secretKey"):
            try:
                values.append((folder / name).read_text(encoding="utf-8").strip())
            except (OSError, UnicodeDecodeError):
                return None
        if not all(values):
            return None
        return values[0], values[1]

    def check_configured(self, ref: ProviderRef, providers: Mapping[str, StorageProvider], key: str) -> None:
        if str(ref) in providers or ref in (S3_DEFAULT, MINIO_DEFAULT):
            return
        raise self.fail(key, f"names storage provider '{ref}', which is not configured under storage_providers")

    # -- conveyor: ----------------------------------------------------------------------------

    def conveyor(self, sections: list[tuple[Any, str]]) -> ConveyorSettings:
        merged: dict[str, Any] = {}
        paths: dict[str, str] = {}
        for section, key in sections:
            for name, value in self.mapping(section, key).items():
                merged[str(name)] = value
                paths[str(name)] = _join(key, str(name))

        def at(name: str) -> str:
            return paths.get(name, f"conveyor.{name}")

        known = {
            "handler",
            "timeout",
            "grace_period",
            "withdraw_timeout",
            "status",
            "expected_duration",
            "lambda_max_size",
            "log_tail_bytes",
            "log_max_bytes",
            "require_output",
        }
        for name in sorted(set(merged) - known):
            log.warning("ignoring unknown key %s in %s", at(name), self.source)
        defaults = ConveyorSettings()
        timeout = self.number(merged.get("timeout"), at("timeout"), None)
        if timeout == 0:
            raise self.fail(at("timeout"), "must be a positive number of seconds (omit it for no timeout)")
        log_max = self.size(merged.get("log_max_bytes"), at("log_max_bytes"), defaults.log_max_bytes)
        if log_max == 0:
            raise self.fail(at("log_max_bytes"), "must be a positive size")
        status = merged.get("status")
        self.status_key = _join(at("status"), "storage_provider")
        return ConveyorSettings(
            handler=self.handler(merged.get("handler"), at("handler")),
            timeout=timeout,
            grace_period=self.number(merged.get("grace_period"), at("grace_period"), defaults.grace_period) or 0.0,
            withdraw_timeout=self.number(merged.get("withdraw_timeout"), at("withdraw_timeout"),
                                         defaults.withdraw_timeout) or 0.0,
            status=None if status is None else self.io_spec(status, at("status")),
            expected_duration=self.number(merged.get("expected_duration"), at("expected_duration"), None),
            lambda_max_size=self.size(merged.get("lambda_max_size"), at("lambda_max_size"), None),
            log_tail_bytes=self.size(merged.get("log_tail_bytes"), at("log_tail_bytes"), defaults.log_tail_bytes) or 0,
            log_max_bytes=log_max or defaults.log_max_bytes,
            require_output=self.boolean(merged.get("require_output"), at("require_output"), None),
        )

    def handler(self, value: Any, key: str) -> HandlerSpec:
        if value is None:
            return HandlerSpec()
        if isinstance(value, Mapping):
            name = self.string(value.get("name"), _join(key, "name"))
            if name is None or not name.strip():
                raise self.fail(_join(key, "name"), "is required (e.g. 'script', 'deepaas', 'darknet')")
            options = {str(k): v for k, v in value.items() if k != "name"}
            return HandlerSpec(name=name.strip(), options=_frozen(options))
        name = self.string(value, key)
        if not name or not name.strip():
            raise self.fail(key, "must name a handler (e.g. 'script')")
        return HandlerSpec(name=name.strip())

    # -- the user script ----------------------------------------------------------------------

    def script(
        self, init_script: str | None, init_key: str, oscar_script: Any, oscar_key: str
    ) -> tuple[bytes | None, str | None]:
        encoded = self.environ.get("SCRIPT")
        if encoded and encoded.strip():
            return _b64_bytes(encoded, "env SCRIPT", "SCRIPT"), "env SCRIPT"
        text = _read(self.reader, OSCAR_SCRIPT_PATH)
        if text is not None:
            return _encode(text), OSCAR_SCRIPT_PATH
        if init_script is not None and init_script.strip():
            return self.script_from(init_script, init_key, inline_if=_looks_like_text)
        oscar_text = self.string(oscar_script, oscar_key)
        if oscar_text is not None and oscar_text.strip():
            # OSCAR writes the script's text here; oscar-cli definitions hold a file name
            return self.script_from(oscar_text, oscar_key, inline_if=lambda v: _looks_like_text(v) or " " in v.strip())
        return None, None

    def script_from(self, value: str, key: str, inline_if: Callable[[str], bool]) -> tuple[bytes, str]:
        """A script named by the config: a readable file, else (if `inline_if`) the text itself."""
        candidates = [] if _looks_like_text(value) else self.script_paths(value.strip())
        for candidate in candidates:
            text = _read(self.reader, candidate, self.source)
            if text is not None:
                return _encode(text), f"{key} {candidate}"
        if inline_if(value):
            return _encode(value), f"{key} (inline)"
        raise _ScriptMissing(self.fail(key, f"script file not found (looked in {', '.join(candidates)})"))

    def script_paths(self, value: str) -> list[str]:
        """Where a relative script path may be: next to the config file, in /var/task (Lambda), the cwd."""
        if PurePosixPath(value).is_absolute():
            return [value]
        candidates: list[str] = []
        if self.source != DEFAULTS_SOURCE and not self.source.startswith("env "):
            candidates.append(os.path.normpath(os.path.join(os.path.dirname(self.source), value)))
        if self.platform is Platform.LAMBDA:
            # SCAR copies the script next to function_config.yaml, under its base name
            candidates.append(f"{LAMBDA_TASK_DIR}/{PurePosixPath(value).name}")
        candidates.append(value)
        return list(dict.fromkeys(candidates))


_PROVIDER_FIELDS = {
    "access_key",
    "secret_key",
    "region",
    "endpoint",
    "verify",
    "oneprovider_host",
    "token",
    "space",
    "hostname",
    "login",
    "password",
    "root",
}


def _legacy_provider(ids: Mapping[Any, Any]) -> bool:
    """`s3: {access_key: .., secret_key: ..}` (no id level), as faas-supervisor < 1.0 read it."""
    return bool(ids) and all(k in _PROVIDER_FIELDS and not isinstance(v, Mapping) for k, v in ids.items())


class _ScriptMissing(Exception):
    """The config names a script file that is not there: recorded, raised by require_script()."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def _name_of(flat: Mapping[Any, Any]) -> str | None:
    name = flat.get("name")
    return str(name) if isinstance(name, (str, int, float)) and not isinstance(name, bool) else None


def _kind(value: Any) -> str:
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


def _replace(obj: Any, **changes: Any) -> Any:
    return replace(obj, **changes)
