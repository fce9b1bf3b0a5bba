"""The parsed function definition as frozen dataclasses (FunctionConfig and its parts), and the constants.

Imports nothing of conveyor.config except redaction.py (the leaf that says what a secret is).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from conveyor.config.redaction import MIN_MASKED_LENGTH, mask_fields, redact_by_name, redact_options, secret_values
from conveyor.errors import ConfigError, CredentialsError
from conveyor.sealing import SEALED_VARS

LAMBDA_CONFIG_PATH = "/var/task/function_config.yaml"
LAMBDA_TASK_DIR = "/var/task"  # where SCAR copies init_script (by its base name) next to the config
OSCAR_CONFIG_PATH = "/oscar/config/function_config.yaml"
OSCAR_SCRIPT_PATH = "/oscar/config/script.sh"
MINIO_SECRETS_DIR = "/var/run/secrets/providers"  # <dir>/minio.default/accessKey, .../secretKey
MINIO_SECRET_FILES = ("accessKey", "secretKey")  # in <secrets dir>/minio.default
MINIO_DEFAULT_ENDPOINT = "http://minio-service.minio:9000"
# An image's own defaults for the `conveyor:` block (its handler, say): the function definition's
# `conveyor:` keys win over them. CONVEYOR_DEFAULTS names another file.
IMAGE_DEFAULTS_PATH = "/etc/conveyor/defaults.yaml"

# rucio: accepted in a definition (OSCAR writes it), but this build has no Rucio store (see open_store).
PROVIDER_TYPES = ("s3", "minio", "onedata", "webdav", "rucio", "local")
EXECUTION_MODES = ("lambda", "batch", "lambda-batch")
LOG_LEVELS = ("NOTSET", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ISOLATION_LEVELS = ("SERVICE", "USER")
HIDDEN = "hidden"  # what OSCAR writes in place of the minio.default keys: not a key
# Variables that carry Conveyor's own inputs: the model never inherits them (it gets its own
# per-record EVENT instead). Checked at load (conveyor.config.loader) and applied per record (conveyor.process).
# SEALED_VARS, those that may hold a secret (keys inline in a definition ...), conveyor.sealing also
# takes out of Conveyor's own environment block at start (it holds the list, to stay light to import).
PRIVATE_VARS = (*SEALED_VARS, "CONVEYOR_PLATFORM")
# Linux refuses an exec (E2BIG) when one NAME=value environment string, NUL included, is longer.
MAX_ARG_STRLEN = 128 * 1024
DEFAULTS_SOURCE = "<defaults>"
DEFAULT_MODEL_USER = "65534:65534"  # nobody:nogroup on Debian: who runs the model under conveyor.isolate_model
ENV_SOURCE = "environment"

# The `read_file` seam: read_file(path) -> the file's text, None when absent (OSError when unreadable).
ReadFile = Callable[[str], "str | None"]

def frozen_mapping(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only copy, for the mappings a frozen dataclass holds."""
    return MappingProxyType(dict(mapping or {}))


def is_inline_script(value: str) -> bool:
    """A script value that is the script's text rather than a file name: several lines, or a shebang."""
    return "\n" in value or value.lstrip().startswith("#!")


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
    # onedata / webdav (and rucio, parsed only: no Rucio store in this build)
    host: str | None = None  # onedata oneprovider_host, webdav hostname, rucio host
    token: str | None = field(default=None, repr=False)
    space: str | None = None
    login: str | None = None  # webdav login, rucio account
    password: str | None = field(default=None, repr=False)
    root: str | None = None  # local provider: the folder that stands for the buckets
    credentials_source: str | None = None  # where the keys came from: "<dir>/minio.default" or "<source>: <key path>"

    @property
    def has_keys(self) -> bool:
        return bool(self.access_key and self.secret_key)

    def redacted(self) -> dict[str, Any]:
        """A JSON-ready dict: the location as is, every credential as '***'."""
        out: dict[str, Any] = {"type": self.ref.type, "id": self.ref.id}
        for name in ("endpoint", "region", "host", "space", "login", "root"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.ref.type in ("s3", "minio"):
            out["verify"] = self.verify
        out.update(mask_fields(self, ("access_key", "secret_key", "token", "password")))
        out["credentials"] = self.credentials_source
        return out


@dataclass(frozen=True)
class IOSpec:
    """One `input[]` / `output[]` entry (or `conveyor.status`): a provider and "bucket/prefix/in/bucket".

    The one place that splits `path` into a bucket and a key prefix; empty segments are dropped
    ("/b//out/" is bucket "b", prefix "out").
    """

    provider: ProviderRef
    path: str  # "bucket/prefix/in/bucket"
    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()

    def _segments(self) -> list[str]:
        return [part for part in self.path.split("/") if part]

    @property
    def bucket(self) -> str:
        """The first segment of `path`."""
        segments = self._segments()
        return segments[0] if segments else ""

    @property
    def key_prefix(self) -> str:
        """The rest of `path` after the bucket, without leading or trailing '/' ("" when none)."""
        return "/".join(self._segments()[1:])

    def destination(self, rel: str) -> tuple[str, str]:
        """(bucket, key) for `rel` under this entry: key = key_prefix + '/' + rel (just rel without a prefix)."""
        prefix = self.key_prefix
        return self.bucket, f"{prefix}/{rel}" if prefix else rel

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
    options: Mapping[str, Any] = field(default_factory=frozen_mapping)


@dataclass(frozen=True)
class WarmSettings:
    """`conveyor: warm:` / `warm_idle_timeout:` - the per-pod warm daemon behind `conveyor run`
    (OSCAR sync services; conveyor.serve.daemon)."""

    enabled: bool = False
    idle_timeout: float = 600.0  # the daemon exits after this many seconds without a request


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
    # Which program runs a user script whose #! names a POSIX shell (sh, bash, dash, ash ...):
    # "sh" runs it as `/bin/sh script`, as faas-supervisor does; "shebang" honours its #! line.
    # A #! naming any other interpreter (python3, Rscript ...) is honoured either way.
    script_shell: str = "sh"
    # An event may name any object: by default only those under an `input[]` path, on that entry's
    # provider, are fetched (a body posted to a service cannot make it read private/payroll.csv).
    accept_any_input: bool = False
    # Outputs of an input stored at <input path>/<folder>/<name> go to <output path>/<folder>/...
    # (the gateway's <user>/<upload id>/, a drop folder's sub-folders); off: <output path>/<file>,
    # as faas-supervisor does.
    keep_input_folders: bool = False
    # Run the model as another user (conveyor.isolation): no access to the secret files, the
    # definition or Conveyor's /proc entries. Needs root (CAP_SETUID, CAP_SETGID, CAP_CHOWN).
    isolate_model: bool = False
    model_user: str = DEFAULT_MODEL_USER  # "<user>[:<group>]", names or numbers
    # Where an in-process handler's model lives (conveyor.modelhost): auto (a child process where the
    # handler asks for it), process (always a supervised child), inline (in Conveyor's own process).
    model_host: str = "auto"
    # The s3 and minio providers' transfer engine: "obstore" (Rust object_store) or "sdk" (boto3
    # for s3, the minio SDK for minio).
    transfer_engine: str = "obstore"
    warm: WarmSettings = field(default_factory=WarmSettings)
    # "zip": an input that is a zip archive is unpacked and each member goes through the model
    # (conveyor.unpack); None: inputs are handed to the model as they are. The caps are checked
    # against the archive's central directory before anything is extracted, and again while writing.
    unpack: str | None = None
    unpack_max_members: int = 10_000
    unpack_max_bytes: int = 10 * 1024**3

    def redacted(self) -> dict[str, Any]:
        """A JSON-ready dict; handler options whose names look like secrets shown as '***'."""
        return {
            "handler": {"name": self.handler.name, "options": redact_options(self.handler.options)},
            "timeout": self.timeout,
            "grace_period": self.grace_period,
            "withdraw_timeout": self.withdraw_timeout,
            "status": None if self.status is None else self.status.to_dict(),
            "expected_duration": self.expected_duration,
            "lambda_max_size": self.lambda_max_size,
            "log_tail_bytes": self.log_tail_bytes,
            "log_max_bytes": self.log_max_bytes,
            "require_output": self.require_output,
            "script_shell": self.script_shell,
            "accept_any_input": self.accept_any_input,
            "keep_input_folders": self.keep_input_folders,
            "isolate_model": self.isolate_model,
            "model_user": self.model_user,
            "model_host": self.model_host,
            "transfer_engine": self.transfer_engine,
            "warm": self.warm.enabled,
            "warm_idle_timeout": self.warm.idle_timeout,
            "unpack": self.unpack,
            "unpack_max_members": self.unpack_max_members,
            "unpack_max_bytes": self.unpack_max_bytes,
        }


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
    environment: Mapping[str, str] = field(default_factory=frozen_mapping)
    multi_node_parallel: bool = False
    inputs: tuple[IOSpec, ...] = ()
    outputs: tuple[IOSpec, ...] = ()
    isolation_level: str = "SERVICE"
    bucket_list: tuple[str, ...] = ()
    providers: Mapping[str, StorageProvider] = field(default_factory=frozen_mapping)  # "minio.default" -> provider
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
            if ref.type == "rucio":
                raise ConfigError(
                    f"rucio storage is not available in this build, and storage provider '{ref}' is not "
                    "configured either",
                    key=f"storage_providers.{ref.type}.{ref.id}",
                    source=self.source,
                )
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

    def secret_values(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Values the logs and records must never show: the providers' secret keys, tokens and passwords,
        and the values of the secret-looking variables of the definition and of `environ` (the process
        environment: AWS_SESSION_TOKEN, OSCAR_SERVICE_TOKEN ...), MIN_MASKED_LENGTH characters or more."""
        found = {
            value
            for provider in self.providers.values()
            for value in (provider.secret_key, provider.token, provider.password)
            if value is not None and len(value) >= MIN_MASKED_LENGTH
        }
        found.update(secret_values(self.environment, environ or {}))
        return sorted(found, key=len, reverse=True)

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
            "environment": redact_by_name(self.environment),
            "multi_node_parallel": self.multi_node_parallel,
            "input": [spec.to_dict() for spec in self.inputs],
            "output": [spec.to_dict() for spec in self.outputs],
            "isolation_level": self.isolation_level,
            "bucket_list": list(self.bucket_list),
            "storage_providers": {key: p.redacted() for key, p in sorted(self.providers.items())},
            "conveyor": self.conveyor.redacted(),
            "script": self._script_summary(),
        }

    def _script_summary(self) -> dict[str, Any] | None:
        if self.script is not None:
            return {"length": len(self.script), "source": self.script_source}
        return None if self.script_error is None else {"error": self.script_error}


def _script_label(value: str | None) -> str | None:
    """init_script as shown by `inspect`: a path as is, inline text by its length only."""
    if value is None or not is_inline_script(value):
        return value
    return f"<inline script, {len(value.encode(errors='surrogateescape'))} bytes>"
