"""The ObjectStore seam and its S3 (boto3), MinIO (minio SDK) and local-folder implementations,
plus the plumbing of the two HTTP stores: WebDAV (runtime/webdav.py: dCache, ownCloud, ...) and
Onedata's CDMI interface (runtime/onedata.py).

    store = open_store(provider)                  # s3 -> S3Store, minio -> MinioStore, local -> LocalStore,
                                                  # webdav -> WebDavStore, onedata -> OnedataStore
    store.download(bucket, key, Path("in/x.jpg")) # bytes written
    store.upload(Path("out/y.png"), bucket, key)  # bytes sent, Content-Type guessed from the key

Every transfer streams between a local file and the store: memory does not grow with object
size (multipart above `multipart_threshold`, in parts of `part_size`, a few in flight). A
download goes to a temporary file next to `dest` and is renamed over it only when complete, so
`dest` never holds a partial object. Transient failures are retried a bounded number of times
with backoff (`max_attempts`, `connect_timeout`, `read_timeout`: keyword arguments of
`open_store`); what is left is raised as

    StorageError        one line naming provider, operation, bucket/key and the cause
    └── CredentialsError  no credentials, or the store refused them (InvalidAccessKeyId,
                          SignatureDoesNotMatch, AccessDenied, HTTP 401/403)

with `provider`, `operation`, `bucket`, `key` and `cause` in the error's context.
"""

from __future__ import annotations

import io
import mimetypes
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

from conveyor.config import MINIO_DEFAULT_ENDPOINT, StorageProvider
from conveyor.errors import ConfigError, CredentialsError, StorageError

MiB = 1024 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MINIO_PART = 5 * MiB  # the smallest part S3 allows
MAX_PARTS = 10_000  # the most parts S3 allows in one upload
PART_SUFFIX = ".conveyor-part"  # temporary download files, next to their destination

CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "403", "Forbidden"}
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound", "ResourceNotFound", "404"})
_ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}


@runtime_checkable
class ObjectStore(Protocol):
    provider: StorageProvider

    def download(self, bucket: str, key: str, dest: Path) -> int:
        """Stream the object into `dest` (created/overwritten). Returns bytes written."""

    def upload(self, src: Path, bucket: str, key: str, content_type: str | None = None) -> int:
        """Stream `src` to bucket/key (multipart when large), with a Content-Type. Returns bytes sent."""

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        """Small in-memory write (result records)."""

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist (local runs and tests)."""

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object (no error when it is already gone)."""

    def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists (False for a missing key or bucket)."""

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix`, sorted."""


@dataclass(frozen=True)
class TransferOptions:
    """Retry, timeout and multipart settings shared by every store."""

    max_attempts: int = 3  # total tries per request, first one included
    connect_timeout: float = 2.0  # seconds
    read_timeout: float = 60.0  # seconds without a byte
    multipart_threshold: int = 64 * MiB  # larger uploads/downloads go in parts
    part_size: int = 16 * MiB  # S3 minimum is 5 MiB
    max_concurrency: int = 4  # parts in flight


def open_store(provider: StorageProvider, options: TransferOptions | None = None, **overrides: Any) -> ObjectStore:
    """Build the store for a provider (s3 -> boto3, minio -> minio SDK, local -> folder,
    webdav -> WebDAV over requests, onedata -> Onedata CDMI over requests).

    `overrides` are TransferOptions fields, e.g. `open_store(p, max_attempts=1, connect_timeout=0.5)`.
    """
    options = replace(options or TransferOptions(), **overrides)
    kind = provider.ref.type
    if kind == "s3":
        return S3Store(provider, options)
    if kind == "minio":
        return MinioStore(provider, options)
    if kind == "local":
        return LocalStore(provider, options)
    if kind == "webdav":
        from conveyor.webdav import WebDavStore

        return WebDavStore(provider, options)
    if kind == "onedata":
        from conveyor.onedata import OnedataStore

        return OnedataStore(provider, options)
    raise ConfigError(
        f"storage provider '{provider.ref}' has type '{kind}', which Conveyor cannot read or write "
        "(supported: s3, minio, webdav, onedata, local)",
        key=f"storage_providers.{kind}",
    )


def guess_content_type(key: str) -> str:
    """Content-Type from the key's extension; application/octet-stream when unknown."""
    kind, encoding = mimetypes.guess_type(PurePosixPath(key).name, strict=False)
    if encoding:
        return _ENCODING_TYPES.get(encoding, DEFAULT_CONTENT_TYPE)
    return kind or DEFAULT_CONTENT_TYPE


# -- shared plumbing ---------------------------------------------------------------------------
def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@contextmanager
def _staging_file(dest: Path) -> Iterator[Path]:
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


class _Store:
    """What the three stores share: the provider, the options and the error wording."""

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
    ) -> NoReturn:
        where = f"{bucket}/{key}" if key is not None else bucket
        message = _one_line(f"{self.provider.ref}: {operation} '{where}' failed: {reason}")
        error_type = CredentialsError if credentials else StorageError
        raise error_type(
            message, provider=str(self.provider.ref), operation=operation, bucket=bucket, key=key, cause=cause
        )

    @contextmanager
    def _local_file_errors(self, operation: str, bucket: str, key: str | None) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self._raise(operation, bucket, key, f"local file error: {exc}", cause=type(exc).__name__)


# -- S3 (boto3) --------------------------------------------------------------------------------
class S3Store(_Store):
    """Amazon S3, or any S3-compatible server when `provider.endpoint` is set (path-style addressing).

    Credentials: the provider's keys, else boto3's default chain (environment, role, ...).
    """

    def __init__(self, provider: StorageProvider, options: TransferOptions) -> None:
        super().__init__(provider, options)
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if bool(provider.access_key) != bool(provider.secret_key):
            raise CredentialsError(
                f"{provider.ref}: access_key and secret_key must be given together (or neither, for the "
                "default AWS credential chain)",
                provider=str(provider.ref),
            )
        self.region = provider.region or "us-east-1"
        config: dict[str, Any] = {
            "region_name": self.region,
            "signature_version": "s3v4",
            "connect_timeout": options.connect_timeout,
            "read_timeout": options.read_timeout,
            "retries": {"mode": "standard", "max_attempts": options.max_attempts},
            "max_pool_connections": max(10, options.max_concurrency * 2),
        }
        if provider.endpoint:
            # S3-compatible servers: no virtual-host buckets, and only the checksums S3 has always required.
            config["s3"] = {"addressing_style": "path"}
            config["request_checksum_calculation"] = "when_required"
            config["response_checksum_validation"] = "when_required"
        client_args: dict[str, Any] = {
            "endpoint_url": provider.endpoint or None,
            "verify": provider.verify,
            "config": Config(**config),
        }
        if provider.access_key and provider.secret_key:
            with _SESSION_LOCK:  # a warm shared session builds a client in ~20 ms, a new one in ~250 ms
                self.client = _shared_session().client(
                    "s3",
                    aws_access_key_id=provider.access_key,
                    aws_secret_access_key=provider.secret_key,
                    **client_args,
                )
        else:  # the default chain (environment, profile, role), resolved now, in a session of its own
            self.client = boto3.session.Session(region_name=self.region).client("s3", **client_args)
        self.transfer = TransferConfig(
            multipart_threshold=options.multipart_threshold,
            multipart_chunksize=options.part_size,
            max_concurrency=options.max_concurrency,
            num_download_attempts=options.max_attempts,
            # boto3 queues up to 100 received chunks (256 KiB each) for the writer by default:
            # memory that grows with a fast server and a slow disk. 8 keep the writer fed.
            max_io_queue=8,
        )

    @contextmanager
    def _errors(self, operation: str, bucket: str, key: str | None = None) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            yield
        except StorageError:
            raise
        except (BotoCoreError, ClientError, Boto3Error, OSError) as exc:
            root = _find_cause(exc, (ClientError, BotoCoreError)) or exc
            if isinstance(root, (NoCredentialsError, PartialCredentialsError)):
                self._raise(
                    operation, bucket, key, f"no credentials: {root}", credentials=True, cause=type(root).__name__
                )
            if isinstance(root, ClientError):
                error = root.response.get("Error", {})
                code = str(error.get("Code", ""))
                status = root.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                detail = f"{code}: {error.get('Message')}" if error.get("Message") else code
                if code in NOT_FOUND_CODES:
                    what = {"NoSuchBucket": "bucket", "404": "object or bucket", "NotFound": "object or bucket"}
                    self._raise(operation, bucket, key, f"{what.get(code, 'object')} not found ({detail})", cause=code)
                if code in CREDENTIAL_CODES:
                    self._raise(operation, bucket, key, f"credentials refused ({detail})", credentials=True, cause=code)
                self._raise(operation, bucket, key, f"{detail} (HTTP {status})", cause=code)
            if isinstance(root, (BotoConnectionError, HTTPClientError)):  # refused, timed out, reset: retried
                where = self.provider.endpoint or "S3"
                reason = f"cannot reach {where}: {root} (after {self.options.max_attempts} attempts)"
                self._raise(operation, bucket, key, reason, cause=type(root).__name__)
            if isinstance(root, BotoCoreError):
                self._raise(operation, bucket, key, str(root), cause=type(root).__name__)
            if isinstance(root, OSError):
                self._raise(operation, bucket, key, f"local file error: {root}", cause=type(root).__name__)
            self._raise(operation, bucket, key, f"{type(root).__name__}: {root}", cause=type(root).__name__)

    def download(self, bucket: str, key: str, dest: Path) -> int:
        with self._errors("download", bucket, key), _staging_file(Path(dest)) as tmp:
            self.client.download_file(bucket, key, str(tmp), Config=self.transfer)
            return tmp.stat().st_size

    def upload(self, src: Path, bucket: str, key: str, content_type: str | None = None) -> int:
        with self._errors("upload", bucket, key):
            size = Path(src).stat().st_size
            extra = {"ContentType": content_type or guess_content_type(key)}
            self.client.upload_file(str(src), bucket, key, ExtraArgs=extra, Config=self.transfer)
            return size

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        with self._errors("put", bucket, key):
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)

    def delete(self, bucket: str, key: str) -> None:
        with self._errors("delete", bucket, key):
            self.client.delete_object(Bucket=bucket, Key=key)  # S3 answers 204 for a missing key too

    def ensure_bucket(self, bucket: str) -> None:
        from botocore.exceptions import ClientError

        with self._errors("create bucket", bucket):
            try:
                self.client.head_bucket(Bucket=bucket)
                return
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in NOT_FOUND_CODES:
                    raise
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self.client.create_bucket(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def exists(self, bucket: str, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors("stat", bucket, key):
            try:
                self.client.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NotFound", "NoSuchKey"):
                    return False
                raise
            return True

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        with self._errors("list", bucket, prefix or None):
            keys: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", ()))
            return sorted(keys)


_SESSION_LOCK = threading.Lock()
_SESSION: Any = None


def _shared_session() -> Any:
    """One boto3 session for every store with explicit keys (it caches the parsed service models)."""
    global _SESSION
    if _SESSION is None:
        import boto3

        _SESSION = boto3.session.Session()
    return _SESSION


def _find_cause(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `types` in the chain (boto3 wraps ClientError in S3UploadFailedError...)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        last = getattr(current, "last_exception", None)  # boto3 RetriesExceededError
        current = current.__cause__ or current.__context__ or (last if isinstance(last, BaseException) else None)
    return None


# -- MinIO (minio SDK) -------------------------------------------------------------------------
class MinioStore(_Store):
    """A MinIO (or any S3-compatible) server through the minio SDK. `provider.endpoint` is a URL:
    http:// -> plain, https:// (or no scheme) -> TLS, checked unless `verify` is false."""

    def __init__(self, provider: StorageProvider, options: TransferOptions) -> None:
        super().__init__(provider, options)
        import certifi
        import urllib3
        from minio import Minio

        if not provider.access_key or not provider.secret_key:
            raise CredentialsError(
                f"{provider.ref}: no access_key/secret_key for the MinIO provider "
                "(neither in the secrets folder nor in the function definition)",
                provider=str(provider.ref),
            )
        endpoint = provider.endpoint or MINIO_DEFAULT_ENDPOINT
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise ConfigError(
                f"'{endpoint}' is not a MinIO endpoint URL (expected http(s)://host[:port])",
                key=f"storage_providers.minio.{provider.ref.id}.endpoint",
            )
        self.endpoint = endpoint
        secure = parts.scheme == "https"
        retry = urllib3.Retry(
            total=max(0, options.max_attempts - 1),
            backoff_factor=0.2,
            backoff_max=5,
            status_forcelist=(500, 502, 503, 504),
            raise_on_status=False,  # the last 5xx reaches the SDK, which reads the S3 error in it
        )
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=options.connect_timeout, read=options.read_timeout),
            maxsize=max(10, options.max_concurrency * 2),
            retries=retry,
            cert_reqs="CERT_REQUIRED" if provider.verify else "CERT_NONE",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        # region None: the SDK asks the server (GetBucketLocation, once per bucket).
        self.client = Minio(
            parts.netloc,
            access_key=provider.access_key,
            secret_key=provider.secret_key,
            secure=secure,
            region=provider.region or None,
            http_client=http,
            cert_check=provider.verify,
        )

    @contextmanager
    def _errors(self, operation: str, bucket: str, key: str | None = None) -> Iterator[None]:
        import urllib3
        from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

        try:
            yield
        except StorageError:
            raise
        except S3Error as exc:
            detail = f"{exc.code}: {exc.message}" if exc.message else str(exc.code)
            if exc.code in NOT_FOUND_CODES:
                what = "bucket" if exc.code == "NoSuchBucket" else "object"
                self._raise(operation, bucket, key, f"{what} not found ({detail})", cause=exc.code)
            if exc.code in CREDENTIAL_CODES:
                self._raise(operation, bucket, key, f"credentials refused ({detail})", credentials=True, cause=exc.code)
            self._raise(operation, bucket, key, detail, cause=exc.code)
        except ServerError as exc:
            self._raise(operation, bucket, key, f"server error: {exc} (HTTP {exc.status_code})", cause="ServerError")
        except (InvalidResponseError, MinioException) as exc:
            self._raise(operation, bucket, key, f"{type(exc).__name__}: {exc}", cause=type(exc).__name__)
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            self._raise(
                operation,
                bucket,
                key,
                f"cannot reach {self.endpoint}: {reason} (after {self.options.max_attempts} attempts)",
                cause=type(reason).__name__,
            )
        except ValueError as exc:  # the SDK's argument checks (bucket name, empty key ...)
            self._raise(operation, bucket, key, f"invalid request: {exc}", cause="ValueError")
        except OSError as exc:
            self._raise(operation, bucket, key, f"local file error: {exc}", cause=type(exc).__name__)

    def download(self, bucket: str, key: str, dest: Path) -> int:
        with self._errors("download", bucket, key), _staging_file(Path(dest)) as tmp:
            sdk_tmp = tmp.with_name(tmp.name + ".minio")  # the SDK streams here, then renames over tmp
            try:
                self.client.fget_object(bucket, key, str(tmp), tmp_file_path=str(sdk_tmp))
            finally:
                with suppress(FileNotFoundError):
                    sdk_tmp.unlink()
            return tmp.stat().st_size

    def upload(self, src: Path, bucket: str, key: str, content_type: str | None = None) -> int:
        with self._errors("upload", bucket, key):
            size = Path(src).stat().st_size
            # The minio SDK holds every part it sends as bytes (several, with parallel uploads), so
            # memory is bounded by small parts sent one at a time: the smallest S3 allows (5 MiB),
            # or larger only when 10,000 of those would not cover the object. Measured (bench):
            # a 1 GiB upload then peaks 9 MiB above a 1 MiB one, and is no slower on loopback.
            part_size = max(MINIO_PART, -(-size // MAX_PARTS))
            self.client.fput_object(
                bucket,
                key,
                str(src),
                content_type=content_type or guess_content_type(key),
                part_size=part_size,
                num_parallel_uploads=1,
            )
            return size

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        with self._errors("put", bucket, key):
            self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def delete(self, bucket: str, key: str) -> None:
        with self._errors("delete", bucket, key):
            self.client.remove_object(bucket, key)

    def ensure_bucket(self, bucket: str) -> None:
        from minio.error import S3Error

        with self._errors("create bucket", bucket):
            if self.client.bucket_exists(bucket):
                return
            try:
                region = self.provider.region
                self.client.make_bucket(bucket, location=region if region and region != "us-east-1" else None)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def exists(self, bucket: str, key: str) -> bool:
        from minio.error import S3Error

        with self._errors("stat", bucket, key):
            try:
                self.client.stat_object(bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"):
                    return False
                raise
            return True

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        with self._errors("list", bucket, prefix or None):
            return sorted(
                obj.object_name
                for obj in self.client.list_objects(bucket, prefix=prefix or None, recursive=True)
                if obj.object_name is not None
            )


# -- local folder ------------------------------------------------------------------------------
class LocalStore(_Store):
    """A folder standing for the buckets: `<root>/<bucket>/<key>` (developer runs, tests).

    Keys that could leave the bucket folder ('..' segments, absolute paths, NUL, symlinks out)
    are refused. Content-Type is accepted and ignored: a folder has nowhere to keep it.
    """

    def __init__(self, provider: StorageProvider, options: TransferOptions) -> None:
        super().__init__(provider, options)
        if not provider.root:
            raise ConfigError(
                f"the local storage provider '{provider.ref}' needs a root folder",
                key=f"storage_providers.local.{provider.ref.id}.root",
            )
        self.root = Path(provider.root).expanduser().resolve()

    def _bucket_dir(self, operation: str, bucket: str) -> Path:
        if not bucket or bucket in (".", "..") or any(ch in bucket for ch in "/\\\0"):
            self._raise(operation, bucket, None, "invalid bucket name for a local folder")
        return self.root / bucket

    def _path(self, operation: str, bucket: str, key: str) -> Path:
        base = self._bucket_dir(operation, bucket)
        segments = key.split("/")
        if not key or "\0" in key or key.startswith("/") or any(seg in ("", ".", "..") for seg in segments):
            self._raise(operation, bucket, key, "key refused: it would not map to a file inside the bucket folder")
        path = base.joinpath(*segments)
        if not path.resolve().is_relative_to(base.resolve()):
            self._raise(operation, bucket, key, "key refused: it resolves outside the bucket folder")
        return path

    def _require_bucket(self, operation: str, bucket: str, key: str | None) -> Path:
        base = self._bucket_dir(operation, bucket)
        if not base.is_dir():
            self._raise(operation, bucket, key, f"bucket not found (no folder {base})", cause="NoSuchBucket")
        return base

    def download(self, bucket: str, key: str, dest: Path) -> int:
        path = self._path("download", bucket, key)
        self._require_bucket("download", bucket, key)
        if not path.is_file():
            self._raise("download", bucket, key, f"object not found (no file {path})", cause="NoSuchKey")
        with self._local_file_errors("download", bucket, key), _staging_file(Path(dest)) as tmp:
            with open(path, "rb") as source, open(tmp, "wb") as target:
                shutil.copyfileobj(source, target, MiB)
            return tmp.stat().st_size

    def upload(self, src: Path, bucket: str, key: str, content_type: str | None = None) -> int:
        path = self._path("upload", bucket, key)
        self._require_bucket("upload", bucket, key)
        with self._local_file_errors("upload", bucket, key), open(src, "rb") as source:
            with _staging_file(path) as tmp, open(tmp, "wb") as target:
                shutil.copyfileobj(source, target, MiB)
            return path.stat().st_size

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        path = self._path("put", bucket, key)
        self._require_bucket("put", bucket, key)
        with self._local_file_errors("put", bucket, key), _staging_file(path) as tmp:
            tmp.write_bytes(data)

    def ensure_bucket(self, bucket: str) -> None:
        base = self._bucket_dir("create bucket", bucket)
        with self._local_file_errors("create bucket", bucket, None):
            base.mkdir(parents=True, exist_ok=True)

    def delete(self, bucket: str, key: str) -> None:
        path = self._path("delete", bucket, key)
        with self._local_file_errors("delete", bucket, key):
            path.unlink(missing_ok=True)

    def exists(self, bucket: str, key: str) -> bool:
        return self._path("stat", bucket, key).is_file()

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        base = self._require_bucket("list", bucket, prefix or None)
        with self._local_file_errors("list", bucket, prefix or None):
            keys = (
                path.relative_to(base).as_posix()
                for path in base.rglob("*")
                if path.is_file() and not path.name.endswith(PART_SUFFIX)
            )
            return sorted(key for key in keys if key.startswith(prefix))


# -- HTTP stores (WebDAV, Onedata CDMI): shared plumbing ---------------------------------------
HTTP_CHUNK = 256 * 1024  # bytes moved between a socket and a file at a time
RETRY_STATUSES = (500, 502, 503, 504)
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PROPFIND", "MKCOL"})


def http_base_url(host: str, key: str) -> str:
    """A host as SCAR and OSCAR write it (`host[:port][/path]`, https unless a scheme is given;
    `http://...` for plain HTTP) as a base URL without a trailing slash. `key` names the setting."""
    text = host.strip()
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"'{host}' is not a host name nor an http(s) URL", key=key)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _http_reason(exc: BaseException) -> str:
    """The useful part of a requests/urllib3 error ("[Errno 111] Connection refused", not the repr soup)."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    reason = getattr(inner, "reason", None) or inner
    return re.sub(r"^(<[^>]*>|\w*Connection\([^)]*\)): ", "", str(reason))


class HttpStore(_Store):
    """What the WebDAV and Onedata stores share.

    One requests Session per store: keep-alive connections, TLS checked unless the provider says
    `verify: false`, and urllib3 retries (connect errors, 5xx) with backoff, `max_attempts` in all.
    The bucket is the first folder under the base URL and the key the path below it, one URL-encoded
    segment per '/'. Folders are created on demand, top-down, and remembered; a PUT whose parent has
    vanished meanwhile (`missing_parent`) re-creates them and is sent once more. Transfers stream:
    the open file is the PUT body (urllib3 sends it in small blocks, and rewinds it for a retry), and
    a GET goes into the staging file HTTP_CHUNK bytes at a time. One PUT per object: the multipart
    options do not apply. Subclasses say how a folder is probed and made, and how keys are listed
    and tested.
    """

    missing_parent: frozenset[int] = frozenset({409})  # PUT statuses meaning "no such parent folder"
    allow_redirects = True

    def __init__(self, provider: StorageProvider, options: TransferOptions, base_url: str) -> None:
        super().__init__(provider, options)
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.base_url = base_url
        self.timeout = (options.connect_timeout, options.read_timeout)
        retry = Retry(
            total=max(0, options.max_attempts - 1),
            backoff_factor=0.2,
            backoff_max=5,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=_IDEMPOTENT_METHODS,
            raise_on_status=False,  # the last 5xx comes back as a response, mapped by _fail
            respect_retry_after_header=False,  # bounded: a "Retry-After: 3600" must not stall the job
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=max(10, options.max_concurrency * 2))
        self.session = requests.Session()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.verify = provider.verify  # True: certifi, or REQUESTS_CA_BUNDLE when set
        self._folders: set[tuple[str, ...]] = set()  # folders known to exist: (bucket, *segments)
        self._folders_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.provider.ref}, url={self.base_url})"

    # -- addressing ------------------------------------------------------------------------------
    def _segments(self, operation: str, bucket: str, key: str | None) -> tuple[str, ...]:
        """(bucket, *key segments), refusing names that would not map to a path inside the bucket."""
        if not bucket or bucket in (".", "..") or any(ch in bucket for ch in "/\\\0"):
            self._raise(operation, bucket, key, "invalid bucket name for a folder")
        if key is None:
            return (bucket,)
        parts = key.split("/")
        if not key or "\0" in key or any(part in ("", ".", "..") for part in parts):
            self._raise(operation, bucket, key, "key refused: it would not map to a path inside the bucket folder")
        return (bucket, *parts)

    def _url(self, segments: tuple[str, ...], folder: bool = False) -> str:
        path = "/".join(quote(segment, safe="") for segment in segments)
        return f"{self.base_url}/{path}/" if folder else f"{self.base_url}/{path}"

    # -- requests and their errors ---------------------------------------------------------------
    def _send(self, method: str, url: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("allow_redirects", self.allow_redirects)
        if not self.provider.verify:  # per request: a session's verify=False loses to REQUESTS_CA_BUNDLE
            kwargs["verify"] = False
        return self.session.request(method, url, **kwargs)

    @contextmanager
    def _errors(self, operation: str, bucket: str, key: str | None = None) -> Iterator[None]:
        import requests

        attempts = f"after {self.options.max_attempts} attempts"
        try:
            yield
        except StorageError:
            raise
        except requests.exceptions.SSLError as exc:
            reason = f"TLS failure with {self.base_url}: {_http_reason(exc)}"
            self._raise(operation, bucket, key, reason, cause="SSLError")
        except requests.exceptions.ConnectionError as exc:  # refused, unresolvable, reset, connect timeout
            reason = f"cannot reach {self.base_url}: {_http_reason(exc)} ({attempts})"
            self._raise(operation, bucket, key, reason, cause=type(exc).__name__)
        except requests.exceptions.Timeout as exc:
            reason = f"no answer from {self.base_url} within {self.options.read_timeout:g} s ({attempts})"
            self._raise(operation, bucket, key, reason, cause=type(exc).__name__)
        except requests.exceptions.RequestException as exc:  # before OSError: requests' errors are IOErrors
            self._raise(operation, bucket, key, f"HTTP transfer failed: {_http_reason(exc)}", cause=type(exc).__name__)
        except OSError as exc:
            self._raise(operation, bucket, key, f"local file error: {exc}", cause=type(exc).__name__)

    def _error_detail(self, response: Any) -> str:
        """A short explanation from an error response's body ('' when it has none worth quoting)."""
        if not response.headers.get("Content-Type", "").startswith("text/plain"):
            return ""
        head = next(response.iter_content(300), b"")
        return _one_line(head.decode("utf-8", "replace"))[:200]

    def _fail(self, response: Any, operation: str, bucket: str, key: str | None, what: str = "object") -> NoReturn:
        status = response.status_code
        detail = self._error_detail(response)
        reason = response.reason or ""
        label = f"HTTP {status} {reason}".rstrip()
        if detail and detail.lower() != reason.lower():
            label += f": {detail}"
        if status in (401, 403):
            self._raise(operation, bucket, key, f"credentials refused ({label})", credentials=True, cause=str(status))
        if status == 404:
            self._raise(operation, bucket, key, f"{what} not found ({label})", cause="404")
        if 300 <= status < 400:
            reason = f"unexpected redirect ({label}) to {response.headers.get('Location')}"
            self._raise(operation, bucket, key, reason, cause=str(status))
        self._raise(operation, bucket, key, label, cause=str(status))

    # -- folders ---------------------------------------------------------------------------------
    def _folder_exists(self, operation: str, bucket: str, key: str | None, folder: tuple[str, ...]) -> bool:
        raise NotImplementedError

    def _make_folder(self, operation: str, bucket: str, key: str | None, folder: tuple[str, ...]) -> None:
        raise NotImplementedError

    def _ensure_folder(self, operation: str, bucket: str, key: str | None, folder: tuple[str, ...]) -> None:
        """Make `folder` (bucket first) exist: one probe when it does, top-down creation when not."""
        with self._folders_lock:
            if folder in self._folders:
                return
        if not self._folder_exists(operation, bucket, key, folder):
            for depth in range(1, len(folder)):
                level = folder[:depth]
                with self._folders_lock:
                    known = level in self._folders
                if not known and not self._folder_exists(operation, bucket, key, level):
                    self._make_folder(operation, bucket, key, level)
                with self._folders_lock:
                    self._folders.add(level)
            self._make_folder(operation, bucket, key, folder)
        with self._folders_lock:
            self._folders.update(folder[:depth] for depth in range(1, len(folder) + 1))

    def _put(self, operation: str, bucket: str, key: str, open_body: Any, content_type: str) -> None:
        segments = self._segments(operation, bucket, key)
        url = self._url(segments)
        for attempt in (1, 2):
            self._ensure_folder(operation, bucket, key, segments[:-1])
            with open_body() as body:
                response = self._send("PUT", url, data=body, headers={"Content-Type": content_type})
            with response:
                if response.status_code in self.missing_parent and attempt == 1:
                    with self._folders_lock:  # deleted behind our back: probe and create again
                        self._folders.clear()
                    continue
                if not 200 <= response.status_code < 300:
                    self._fail(response, operation, bucket, key, "folder" if response.status_code == 404 else "object")
                return

    # -- the ObjectStore protocol ----------------------------------------------------------------
    def download(self, bucket: str, key: str, dest: Path) -> int:
        url = self._url(self._segments("download", bucket, key))
        with self._errors("download", bucket, key), _staging_file(Path(dest)) as tmp:
            with self._send("GET", url, stream=True, headers={"Accept-Encoding": "identity"}) as response:
                if response.status_code != 200:
                    self._fail(response, "download", bucket, key)
                with open(tmp, "wb") as target:
                    for chunk in response.iter_content(HTTP_CHUNK):
                        target.write(chunk)
            return tmp.stat().st_size

    def upload(self, src: Path, bucket: str, key: str, content_type: str | None = None) -> int:
        src = Path(src)
        with self._errors("upload", bucket, key):
            size = src.stat().st_size

            def open_body() -> Any:  # a fresh handle per PUT; b"" for an empty file (no chunked encoding)
                return open(src, "rb") if size else nullcontext(b"")

            self._put("upload", bucket, key, open_body, content_type or guess_content_type(key))
            return size

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        with self._errors("put", bucket, key):
            self._put("put", bucket, key, lambda: nullcontext(data), content_type)

    def delete(self, bucket: str, key: str) -> None:
        url = self._url(self._segments("delete", bucket, key))
        with self._errors("delete", bucket, key):
            response = self._send("DELETE", url)
            with response:
                if response.status_code != 404 and not 200 <= response.status_code < 300:
                    self._fail(response, "delete", bucket, key, "object")

    def ensure_bucket(self, bucket: str) -> None:
        folder = self._segments("create bucket", bucket, None)
        with self._errors("create bucket", bucket):
            self._ensure_folder("create bucket", bucket, None, folder)

    def _start_folder(self, bucket: str, prefix: str) -> tuple[str, ...]:
        """The deepest folder a listing prefix names ("a/b/c" -> (bucket, "a", "b")), else the bucket."""
        parts = prefix.split("/")[:-1]
        if any(part in ("", ".", "..") for part in parts):
            return (bucket,)
        return (bucket, *parts)
