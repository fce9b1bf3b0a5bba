"""The obstore engine (Rust `object_store`, PyPI `obstore`) of the s3 and minio providers: the
default transfer engine (`conveyor: transfer_engine: obstore`; `sdk` picks boto3 / the minio SDK).

How it keeps the seam's promises:

- download: `get()` streamed chunk by chunk into the staging file, renamed over `dest` when whole.
- upload / put_file: up to one part (5 MiB) in one PUT, larger files in parts read from the file,
  3 in flight (memory: about 4 parts, whatever the object's size); a multipart upload that does
  not complete is aborted.
- create_only: `If-None-Match: *` (obstore's PutMode "create", atomic on the server). obstore sends
  it only in a single PUT, which holds the whole body in memory: a create-only file larger than one
  part goes through the provider's SDK store instead (atomic there too for s3: boto3 sends the
  header with the multipart completion; the minio SDK stats just before). It is sent again only
  when it cannot have landed (5xx, 429, no connection): after a lost answer the server would
  refuse the resent write of an object that did land, and the record would take it for another's.
- delete(if_match=...): obstore has no conditional delete: the ETag is compared (HEAD) just before
  the DELETE, which leaves a window of one request in which another writer's object can be taken
  for ours, as in the stores that cannot send If-Match.
- ensure_bucket (local runs and tests only) and keys obstore cannot address as they are (empty,
  "." or ".." segments, a leading or trailing "/", a backslash or a control character, which its
  path type rejects or rewrites) go through the provider's SDK store, imported only then.

Configuration is explicit: obstore's S3 builder reads every AWS_* variable, so an explicit
provider would otherwise pick up AWS_ENDPOINT_URL_S3 (it beats `endpoint`) or, under Lambda, the
function's AWS_SESSION_TOKEN next to its own keys. Here the endpoint is always pinned
(`aws_endpoint_url_s3` too) and explicit keys come from a credential provider (no token, never
the environment's). A provider without keys (s3 only) uses obstore's standard AWS chain:
environment (with session token), web identity, container and instance credentials. AWS S3
itself gets the provider's region, else the platform's (TransferOptions.default_region): obstore
does not follow S3's redirects to a bucket's region (a wrong region is an error that names it).

Timeouts: connect and read (between bytes) from TransferOptions; the whole-request `timeout`
(30 s by default, body included) is lifted to a day, since large transfers last longer and the
record's deadline bounds them. Retries: `max_attempts`, backoff from `backoff_factor` doubling up
to `backoff_max` (obstore retries 5xx, connection errors and timeouts of reads).
obstore reports failures as text only: the S3 code, the HTTP status and the socket error are read
from it, and mapped as the other stores do (not found, refused credentials, unreachable).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from conveyor.config import MINIO_DEFAULT_ENDPOINT, StorageProvider
from conveyor.errors import ConfigError, CredentialsError, StorageError
from conveyor.storage.base import (
    CREDENTIAL_CODES,
    PRECONDITION_FAILED,
    BaseStore,
    MiB,
    TransferOptions,
    Written,
    endpoint_parts,
    file_size,
    guess_content_type,
    is_not_found,
    one_line,
    staging_file,
)

if TYPE_CHECKING:
    from conveyor.storage import ObjectStore

MIN_PART = 5 * MiB  # the smallest part S3 allows: larger parts buy nothing on a fast link and cost memory
MAX_IN_FLIGHT = 3  # parts sent at once (at most; TransferOptions.max_concurrency may say fewer)
MAX_PARTS = 10_000  # the most parts S3 allows in one upload
READ_CHUNK = 1 * MiB  # a download is written in chunks of at least this
REQUEST_TIMEOUT = timedelta(days=1)  # obstore's whole-request timeout: the record's deadline bounds transfers
_ODD_SEGMENTS = frozenset({"", ".", ".."})
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_REGION = re.compile(r"<Region>([^<]+)</Region>")
_WRONG_REGION = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "IncorrectEndpoint"})
_STATUS = re.compile(r"status(?: code)?: (\d{3})")
_OS_MESSAGE = re.compile(r'message: "([^"]+)"')
_HTTP_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")
# Requests of the AWS credential chain: instance metadata (IMDS token and role), container
# credentials, web identity (STS). A failure there means: no credentials.
_CREDENTIAL_SOURCES = ("/latest/api/token", "/latest/meta-data/iam", "/v2/credentials", "AssumeRoleWithWebIdentity")


def addressable(key: str) -> bool:
    """Whether obstore addresses `key` as it is: no empty, "." or ".." segment (a leading, trailing
    or doubled "/"), no backslash (rewritten to "/"), no control character."""
    if "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        return False
    return not any(segment in _ODD_SEGMENTS for segment in key.split("/"))


class ObstoreStore(BaseStore):
    """An S3 (provider type s3) or MinIO (type minio) provider through obstore. One obstore store
    per bucket, built on first use and kept."""

    def __init__(self, provider: StorageProvider, options: TransferOptions) -> None:
        super().__init__(provider, options)
        try:
            import obstore  # noqa: F401  (fails here, once, rather than at the first transfer)
        except ImportError as exc:
            raise ConfigError(
                f"{provider.ref}: the obstore transfer engine is not installed ({exc}); install obstore or "
                "set 'conveyor: transfer_engine: sdk'",
                key="conveyor.transfer_engine",
            ) from exc
        kind = provider.ref.type
        if kind == "minio" and not provider.has_keys:
            raise CredentialsError(
                f"{provider.ref}: no access_key/secret_key for the MinIO provider "
                "(neither in the secrets folder nor in the function definition)",
                provider=str(provider.ref),
            )
        if bool(provider.access_key) != bool(provider.secret_key):
            raise CredentialsError(
                f"{provider.ref}: access_key and secret_key must be given together (or neither, for the "
                "default AWS credential chain)",
                provider=str(provider.ref),
            )
        endpoint = provider.endpoint or (MINIO_DEFAULT_ENDPOINT if kind == "minio" else None)
        # AWS S3 itself: the provider's region, else the platform's (Lambda, Batch); obstore does not
        # follow S3's redirects to the bucket's region as boto3 does (a wrong one is a clear error).
        self.region = provider.region or (None if endpoint else options.default_region) or "us-east-1"
        self.endpoint: str | None = None
        if endpoint:
            parts = endpoint_parts(endpoint, provider)
            self.endpoint = f"{parts.scheme}://{parts.netloc}"
        self._client = self._client_options()
        self._retry = {
            "max_retries": max(0, options.max_attempts - 1),
            "backoff": {
                "init_backoff": timedelta(seconds=max(options.backoff_factor, 0.001)),
                "max_backoff": timedelta(seconds=max(options.backoff_max, options.backoff_factor, 0.001)),
                "base": 2,
            },
        }
        self._buckets: dict[tuple[str, bool], Any] = {}
        self._sdk: ObjectStore | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.provider.ref}, endpoint={self.endpoint or 'AWS S3'})"

    # -- building -------------------------------------------------------------------------------
    def _client_options(self) -> dict[str, Any]:
        options = self.options
        client: dict[str, Any] = {
            "connect_timeout": timedelta(seconds=options.connect_timeout),
            "read_timeout": timedelta(seconds=options.read_timeout),
            "timeout": REQUEST_TIMEOUT,
            "allow_http": bool(self.endpoint and self.endpoint.startswith("http://")),
            "allow_invalid_certificates": not self.provider.verify,
        }
        if options.ca_bundle:
            try:
                client["root_certificate"] = Path(options.ca_bundle).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read the CA bundle {options.ca_bundle}: {exc}", key="SSL_CERT_FILE") from exc
        return client

    def _config(self, bucket: str) -> dict[str, Any]:
        """Every setting an AWS_* variable could otherwise change, given explicitly."""
        config: dict[str, Any] = {
            "region": self.region,
            "conditional_put": "etag",
            "disable_bulk_delete": True,  # one DELETE per key: what every S3-compatible server has
            "skip_signature": False,
            # The payload is signed over plain HTTP (as boto3 and the minio SDK do); TLS protects it otherwise.
            "unsigned_payload": not (self.endpoint or "").startswith("http://"),
        }
        if self.endpoint:
            endpoint, virtual = self.endpoint, False
        else:  # AWS S3 itself: virtual-hosted where the name allows it, as boto3's "auto" does
            domain = "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"
            virtual = "." not in bucket and bucket == bucket.lower()
            host = f"{bucket}.s3.{self.region}.{domain}" if virtual else f"s3.{self.region}.{domain}"
            endpoint = f"https://{host}"
        config.update(endpoint=endpoint, aws_endpoint_url_s3=endpoint, virtual_hosted_style_request=virtual)
        return config

    def _store(self, bucket: str, retries: bool = True) -> Any:
        """The obstore store of `bucket`; `retries=False`: one that never asks twice (create-only writes)."""
        with self._lock:
            store = self._buckets.get((bucket, retries))
            if store is None:
                from obstore.store import S3Store as Bucket

                # explicit keys: never the environment's keys nor its session token
                credentials = _StaticKeys(self.provider) if self.provider.has_keys else None
                with self._errors("open", bucket):
                    store = Bucket(
                        bucket,
                        config=self._config(bucket),  # type: ignore[arg-type]
                        client_options=self._client,  # type: ignore[arg-type]
                        retry_config=self._retry if retries else {"max_retries": 0},  # type: ignore[arg-type]
                        credential_provider=credentials,  # type: ignore[arg-type]
                    )
                self._buckets[(bucket, retries)] = store
            return store

    def sdk(self) -> ObjectStore:
        """The provider's SDK store (boto3 for s3, the minio SDK for minio), opened on first use."""
        with self._lock:
            if self._sdk is None:
                from conveyor.storage import open_store

                self._sdk = open_store(self.provider, replace(self.options, engine="sdk"))
            return self._sdk

    # -- errors ---------------------------------------------------------------------------------
    @contextmanager
    def _errors(self, operation: str, bucket: str, key: str | None = None) -> Iterator[None]:
        from obstore.exceptions import (
            AlreadyExistsError,
            BaseError,
            PermissionDeniedError,
            PreconditionError,
            UnauthenticatedError,
        )

        try:
            yield
        except StorageError:
            raise
        except (BaseError, FileNotFoundError) as exc:
            if isinstance(exc, FileNotFoundError) and exc.errno is not None:  # a local file
                self._raise(operation, bucket, key, f"local file error: {exc}", cause=type(exc).__name__)
            self._store_error(operation, bucket, key, exc, isinstance(exc, (AlreadyExistsError, PreconditionError)),
                              isinstance(exc, (PermissionDeniedError, UnauthenticatedError)))
        except ValueError as exc:  # obstore's path and argument checks
            self._raise(operation, bucket, key, f"invalid request: {one_line(exc)[:200]}", cause="ValueError")
        except OSError as exc:
            self._raise(operation, bucket, key, f"local file error: {exc}", cause=type(exc).__name__)

    def _store_error(
        self, operation: str, bucket: str, key: str | None, exc: BaseException, taken: bool, refused: bool
    ) -> None:
        text = str(exc)
        first = text.split("\n\nDebug source", 1)[0]
        if any(mark in first for mark in _CREDENTIAL_SOURCES):  # the AWS chain asked for keys and got none
            self._raise(operation, bucket, key, f"no credentials: {_tail(first)}", credentials=True,
                        cause="NoCredentials")
        code_match, status_match = _CODE.search(text), _STATUS.search(text)
        status = int(status_match.group(1)) if status_match else None
        code = code_match.group(1) if code_match else None
        message = _MESSAGE.search(text)
        detail = f"{code}: {message.group(1)}" if code and message and message.group(1) else (code or "")
        if taken or status == 412:
            reason = "an object already has this key (create-only write)" if taken else "precondition failed"
            self._raise(operation, bucket, key, reason, cause=PRECONDITION_FAILED, status=412)
        if isinstance(exc, FileNotFoundError) or status == 404:
            cause = code or "404"
            what = {"NoSuchBucket": "bucket", "404": "object or bucket"}.get(cause, "object")
            self._raise(operation, bucket, key, f"{what} not found ({detail or 'HTTP 404'})", cause=cause, status=404)
        if refused or status in (401, 403) or code in CREDENTIAL_CODES:
            reason = f"credentials refused ({detail or f'HTTP {status}'})"
            self._raise(operation, bucket, key, reason, credentials=True, cause=code or str(status), status=status)
        region = _REGION.search(text)
        if code in _WRONG_REGION:
            where = f"in region {region.group(1)}" if region else "in another region"
            reason = f"the bucket is {where}, not {self.region}: give the provider's region ({code})"
            self._raise(operation, bucket, key, reason, cause=code, status=status)
        if status is not None:
            self._raise(operation, bucket, key, f"{detail or 'error'} (HTTP {status})", cause=code, status=status)
        if "credential" in first.lower():  # the AWS chain found none, or could not fetch them
            self._raise(operation, bucket, key, f"no credentials: {_tail(first)}", credentials=True,
                        cause="NoCredentials")
        os_message, kind = _OS_MESSAGE.search(text), _HTTP_KIND.search(text)
        why = os_message.group(1) if os_message else _tail(first)
        where = self.endpoint or "S3"
        reason = f"cannot reach {where}: {why} (after {self.options.max_attempts} attempts)"
        self._raise(operation, bucket, key, reason, cause=kind.group(1) if kind else type(exc).__name__)

    # -- the ObjectStore protocol -----------------------------------------------------------------
    def download(self, bucket: str, key: str, dest: Path) -> int:
        if not addressable(key):
            return self.sdk().download(bucket, key, dest)
        import obstore

        with self._errors("download", bucket, key), staging_file(Path(dest)) as tmp:
            answer = obstore.get(self._store(bucket), key)
            with open(tmp, "wb") as out:
                for chunk in answer.stream(min_chunk_size=READ_CHUNK):
                    out.write(chunk)
            return tmp.stat().st_size

    def upload(self, src: Path, bucket: str, key: str, content_type: str | None = None) -> int:
        with self._errors("upload", bucket, key), open(src, "rb") as file:
            return self.put_file(file, bucket, key, content_type).size

    def part_size(self, size: int) -> int:
        """The parts of a `size`-byte upload: 5 MiB, or larger only when 10,000 of those would not
        cover the object. obstore holds each part in flight and the one being read: measured
        (bench.large), 5 MiB parts, 3 in flight, add about 23 MiB to the peak RSS whatever the
        object's size, and send 64 MiB as fast as 16 MiB parts, 4 in flight (+46 MiB)."""
        return max(MIN_PART, -(-size // MAX_PARTS))

    def put_file(
        self, file: BinaryIO, bucket: str, key: str, content_type: str | None = None, *, create_only: bool = False
    ) -> Written:
        if not addressable(key):
            return _quoted(self.sdk().put_file(file, bucket, key, content_type, create_only=create_only))
        import obstore

        with self._errors("upload", bucket, key):
            size = file_size(file)
            part = self.part_size(size)
            if create_only and size > part:  # obstore's create mode is a single PUT, held in memory
                return _quoted(self.sdk().put_file(file, bucket, key, content_type, create_only=True))
            attributes = {"Content-Type": content_type or guess_content_type(key)}
            if create_only:
                return self._create(file, bucket, key, size, attributes)
            file.seek(0)
            answer = obstore.put(
                self._store(bucket),
                key,
                file,
                attributes=attributes,
                use_multipart=size > part,
                chunk_size=part,
                max_concurrency=max(1, min(self.options.max_concurrency, MAX_IN_FLIGHT)),
            )
            return Written(size, answer.get("e_tag"))

    def _create(self, file: BinaryIO, bucket: str, key: str, size: int, attributes: dict[str, str]) -> Written:
        """A create-only PUT (If-None-Match: *), asked again only when it cannot have landed: the
        server answered 5xx/429, or no connection was made. obstore would also resend it after a
        lost answer, and the server would then refuse the retry (412) of a write that did land:
        this record's own object taken for another writer's."""
        import obstore
        from obstore.exceptions import BaseError

        pause = self.options.backoff_factor
        for attempt in range(1, max(1, self.options.max_attempts) + 1):
            file.seek(0)
            try:
                answer = obstore.put(self._store(bucket, retries=False), key, file,
                                     attributes=attributes, mode="create")
                return Written(size, answer.get("e_tag"))
            except BaseError as exc:
                if attempt >= self.options.max_attempts or not _not_written(exc):
                    raise
            time.sleep(min(pause, self.options.backoff_max))
            pause *= 2
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        if not addressable(key):
            return self.sdk().put_bytes(data, bucket, key, content_type)
        import obstore

        with self._errors("put", bucket, key):
            obstore.put(self._store(bucket), key, data, attributes={"Content-Type": content_type},
                        use_multipart=False)
        return None

    def delete(self, bucket: str, key: str, if_match: str | None = None) -> bool:
        """obstore sends no If-Match: for an `s3` provider a conditional delete goes through the SDK
        store (boto3 sends `If-Match`, the server checks and deletes atomically: a withdrawal, so off the
        hot path); elsewhere `if_match` is compared with a HEAD just before, as the minio SDK store does."""
        if if_match is not None and self.provider.ref.type == "s3":
            return self.sdk().delete(bucket, key, if_match)
        if not addressable(key):
            sdk_etag = if_match.strip('"') if if_match and self.provider.ref.type == "minio" else if_match
            return self.sdk().delete(bucket, key, sdk_etag)
        import obstore

        if if_match is not None and self.version(bucket, key) not in (if_match, None):
            return False
        try:
            with self._errors("delete", bucket, key):
                obstore.delete(self._store(bucket), key)  # no error for a missing key
        except StorageError as exc:
            if not is_not_found(exc):  # no such bucket: the object is not there either
                raise
        return True

    def version(self, bucket: str, key: str) -> str | None:
        if not addressable(key):
            version = self.sdk().version(bucket, key)
            return _quoted(Written(0, version)).etag if version not in (None, "-") else version
        import obstore

        try:
            with self._errors("stat", bucket, key):
                return str(obstore.head(self._store(bucket), key).get("e_tag") or "-")
        except StorageError as exc:
            if is_not_found(exc):
                return None
            raise

    def exists(self, bucket: str, key: str) -> bool:
        return self.version(bucket, key) is not None

    def ensure_bucket(self, bucket: str) -> None:
        """obstore cannot create buckets: the SDK store does (local runs and tests only)."""
        self.sdk().ensure_bucket(bucket)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """obstore lists by whole path segments: the listing starts at the prefix's folder and
        keeps the keys that begin with `prefix`."""
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if folder and not addressable(folder):
            return self.sdk().list_keys(bucket, prefix)
        import obstore

        try:
            with self._errors("list", bucket, prefix or None):
                keys: list[str] = []
                for batch in obstore.list(self._store(bucket), prefix=folder or None, chunk_size=1000):
                    keys.extend(meta["path"] for meta in batch if meta["path"].startswith(prefix))
                return sorted(keys)
        except StorageError as exc:
            # one key obstore cannot parse (a newline, `..`) ends its whole listing: the SDK lists them all
            if "invalid path" not in exc.message:
                raise
            return self.sdk().list_keys(bucket, prefix)


class _StaticKeys:
    """obstore's credential provider for a provider's own keys (asked once: they do not expire)."""

    def __init__(self, provider: StorageProvider) -> None:
        self._keys = {"access_key_id": provider.access_key, "secret_access_key": provider.secret_key,
                      "token": None, "expires_at": None}

    def __call__(self) -> dict[str, Any]:
        return self._keys

    def __repr__(self) -> str:
        return "_StaticKeys(***)"


def _quoted(written: Written) -> Written:
    """The ETag as obstore (and S3) gives it, in quotes: the minio SDK drops them. One store, one
    form, whichever engine wrote the object (a delete compares it)."""
    etag = written.etag
    if etag and not etag.startswith(('"', "W/")):
        return Written(written.size, f'"{etag}"')
    return written


def _not_written(exc: BaseException) -> bool:
    """Whether a failed write surely stored nothing: the server answered 5xx or 429, or the
    connection was never made."""
    text = str(exc)
    status, kind = _STATUS.search(text), _HTTP_KIND.search(text)
    if status:
        return int(status.group(1)) in (429, 500, 502, 503, 504)
    return bool(kind and kind.group(1) == "Connect")


def _tail(first_line: str) -> str:
    """The cause at the end of obstore's first error line ("... in 4 ms - HTTP error: refused")."""
    return first_line.rsplit(" - ", 1)[-1].strip()[:200]
