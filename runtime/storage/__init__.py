"""The ObjectStore seam: the protocol every store implements, its TransferOptions and the
`open_store` factory. One module per store: objstore (obstore, the default engine of s3 and
minio), s3 (boto3), minio (minio SDK), local (a folder), webdav and onedata (both on the shared
HTTP base, http).

    store = open_store(provider)                  # s3, minio -> ObstoreStore (engine "sdk": S3Store,
                                                  # MinioStore), local -> LocalStore,
                                                  # webdav -> WebDavStore, onedata -> OnedataStore
    store.download(bucket, key, Path("in/x.jpg")) # bytes written
    store.upload(Path("out/y.png"), bucket, key)  # bytes sent, Content-Type guessed from the key
    store.put_file(open_file, bucket, key, create_only=True)  # Written(size, etag), from a descriptor
    store.version(bucket, key)                    # the object's ETag (or a stand-in), None when absent
    store.delete(bucket, key, if_match=etag)      # only that version: False when another is there

Every transfer streams between a local file and the store: memory does not grow with object
size (multipart above `multipart_threshold`, in parts of `part_size`, a few in flight). A
download goes to a temporary file next to `dest` and is renamed over it only when complete, so
`dest` never holds a partial object. Transient failures are retried a bounded number of times
with backoff (`max_attempts`, `backoff_factor`, `connect_timeout`, `read_timeout`: TransferOptions
fields, also keyword arguments of `open_store`); what is left is raised as

    StorageError        one line naming provider, operation, bucket/key and the cause
    └── CredentialsError  no credentials, or the store refused them (InvalidAccessKeyId,
                          SignatureDoesNotMatch, AccessDenied, HTTP 401/403)

with `provider`, `operation`, `bucket`, `key`, `cause` and (when the server answered) the HTTP
`status` in the error's context. A 4xx answer is permanent (`is_permanent`): no layer asks again.
Deleting an object that is not there (no such key, no such bucket) succeeds.

Conditional writes, for publishing without destroying what others published (conveyor.process):
`put_file(..., create_only=True)` writes only when no object has the key and `delete(...,
if_match=etag)` removes only that version. The S3 store sends them as `If-None-Match: *` and
`If-Match` (S3, MinIO and SeaweedFS 4.48, the test server, honour both: the server checks and writes atomically).
The obstore store sends `If-None-Match: *` (a create-only file larger than one part goes through
the S3 or MinIO store) but no `If-Match`: an `s3` provider's conditional delete goes through the S3
store. What a store cannot send, it checks (the MinIO store, the obstore store for `minio`, the
HTTP stores): it compares `version` just before, which leaves a window of a request's length in
which another writer's object can be taken for theirs.

The factory imports a store's module only when a provider of its type is opened, and so do the
names re-exported here (S3Store, MinioStore, ...): the seam does not load every implementation.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

from conveyor.config import StorageProvider
from conveyor.errors import ConfigError
from conveyor.storage.base import (
    DEFAULT_CONTENT_TYPE,
    ENGINES,
    PART_SUFFIX,
    TransferOptions,
    Written,
    guess_content_type,
    is_not_found,
    is_permanent,
    is_taken,
    transfer_options,
)

if TYPE_CHECKING:
    from conveyor.storage.http import HttpStore, http_base_url
    from conveyor.storage.local import LocalStore
    from conveyor.storage.minio import MinioStore
    from conveyor.storage.objstore import ObstoreStore
    from conveyor.storage.onedata import OnedataStore
    from conveyor.storage.s3 import S3Store
    from conveyor.storage.webdav import WebDavStore

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "PART_SUFFIX",
    "HttpStore",
    "LocalStore",
    "MinioStore",
    "ObjectStore",
    "ObstoreStore",
    "OnedataStore",
    "S3Store",
    "TransferOptions",
    "WebDavStore",
    "Written",
    "guess_content_type",
    "http_base_url",
    "is_not_found",
    "is_permanent",
    "is_taken",
    "open_store",
    "transfer_options",
]

_LAZY = {  # re-exported name -> the module defining it
    "S3Store": "s3",
    "MinioStore": "minio",
    "ObstoreStore": "objstore",
    "LocalStore": "local",
    "HttpStore": "http",
    "http_base_url": "http",
    "WebDavStore": "webdav",
    "OnedataStore": "onedata",
}


@runtime_checkable
class ObjectStore(Protocol):
    provider: StorageProvider

    def download(self, bucket: str, key: str, dest: Path) -> int:
        """Stream the object into `dest` (created/overwritten). Returns bytes written."""

    def upload(self, src: Path, bucket: str, key: str, content_type: str | None = None) -> int:
        """Stream `src` to bucket/key (multipart when large), with a Content-Type. Returns bytes sent."""

    def put_file(
        self, file: BinaryIO, bucket: str, key: str, content_type: str | None = None, *, create_only: bool = False
    ) -> Written:
        """Stream an open regular file, from its start, to bucket/key (multipart when large; a failed
        multipart upload is aborted). `create_only`: fail with a StorageError that `is_taken` tells
        apart when an object already has the key (atomic in the S3 store, checked just before in
        the others)."""

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        """Small in-memory write (result records)."""

    def version(self, bucket: str, key: str) -> str | None:
        """The object's version token (its ETag, or a stand-in where the store has none), None when absent."""

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist (local runs and tests)."""

    def delete(self, bucket: str, key: str, if_match: str | None = None) -> bool:
        """Remove the object (no error when it is already gone). `if_match`: only when its version
        token is that one; False (and nothing removed) when another version is there."""

    def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists (False for a missing key or bucket)."""

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix`, sorted."""


def open_store(provider: StorageProvider, options: TransferOptions | None = None, **overrides: Any) -> ObjectStore:
    """Build the store for a provider (s3 and minio -> obstore, or with `engine="sdk"` boto3 and
    the minio SDK; local -> folder, webdav -> WebDAV over requests, onedata -> Onedata CDMI over
    requests).

    `overrides` are TransferOptions fields, e.g. `open_store(p, max_attempts=1, connect_timeout=0.5)`.
    """
    options = replace(options or TransferOptions(), **overrides)
    kind = provider.ref.type
    if options.engine not in ENGINES:
        raise ConfigError(
            f"transfer engine '{options.engine}' is not one of {', '.join(ENGINES)}", key="conveyor.transfer_engine"
        )
    if kind in ("s3", "minio") and options.engine == "obstore":
        from conveyor.storage.objstore import ObstoreStore

        return ObstoreStore(provider, options)
    if kind == "s3":
        from conveyor.storage.s3 import S3Store

        return S3Store(provider, options)
    if kind == "minio":
        from conveyor.storage.minio import MinioStore

        return MinioStore(provider, options)
    if kind == "local":
        from conveyor.storage.local import LocalStore

        return LocalStore(provider, options)
    if kind == "webdav":
        from conveyor.storage.webdav import WebDavStore

        return WebDavStore(provider, options)
    if kind == "onedata":
        from conveyor.storage.onedata import OnedataStore

        return OnedataStore(provider, options)
    if kind == "rucio":
        raise ConfigError(
            f"rucio storage is not available in this build (storage provider '{provider.ref}'): Conveyor "
            "cannot fetch Rucio data sets nor upload to Rucio",
            key=f"storage_providers.rucio.{provider.ref.id}",
        )
    raise ConfigError(
        f"storage provider '{provider.ref}' has type '{kind}', which Conveyor cannot read or write "
        "(supported: s3, minio, webdav, onedata, local)",
        key=f"storage_providers.{kind}",
    )


def __getattr__(name: str) -> Any:
    """The stores re-exported here (`from conveyor.storage import S3Store`), imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
