"""The local-folder store: a folder standing for the buckets (developer runs, tests)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import BinaryIO

from conveyor.config import StorageProvider
from conveyor.errors import ConfigError
from conveyor.storage.base import (
    PART_SUFFIX,
    PRECONDITION_FAILED,
    BaseStore,
    MiB,
    TransferOptions,
    Written,
    staging_file,
)


class LocalStore(BaseStore):
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
        with self._local_file_errors("download", bucket, key), staging_file(Path(dest)) as tmp:
            with open(path, "rb") as source, open(tmp, "wb") as target:
                shutil.copyfileobj(source, target, MiB)
            return tmp.stat().st_size

    def upload(self, src: Path, bucket: str, key: str, content_type: str | None = None) -> int:
        with self._local_file_errors("upload", bucket, key), open(src, "rb") as source:
            return self.put_file(source, bucket, key, content_type).size

    def put_file(
        self, file: BinaryIO, bucket: str, key: str, content_type: str | None = None, *, create_only: bool = False
    ) -> Written:
        path = self._path("upload", bucket, key)
        self._require_bucket("upload", bucket, key)
        if create_only and path.exists():
            self._raise("upload", bucket, key, "a file already has this key (create-only write)",
                        cause=PRECONDITION_FAILED, status=412)
        with self._local_file_errors("upload", bucket, key):
            file.seek(0)
            with staging_file(path) as tmp, open(tmp, "wb") as target:
                shutil.copyfileobj(file, target, MiB)
            return Written(path.stat().st_size, self.version(bucket, key))

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        path = self._path("put", bucket, key)
        self._require_bucket("put", bucket, key)
        with self._local_file_errors("put", bucket, key), staging_file(path) as tmp:
            tmp.write_bytes(data)

    def ensure_bucket(self, bucket: str) -> None:
        base = self._bucket_dir("create bucket", bucket)
        with self._local_file_errors("create bucket", bucket, None):
            base.mkdir(parents=True, exist_ok=True)

    def delete(self, bucket: str, key: str, if_match: str | None = None) -> bool:
        path = self._path("delete", bucket, key)
        if if_match is not None and self.version(bucket, key) not in (if_match, None):
            return False
        with self._local_file_errors("delete", bucket, key):
            path.unlink(missing_ok=True)
        return True

    def version(self, bucket: str, key: str) -> str | None:
        """A stand-in for an ETag: inode, size and modification time (every write is a new file)."""
        try:
            st = self._path("stat", bucket, key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"

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
