"""The function definition (contract section 3), parsed once into frozen dataclasses.

Sources, first found wins:
  Lambda:     /var/task/function_config.yaml, then env FDL (base64 YAML)
  elsewhere:  /oscar/config/function_config.yaml, then env FUNCTION_CONFIG (base64 YAML)
  always:     --config FILE (explicit, wins over everything)
Env overrides: LOG_LEVEL, EXECUTION_MODE, TIMEOUT_THRESHOLD. Conveyor's own keys live under
`conveyor:`. Unknown keys are ignored; a wrong type fails with the key and the source named.

IMPLEMENTATION PENDING (helper "config"): `load_config` and the parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.platform import Platform

LAMBDA_CONFIG_PATH = "/var/task/function_config.yaml"
OSCAR_CONFIG_PATH = "/oscar/config/function_config.yaml"
OSCAR_SCRIPT_PATH = "/oscar/config/script.sh"
MINIO_SECRETS_DIR = "/var/run/secrets/providers"  # <dir>/minio.default/accessKey, .../secretKey
MINIO_DEFAULT_ENDPOINT = "http://minio-service.minio:9000"


@dataclass(frozen=True)
class ProviderRef:
    """A `storage_provider` value: `<type>` or `<type>.<id>`; the id defaults to `default`."""

    type: str
    id: str = "default"

    def __str__(self) -> str:
        return f"{self.type}.{self.id}"


@dataclass(frozen=True)
class StorageProvider:
    """Credentials and location of one configured provider. Secrets are never logged."""

    ref: ProviderRef
    access_key: str | None = None
    secret_key: str | None = None
    region: str | None = None
    endpoint: str | None = None  # minio (and s3 when an S3-compatible endpoint is given)
    verify: bool = True
    # onedata / webdav (parsed, not implemented as stores yet)
    host: str | None = None
    token: str | None = None
    space: str | None = None
    login: str | None = None
    password: str | None = None
    root: str | None = None  # local provider: the folder that stands for the buckets


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


@dataclass(frozen=True)
class HandlerSpec:
    """`conveyor: handler:` - which handler runs the model, and its own options."""

    name: str = "script"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConveyorSettings:
    """Conveyor's own additions, all under the top-level `conveyor:` key."""

    handler: HandlerSpec = field(default_factory=HandlerSpec)
    timeout: float | None = None  # per-record handler deadline, seconds (None: only the platform's)
    grace_period: float = 10.0  # seconds between SIGTERM and SIGKILL for the child
    status: IOSpec | None = None  # where result records are uploaded
    expected_duration: float | None = None  # lambda-batch: expected handler seconds
    lambda_max_size: int | None = None  # lambda-batch: largest object (bytes) Lambda should take
    log_tail_bytes: int = 4096  # how much of the log the result record keeps
    log_max_bytes: int = 10 * 1024 * 1024  # cap of the per-record log file
    require_output: bool = False  # a record with no output file is FAILED


@dataclass(frozen=True)
class FunctionConfig:
    name: str = "conveyor"
    log_level: str = "INFO"
    execution_mode: str = "lambda"  # lambda | batch | lambda-batch
    file_stage_in: bool = False
    init_script: str | None = None  # a path (SCAR) or the script's text
    image: str | None = None
    timeout_threshold: float = 10.0
    environment: Mapping[str, str] = field(default_factory=dict)  # container.environment.Variables + OSCAR environment.variables
    multi_node_parallel: bool = False
    inputs: tuple[IOSpec, ...] = ()
    outputs: tuple[IOSpec, ...] = ()
    isolation_level: str = "SERVICE"
    bucket_list: tuple[str, ...] = ()
    providers: Mapping[str, StorageProvider] = field(default_factory=dict)  # "minio.default" -> provider
    conveyor: ConveyorSettings = field(default_factory=ConveyorSettings)
    script: bytes | None = None  # the user script: env SCRIPT (base64), /oscar/config/script.sh, init_script
    script_source: str | None = None  # where `script` came from ("env SCRIPT", a path ...)
    source: str = "<defaults>"  # where the definition was read from

    def provider(self, ref: ProviderRef | str) -> StorageProvider:  # pragma: no cover - pending
        """The configured provider for a ref, with `default` fallbacks; ConfigError/CredentialsError if none."""
        raise NotImplementedError

    def redacted(self) -> dict[str, Any]:  # pragma: no cover - pending
        """A JSON-ready dict with every secret replaced by '***'."""
        raise NotImplementedError


def load_config(
    environ: Mapping[str, str],
    platform: Platform,
    path: str | Path | None = None,
    read_file: Callable[[str], str | None] | None = None,
) -> FunctionConfig:  # pragma: no cover - pending
    """Find and parse the function definition. `read_file(path)` returns text or None (absent)."""
    raise NotImplementedError
