"""The MinIO store (minio SDK): a MinIO, or any S3-compatible, server at `provider.endpoint`."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from conveyor.config import MINIO_DEFAULT_ENDPOINT, StorageProvider
from conveyor.errors import CredentialsError, StorageError
from conveyor.storage.base import (
    CREDENTIAL_CODES,
    NOT_FOUND_CODES,
    PRECONDITION_FAILED,
    BaseStore,
    MiB,
    TransferOptions,
    Written,
    endpoint_parts,
    file_size,
    guess_content_type,
    is_not_found,
    staging_file,
)

MINIO_PART = 5 * MiB  # the smallest part S3 allows
MAX_PARTS = 10_000  # the most parts S3 allows in one upload


class MinioStore(BaseStore):
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
        parts = endpoint_parts(endpoint, provider)
        self.endpoint = endpoint
        secure = parts.scheme == "https"
        retry = urllib3.Retry(
            total=max(0, options.max_attempts - 1),
            backoff_factor=options.backoff_factor,
            backoff_max=options.backoff_max,
            status_forcelist=(500, 502, 503, 504),
            raise_on_status=False,  # the last 5xx reaches the SDK, which reads the S3 error in it
        )
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=options.connect_timeout, read=options.read_timeout),
            maxsize=max(10, options.max_concurrency * 2),
            retries=retry,
            cert_reqs="CERT_REQUIRED" if provider.verify else "CERT_NONE",
            ca_certs=options.ca_bundle or certifi.where(),
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
            status = getattr(exc.response, "status", None)
            if exc.code in NOT_FOUND_CODES:
                what = "bucket" if exc.code == "NoSuchBucket" else "object"
                self._raise(operation, bucket, key, f"{what} not found ({detail})", cause=exc.code, status=status)
            if exc.code in CREDENTIAL_CODES:
                refused = f"credentials refused ({detail})"
                self._raise(operation, bucket, key, refused, credentials=True, cause=exc.code, status=status)
            self._raise(operation, bucket, key, detail, cause=exc.code, status=status)
        except ServerError as exc:
            failed = f"server error: {exc} (HTTP {exc.status_code})"
            self._raise(operation, bucket, key, failed, cause="ServerError", status=exc.status_code)
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
        with self._errors("download", bucket, key), staging_file(Path(dest)) as tmp:
            sdk_tmp = tmp.with_name(tmp.name + ".minio")  # the SDK streams here, then renames over tmp
            try:
                self.client.fget_object(bucket, key, str(tmp), tmp_file_path=str(sdk_tmp))
            finally:
                with suppress(FileNotFoundError):
                    sdk_tmp.unlink()
            return tmp.stat().st_size

    def upload(self, src: Path, bucket: str, key: str, content_type: str | None = None) -> int:
        with self._errors("upload", bucket, key), open(src, "rb") as file:
            return self.put_file(file, bucket, key, content_type).size

    def put_file(
        self, file: BinaryIO, bucket: str, key: str, content_type: str | None = None, *, create_only: bool = False
    ) -> Written:
        """The SDK sends no If-None-Match: `create_only` is checked with a stat just before. The SDK
        aborts a multipart upload that fails."""
        with self._errors("upload", bucket, key):
            if create_only and self.version(bucket, key) is not None:
                self._raise("upload", bucket, key, "an object already has this key (create-only write)",
                            cause=PRECONDITION_FAILED, status=412)
            size = file_size(file)
            file.seek(0)
            # The minio SDK holds every part it sends as bytes (several, with parallel uploads), so
            # memory is bounded by small parts sent one at a time: the smallest S3 allows (5 MiB),
            # or larger only when 10,000 of those would not cover the object. Measured (bench):
            # a 1 GiB upload then peaks 9 MiB above a 1 MiB one, and is no slower on loopback.
            part_size = max(MINIO_PART, -(-size // MAX_PARTS))
            answer = self.client.put_object(
                bucket,
                key,
                file,
                size,
                content_type=content_type or guess_content_type(key),
                part_size=part_size,
                num_parallel_uploads=1,
            )
            return Written(size, answer.etag)

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        with self._errors("put", bucket, key):
            self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def delete(self, bucket: str, key: str, if_match: str | None = None) -> bool:
        """The SDK sends no If-Match: `if_match` is compared with a stat just before."""
        if if_match is not None and self.version(bucket, key) not in (if_match, None):
            return False
        try:
            with self._errors("delete", bucket, key):
                self.client.remove_object(bucket, key)
        except StorageError as exc:
            if not is_not_found(exc):  # no such bucket: the object is not there either
                raise
        return True

    def version(self, bucket: str, key: str) -> str | None:
        from minio.error import S3Error

        with self._errors("stat", bucket, key):
            try:
                return self.client.stat_object(bucket, key).etag or "-"
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"):
                    return None
                raise

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
