"""What the gateway needs of a store beyond the ObjectStore protocol: read a small object into
memory (a result record), and list keys after a given key (the uploads newer than those known).

S3Store and MinioStore answer with their SDK's own calls (one GET, one LIST from a key); any other
store through the protocol (a download to a temporary file; a full listing, filtered). Errors are
the store's own StorageError in both cases.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from conveyor.errors import StorageError
from conveyor.storage import ObjectStore, is_not_found


def _kind(store: ObjectStore) -> str:
    return type(store).__name__


def read_bytes(store: ObjectStore, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None when it does not exist."""
    errors: Any = getattr(store, "_errors", None)
    client: Any = getattr(store, "client", None)
    try:
        if _kind(store) == "S3Store" and errors is not None:
            with errors("get", bucket, key):
                return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        if _kind(store) == "MinioStore" and errors is not None:
            with errors("get", bucket, key):
                response = client.get_object(bucket, key)
                try:
                    return bytes(response.read())
                finally:
                    response.close()
                    response.release_conn()
        with tempfile.TemporaryDirectory(prefix="conveyor-gateway-") as folder:
            dest = Path(folder) / "object"
            store.download(bucket, key, dest)
            return dest.read_bytes()
    except StorageError as exc:
        if is_not_found(exc):
            return None
        raise


def list_after(store: ObjectStore, bucket: str, prefix: str, after: str = "") -> list[str]:
    """Every key under `prefix` that sorts after `after` (all of them when empty), sorted."""
    errors: Any = getattr(store, "_errors", None)
    client: Any = getattr(store, "client", None)
    if _kind(store) == "S3Store" and errors is not None and after:
        with errors("list", bucket, prefix or None):
            paginator = client.get_paginator("list_objects_v2")
            keys: list[str] = []
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, StartAfter=after):
                keys.extend(item["Key"] for item in page.get("Contents", ()))
            return sorted(keys)
    if _kind(store) == "MinioStore" and errors is not None and after:
        with errors("list", bucket, prefix or None):
            objects = client.list_objects(bucket, prefix=prefix or None, recursive=True, start_after=after)
            return sorted(obj.object_name for obj in objects if obj.object_name is not None)
    return [key for key in store.list_keys(bucket, prefix) if key > after]


def object_size(store: ObjectStore, bucket: str, key: str) -> int | None:
    """The object's size in bytes; None when it does not exist or the store cannot tell cheaply."""
    errors: Any = getattr(store, "_errors", None)
    client: Any = getattr(store, "client", None)
    try:
        if _kind(store) == "S3Store" and errors is not None:
            with errors("stat", bucket, key):
                return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        if _kind(store) == "MinioStore" and errors is not None:
            with errors("stat", bucket, key):
                return int(client.stat_object(bucket, key).size or 0)
    except StorageError as exc:
        if is_not_found(exc):
            return None
        raise
    return None
