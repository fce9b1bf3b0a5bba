"""What every store shares: the transfer options, Content-Type guessing, the staging file that keeps
a destination whole, and the one-line error wording (StorageError / CredentialsError)."""

from __future__ import annotations

import mimetypes
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NoReturn
from urllib.parse import SplitResult, urlsplit

from conveyor.config import StorageProvider
from conveyor.errors import ConfigError, CredentialsError, StorageError

MiB = 1024 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"
PART_SUFFIX = ".conveyor-part"  # temporary download files, next to their destination

CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "403", "Forbidden"}
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound", "ResourceNotFound", "404"})
# 4xx answers that may change when asked again (S3 answers RequestTimeout with 400, throttling with 400/503).
ENGINES = ("obstore", "sdk")  # TransferOptions.engine
TRANSIENT_CODES = frozenset({"RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests"})
PRECONDITION_FAILED = "PreconditionFailed"  # a conditional write or delete found another version
_ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}


def is_permanent(error: BaseException) -> bool:
    """True for a store error the server answered with a 4xx status (no such bucket, access denied,
    an invalid key ...): asking again gets the same answer, so it is not retried. 5xx answers and
    connection errors are transient (the stores retry those a bounded number of times)."""
    context = getattr(error, "context", {})
    status = context.get("status")
    if context.get("cause") in TRANSIENT_CODES or status in (408, 429):
        return False
    return isinstance(status, int) and 400 <= status < 500


def is_taken(error: BaseException) -> bool:
    """True for a store error that says a create-only write found the key already there (HTTP 412)."""
    return getattr(error, "context", {}).get("cause") == PRECONDITION_FAILED


def is_not_found(error: BaseException) -> bool:
    """True for a store error that says the object (or its bucket) does not exist."""
    return getattr(error, "context", {}).get("cause") in NOT_FOUND_CODES


@dataclass(frozen=True)
class TransferOptions:
    """Retry, timeout, multipart and TLS settings shared by every store. The edges (cli, the Lambda
    handler) build it from what they read; storage reads no environment of its own."""

    max_attempts: int = 3  # total tries per request, first one included
    connect_timeout: float = 2.0  # seconds
    read_timeout: float = 60.0  # seconds without a byte
    # The SDK engines' parts (the obstore engine sends parts of 5 MiB, 3 in flight: conveyor.storage.objstore).
    multipart_threshold: int = 64 * MiB  # larger uploads/downloads go in parts
    part_size: int = 16 * MiB  # S3 minimum is 5 MiB
    max_concurrency: int = 4  # parts in flight
    # The MinIO and HTTP stores' retry schedule (urllib3): sleep backoff_factor * 2**(n - 1) seconds
    # before the n-th retry (n >= 2; urllib3 does not sleep before the first), at most backoff_max.
    # boto3 (the S3 store) keeps its own "standard" schedule.
    backoff_factor: float = 0.2
    backoff_max: float = 5.0
    # CA certificates (a PEM file) the MinIO store checks TLS servers against; None: certifi's.
    # The edges pass SSL_CERT_FILE. boto3 and requests find theirs themselves (AWS_CA_BUNDLE,
    # REQUESTS_CA_BUNDLE).
    ca_bundle: str | None = None
    # The s3 and minio providers' transfer engine: "obstore" (Rust object_store, the default) or
    # "sdk" (boto3 for s3, the minio SDK for minio). `conveyor: transfer_engine` in the definition.
    engine: str = "obstore"
    # The platform's region (AWS_REGION, read by the edges) for an s3 provider that names none: the
    # obstore engine, unlike boto3, does not follow S3's redirects to a bucket's region.
    default_region: str | None = None


def transfer_options(environ: Mapping[str, str]) -> TransferOptions:
    """The stores' settings that come from the environment, for the edges that read it (`conveyor
    run`, `serve`, `sweep`): the CA bundle of SSL_CERT_FILE, and the platform's region (AWS_REGION,
    AWS_DEFAULT_REGION) for s3 providers that name none."""
    return TransferOptions(
        ca_bundle=environ.get("SSL_CERT_FILE") or None,
        default_region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
    )


@dataclass(frozen=True)
class Written:
    """What a put_file wrote: its size, and the store's version token for it (the ETag; None when
    the store gave none)."""

    size: int
    etag: str | None = None


def endpoint_parts(endpoint: str, provider: StorageProvider) -> SplitResult:
    """An S3-compatible endpoint, `http(s)://host[:port]` (https when no scheme is given), split; a
    ConfigError naming the provider's endpoint setting for anything else."""
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
        kind = provider.ref.type
        raise ConfigError(
            f"'{endpoint}' is not {'a MinIO' if kind == 'minio' else 'an S3'} endpoint URL (expected "
            "http(s)://host[:port])",
            key=f"storage_providers.{kind}.{provider.ref.id}.endpoint",
        )
    return parts


def file_size(file: BinaryIO) -> int:
    """The size of an open file, from its descriptor (the file a caller opened, not a path)."""
    return os.fstat(file.fileno()).st_size


def guess_content_type(key: str) -> str:
    """Content-Type from the key's extension; application/octet-stream when unknown."""
    kind, encoding = mimetypes.guess_type(PurePosixPath(key).name, strict=False)
    if encoding:
        return _ENCODING_TYPES.get(encoding, DEFAULT_CONTENT_TYPE)
    return kind or DEFAULT_CONTENT_TYPE


def one_line(text: object) -> str:
    return " ".join(str(text).split())


@contextmanager
def staging_file(dest: Path) -> Iterator[Path]:
    """A temporary file next to `dest`, renamed over it on success, removed on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name[:80]}.", suffix=PART_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp's 0600 is for the partial file only
        os.replace(tmp, dest)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


class BaseStore:
    """What the stores share: the provider, the options and the error wording."""

    def __init__(self, provider: StorageProvider, options: TransferOptions) -> None:
        self.provider = provider
        self.options = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.provider.ref}, endpoint={self.provider.endpoint or self.provider.root})"

    def _raise(
        self,
        operation: str,
        bucket: str,
        key: str | None,
        reason: str,
        *,
        credentials: bool = False,
        cause: str | None = None,
        status: int | None = None,
    ) -> NoReturn:
        where = f"{bucket}/{key}" if key is not None else bucket
        message = one_line(f"{self.provider.ref}: {operation} '{where}' failed: {reason}")
        error_type = CredentialsError if credentials else StorageError
        raise error_type(
            message,
            provider=str(self.provider.ref),
            operation=operation,
            bucket=bucket,
            key=key,
            cause=cause,
            status=status,
        )

    @contextmanager
    def _local_file_errors(self, operation: str, bucket: str, key: str | None) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self._raise(operation, bucket, key, f"local file error: {exc}", cause=type(exc).__name__)
