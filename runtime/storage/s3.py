"""The S3 store (boto3): Amazon S3, or any S3-compatible server at `provider.endpoint`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conveyor.config import StorageProvider
from conveyor.errors import CredentialsError, StorageError
from conveyor.storage.base import (
    CREDENTIAL_CODES,
    NOT_FOUND_CODES,
    BaseStore,
    TransferOptions,
    guess_content_type,
    is_not_found,
    staging_file,
)


class S3Store(BaseStore):
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
                    reason = f"{what.get(code, 'object')} not found ({detail})"
                    self._raise(operation, bucket, key, reason, cause=code, status=status)
                if code in CREDENTIAL_CODES:
                    reason = f"credentials refused ({detail})"
                    self._raise(operation, bucket, key, reason, credentials=True, cause=code, status=status)
                self._raise(operation, bucket, key, f"{detail} (HTTP {status})", cause=code, status=status)
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
        with self._errors("download", bucket, key), staging_file(Path(dest)) as tmp:
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
        try:
            with self._errors("delete", bucket, key):
                self.client.delete_object(Bucket=bucket, Key=key)  # S3 answers 204 for a missing key too
        except StorageError as exc:
            if not is_not_found(exc):  # no such bucket: the object is not there either
                raise

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
