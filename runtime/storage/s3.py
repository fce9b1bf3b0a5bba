"""The S3 store (boto3): Amazon S3, or any S3-compatible server at `provider.endpoint`.

Uploads of open files (`put_file`) go through the client itself rather than boto3's transfer
manager: the manager accepts neither `If-None-Match` (create-only writes) nor a caller's
cancellation, and its worker threads, not daemons, keep a process alive while a stalled store
holds them. Large files go up in parts, `max_concurrency` at a time (memory: one part each), and
a multipart upload that does not complete is aborted, so no parts are left on the server (a
process killed with SIGKILL cannot abort: a bucket lifecycle rule `AbortIncompleteMultipartUpload`
clears those).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from conveyor.config import StorageProvider
from conveyor.errors import CredentialsError, StorageError
from conveyor.storage.base import (
    CREDENTIAL_CODES,
    NOT_FOUND_CODES,
    BaseStore,
    TransferOptions,
    Written,
    file_size,
    guess_content_type,
    is_not_found,
    is_taken,
    staging_file,
)

log = logging.getLogger(__name__)
MAX_PARTS = 10_000  # the most parts S3 allows in one upload


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
        with self._errors("upload", bucket, key), open(src, "rb") as file:
            return self.put_file(file, bucket, key, content_type).size

    def put_file(
        self, file: BinaryIO, bucket: str, key: str, content_type: str | None = None, *, create_only: bool = False
    ) -> Written:
        with self._errors("upload", bucket, key):
            size = file_size(file)
            file.seek(0)
            extra: dict[str, Any] = {"ContentType": content_type or guess_content_type(key)}
            condition = {"IfNoneMatch": "*"} if create_only else {}
            if size <= self.options.multipart_threshold:
                answer = self.client.put_object(
                    Bucket=bucket, Key=key, Body=file, ContentLength=size, **extra, **condition
                )
            else:
                answer = self._put_parts(file, size, bucket, key, extra, condition)
            return Written(size, answer.get("ETag"))

    def _put_parts(
        self, file: BinaryIO, size: int, bucket: str, key: str, extra: dict[str, Any], condition: dict[str, str]
    ) -> Any:
        """A multipart upload, `max_concurrency` parts in flight (daemon threads: a stalled store
        cannot keep the process alive); aborted when it does not complete. Each part is streamed from
        the file (a _Part view of its range, read as botocore sends): memory does not grow with the part
        size (4 parts of 16 MiB read whole held about 130 MiB in botocore with their copies)."""
        part_size = max(self.options.part_size, -(-size // MAX_PARTS))
        count = -(-size // part_size)
        upload_id = self.client.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
        try:
            etags: dict[int, str] = {}
            failures: list[BaseException] = []
            numbers = iter(range(1, count + 1))
            lock = threading.Lock()  # one reader of the shared file's position at a time

            def send() -> None:
                while not failures:
                    with lock:
                        number = next(numbers, None)
                    if number is None:
                        return
                    start = (number - 1) * part_size
                    length = min(part_size, size - start)
                    try:
                        answer = self.client.upload_part(
                            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                            Body=_Part(file, lock, start, length), ContentLength=length,
                        )
                    except BaseException as exc:
                        failures.append(exc)
                        return
                    etags[number] = answer["ETag"]

            senders = [threading.Thread(target=send, name=f"conveyor-part-{n}", daemon=True)
                       for n in range(min(max(1, self.options.max_concurrency), count))]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            if failures:
                raise failures[0]
            parts = [{"PartNumber": number, "ETag": etags[number]} for number in range(1, count + 1)]
            return self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition
            )
        except BaseException:
            self._abort(bucket, key, upload_id)
            raise

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            with self._errors("abort upload", bucket, key):
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except StorageError as exc:
            if exc.context.get("cause") != "NoSuchUpload":  # nothing is left of it
                log.warning("could not abort the incomplete upload of %s/%s: %s", bucket, key, exc.message)

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        with self._errors("put", bucket, key):
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)

    def delete(self, bucket: str, key: str, if_match: str | None = None) -> bool:
        condition = {"IfMatch": if_match} if if_match else {}
        try:
            with self._errors("delete", bucket, key):
                self.client.delete_object(Bucket=bucket, Key=key, **condition)  # 204 for a missing key too
        except StorageError as exc:
            if if_match and is_taken(exc):  # another version is there: not ours to remove
                return False
            if not is_not_found(exc):  # no such bucket: the object is not there either
                raise
        return True

    def version(self, bucket: str, key: str) -> str | None:
        from botocore.exceptions import ClientError

        with self._errors("stat", bucket, key):
            try:
                return str(self.client.head_object(Bucket=bucket, Key=key).get("ETag") or "-")
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NotFound", "NoSuchKey", "NoSuchBucket"):
                    return None
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


class _Part(io.RawIOBase):
    """A read-only view of `length` bytes of a shared file from `start`, for one part's request
    body: each read seeks the file under `lock` and reads through the file's own read() (so a
    wrapper that refuses reads, as publish's cancellable file does, still stops the upload);
    seekable, as botocore rewinds a body it signs, checksums or sends again."""

    def __init__(self, file: BinaryIO, lock: threading.Lock, start: int, length: int) -> None:
        super().__init__()
        self._file, self._lock, self._start, self._length, self._pos = file, lock, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._length - self._pos)
        if want <= 0:
            return 0
        with self._lock:
            self._file.seek(self._start + self._pos)
            data = self._file.read(want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def __len__(self) -> int:
        return self._length
