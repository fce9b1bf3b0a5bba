"""The ObjectStore seam and its S3 (boto3), MinIO (minio SDK) and local-folder implementations.

Every transfer streams between a local file and the store: memory does not grow with object
size. Transient failures are retried a bounded number of times with backoff; what is left
is raised as StorageError (CredentialsError for missing/refused credentials) naming the
provider, bucket and key.

IMPLEMENTATION PENDING (helper "storage").
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from runtime.config import StorageProvider


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


def open_store(provider: StorageProvider) -> ObjectStore:  # pragma: no cover - pending
    """Build the store for a provider (s3 -> boto3, minio -> minio SDK, local -> folder)."""
    raise NotImplementedError
