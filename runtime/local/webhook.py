"""SeaweedFS filer notifications -> the MinIO event OSCAR would deliver, and the HTTP receiver for them.

SeaweedFS (`weed server`, 4.x) reads `notification.toml` from its working directory; with a
`[notification.webhook]` section its filer POSTs one JSON document per metadata change. Keys used
here (all listed by `weed scaffold -config=notification`): `enabled`, `endpoint`, `bearer_token`
(sent as `Authorization: Bearer <token>`), `event_types` (create | update | delete | rename),
`path_prefixes`, `timeout_seconds`, `max_retries`, `backoff_seconds`, `workers`, `buffer_size`.

What a POST carries (observed with weed 4.48; `Content-Type: application/json`, one event each):

    {"event_type": "create",                          # or "update" (an overwrite, or metadata only)
     "key": "/buckets/<bucket>/<key>",                 # the filer path: S3 key as is, not URL-encoded
     "message": {"new_entry": {"name": "<last segment>",
                               "is_directory": true,   # only when true (bucket, "folder/" marker)
                               "chunks": [{"size", "e_tag", "fid": {"volume_id", "file_key", "cookie"}}],
                               "attributes": {"file_size", "mtime", "mtime_ns", "mime",
                                              "md5": "<base64 of the raw md5>", "inode", ...},
                               "extended": {"Seaweed-X-Amz-ETag": "<base64 of the S3 ETag>",
                                            "Seaweed-X-Amz-Owner": "<base64 of the identity name>"}},
                 "old_entry": {...},                   # update and delete
                 "new_parent_path": "/buckets/<bucket>"}}

- A PUT and a CopyObject give one `create`; overwriting a key gives an `update` whose chunks
  differ; tagging an object gives an `update` with the same chunks (not a new object).
- A multipart upload gives `create` events for `/buckets/<b>/.uploads/<id>/NNNN_<uuid>.part`
  and a directory, then one `create` for the final key (no md5; the S3 ETag "<hex>-<parts>").
- Empty objects have no chunks and no file_size; a "folder/" marker is a directory entry.
- The event usually reaches the receiver before the S3 PUT has returned to the uploader (the filer
  notifies when it writes the entry), a few milliseconds after the data is readable.

`object_change(payload, bucket)` keeps exactly the events a MinIO bucket notification for
`s3:ObjectCreated:*` on `bucket` would produce; `minio_event()` writes that notification the way
MinIO does (key `url.QueryEscape`d, top-level `Key` = bucket + "/" + unescaped key, eventTime in
AMZ format, sequencer = hex of the object's mtime in ns); `oscar_event()` wraps it as OSCAR
hands it to a job: {"storage_provider": "minio.default", "event": "<the JSON as a string>"}.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import mimetypes
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote_plus

log = logging.getLogger(__name__)

BUCKETS_ROOT = "/buckets/"
MULTIPART_DIR = ".uploads"
MAX_BODY = 16 * 1024 * 1024  # a filer event lists the chunks: large files make long events


def notification_toml(endpoint: str, token: str, bucket: str) -> str:
    """The `notification.toml` that makes weed POST every new object of `bucket` to `endpoint`."""
    return "\n".join(
        [
            "# Written by `conveyor local`: the filer POSTs each new object in the input bucket here.",
            "[notification.webhook]",
            "enabled = true",
            f"endpoint = {json.dumps(endpoint)}",
            f"bearer_token = {json.dumps(token)}",
            'event_types = ["create", "update"]',
            f"path_prefixes = [{json.dumps(BUCKETS_ROOT + bucket + '/')}]",
            "timeout_seconds = 10",
            "max_retries = 3",
            "backoff_seconds = 1",
            "max_backoff_seconds = 5",
            "workers = 1",  # one POST at a time (weed default: 5): no reordering by parallel senders
            "",
        ]
    )


@dataclass(frozen=True)
class ObjectChange:
    """A new object (or new content under an existing key) in a watched bucket."""

    bucket: str
    key: str
    size: int
    etag: str | None
    content_type: str | None
    mtime_ns: int | None
    owner: str | None
    multipart: bool
    identity: str  # what tells two writes of the same key apart (for de-duplication)


def object_change(payload: Any, bucket: str) -> ObjectChange | None:
    """The object a filer event creates in `bucket`, or None when MinIO would not notify.

    Ignored: other buckets and paths, directories (buckets, "folder/" markers), multipart parts,
    deletes and renames, updates that leave the content as it was (tags, metadata).
    """
    if not isinstance(payload, Mapping):
        return None
    event_type = payload.get("event_type")
    path = payload.get("key")
    message = payload.get("message")
    if event_type not in ("create", "update") or not isinstance(path, str) or not isinstance(message, Mapping):
        return None
    prefix = f"{BUCKETS_ROOT}{bucket}/"
    if not path.startswith(prefix):
        return None
    key = path[len(prefix) :]
    if not key or key.split("/", 1)[0] == MULTIPART_DIR:
        return None
    entry = message.get("new_entry")
    if not isinstance(entry, Mapping) or entry.get("is_directory"):
        return None
    if event_type == "update" and _content(entry) == _content(message.get("old_entry")):
        return None
    attributes = _mapping(entry.get("attributes"))
    extended = _mapping(entry.get("extended"))
    etag = _b64_text(extended.get("Seaweed-X-Amz-ETag")) or _md5_hex(attributes.get("md5"))
    size = attributes.get("file_size")
    mtime_ns = _mtime_ns(attributes)
    return ObjectChange(
        bucket=bucket,
        key=key,
        size=size if isinstance(size, int) and size >= 0 else 0,
        etag=etag.strip('"') if etag else None,
        content_type=attributes.get("mime") if isinstance(attributes.get("mime"), str) else None,
        mtime_ns=mtime_ns,
        owner=_b64_text(extended.get("Seaweed-X-Amz-Owner")),
        multipart=bool(etag and "-" in etag),
        identity=json.dumps([key, _content(entry), mtime_ns], sort_keys=True, default=str),
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _content(entry: Any) -> Any:
    """What identifies an entry's bytes: its chunks' file ids and the size (and inode for empty files)."""
    if not isinstance(entry, Mapping):
        return None
    chunks = entry.get("chunks")
    chunks = chunks if isinstance(chunks, list) else []
    ids = [
        [c.get("fid") or c.get("file_id"), c.get("offset", 0), c.get("size")] for c in chunks if isinstance(c, Mapping)
    ]
    attributes = _mapping(entry.get("attributes"))
    if ids:
        return [ids, attributes.get("file_size")]
    return [attributes.get("inode"), attributes.get("mtime"), attributes.get("mtime_ns"), attributes.get("md5")]


def _mtime_ns(attributes: Mapping[str, Any]) -> int | None:
    seconds = attributes.get("mtime")
    if not isinstance(seconds, int):
        return None
    extra = attributes.get("mtime_ns")
    return seconds * 1_000_000_000 + (extra if isinstance(extra, int) and 0 <= extra < 1_000_000_000 else 0)


def _b64_text(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, ValueError):
        return None


def _md5_hex(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


def minio_event(change: ObjectChange, *, endpoint: str, principal: str, now: datetime | None = None) -> dict[str, Any]:
    """The MinIO bucket notification for `change`, as MinIO's webhook target would POST it."""
    when = now or datetime.now(UTC)
    if change.mtime_ns is not None:
        when = datetime.fromtimestamp(change.mtime_ns / 1e9, UTC)
    name = "s3:ObjectCreated:CompleteMultipartUpload" if change.multipart else "s3:ObjectCreated:Put"
    content_type = change.content_type or mimetypes.guess_type(change.key)[0] or "application/octet-stream"
    sequencer = format(change.mtime_ns if change.mtime_ns is not None else int(when.timestamp() * 1e9), "X")
    obj: dict[str, Any] = {
        "key": quote_plus(change.key, safe=""),  # Go's url.QueryEscape: "/" -> %2F, " " -> +
        "size": change.size,
        "contentType": content_type,
        "userMetadata": {"content-type": content_type},
        "sequencer": sequencer,
    }
    if change.etag:
        obj["eTag"] = change.etag
    params = {"principalId": principal, "region": "", "sourceIPAddress": "127.0.0.1"}
    return {
        "EventName": name,
        "Key": f"{change.bucket}/{change.key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
                "eventName": name,
                "userIdentity": {"principalId": principal},
                "requestParameters": params,
                "responseElements": {
                    "x-amz-request-id": sequencer,
                    "x-minio-deployment-id": "conveyor-local",
                    "x-minio-origin-endpoint": endpoint,
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {
                        "name": change.bucket,
                        "ownerIdentity": {"principalId": principal},
                        "arn": f"arn:aws:s3:::{change.bucket}",
                    },
                    "object": obj,
                },
                "source": {"host": "127.0.0.1", "port": "", "userAgent": "SeaweedFS (conveyor local)"},
            }
        ],
    }


def oscar_event(event: Mapping[str, Any], provider: str = "minio.default") -> dict[str, Any]:
    """The event as OSCAR passes it to a job: the storage provider, and the MinIO JSON as a string."""
    return {"storage_provider": provider, "event": json.dumps(event, ensure_ascii=False)}


class WebhookReceiver:
    """A small HTTP server on 127.0.0.1 that hands each authenticated JSON POST to `on_event`.

    It answers 204 at once (the work is queued by `on_event`), 401 without the bearer token,
    400 for a body that is not JSON; weed retries only on errors. `on_event` runs on the
    request's thread and must not block.
    """

    def __init__(self, on_event: Callable[[Any], None], token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.on_event = on_event
        self.token = token
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("webhook: " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}/seaweedfs"

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="webhook", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        expected = f"Bearer {self.token}"
        given = request.headers.get("Authorization", "")
        length = request.headers.get("Content-Length", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            _reply(request, 401)
            return
        if not length.isdigit() or int(length) > MAX_BODY:
            _reply(request, 413 if length.isdigit() else 411)
            return
        body = request.rfile.read(int(length))
        try:
            payload = json.loads(body)
        except ValueError:
            _reply(request, 400)
            return
        try:
            self.on_event(payload)
        except Exception:  # a bug of ours must not make weed retry the same event forever
            log.exception("webhook: could not handle a filer event")
        _reply(request, 204)


def _reply(request: BaseHTTPRequestHandler, code: int) -> None:
    request.send_response(code)
    request.send_header("Content-Length", "0")
    request.end_headers()
