"""Raw event -> typed inputs, for every shape in the platform contract (section 2).

`parse_event(raw)` returns one input per record: an `ObjectRef` for a storage object, an
`InlineInput` for a payload that is itself the input file. `load_event(raw)` returns the
whole `Event`, with SCAR's extras (script, cmd_args) and the HTTP details of API Gateway.
`refs_to_json(inputs)` is what `conveyor parse-event` prints.

Shapes understood (every record of every one, envelopes unwrapped recursively):

    S3 notification        Records[].eventSource == "aws:s3"; key decoded with unquote_plus
    MinIO notification     Records[].eventSource == "minio:s3"; same layout, plus the origin endpoint
                           and the uploading user (requestParameters / userIdentity principalId)
    OSCAR delegated        {"storage_provider": "minio.default" | "default", "event": <str | object>}
    SQS                    Records[].eventSource == "aws:sqs", body = a JSON storage event
    SNS                    Records[].EventSource == "aws:sns", Sns.Message = a JSON storage event;
                           also the bare SNS notification ({"Type": "Notification", "Message": ...})
                           that SQS receives from SNS without raw message delivery
    EventBridge            source == "aws.s3", detail.bucket.name / detail.object.key; the key is
                           taken as written (the AWS documentation describes EventBridge keys as
                           plain, unlike notification records, so it is NOT unquote_plus-decoded)
    S3 test event          {"Event": "s3:TestEvent"}: a storage event without inputs
    dCache (via DCNiOS)    {"event": {"name", "mask": [...]}, "subscription": <url>}: the file `name` in the
                           folder the definition's webdav input watches (webdav.dcache, as faas-supervisor
                           reads it): `bind_inputs` completes bucket and key from that input's path.
                           Events on folders (IN_ISDIR) and removals (IN_DELETE, IN_MOVED_FROM ...) name
                           no file to fetch: no input
    Rucio                  {"event_type": "close", "payload": {"scope", "name", ...}, "created_at"} (what
                           Rucio's messaging sends), or Records[].eventSource == "rucio" with the payload
                           in the record or at the top: bucket = scope, key = name (the DID), provider
                           type rucio (rucio.rucio unless the definition's input names another)
    Onedata OneTrigger     {"Key": "/<space>/<folder>/<file>", "Records": [{"objectKey", "objectId",
                           "eventTime", "eventSource": "OneTrigger"}]}: bucket = the first folder in the
                           space, key = the rest; the onedata provider is the one whose `space` the Key
                           names (`bind_inputs`, as faas-supervisor picks it)
    API Gateway v1 / v2    httpMethod, or version "2.0" + requestContext.http.method (also Lambda
    and Function URLs      Function URLs): kind "http"; a body holding a storage event yields its
                           refs, any other body becomes one InlineInput
    anything else          kind "inline": the payload is the input file

Decisions where the contract is silent:

- Event kinds. "storage": refs to download (possibly none, e.g. s3:TestEvent: nothing to do).
  "http": an API Gateway / Function URL request; the caller waits for the response. "inline":
  the payload is the input (one InlineInput) or, when the payload is empty, `{}`, or only SCAR
  extras (`{"script": ...}`, `{"cmd_args": ...}`), there is no input at all and the script is
  meant to run once without one.
- SCAR extras (`script`, `cmd_args`) are read from the top level of any JSON object, whatever
  its shape. When they sit beside an unknown JSON payload the payload is kept unchanged (extras
  included) as the inline input.
- A JSON list is a batch only when it is non-empty and every element is a storage event
  (S3/MinIO/SQS/SNS/EventBridge/OSCAR delegated/test): the inputs are concatenated in order and
  `storage_provider` is the first delegated element's. Any other list is an inline JSON input
  (a sync request may well post a JSON array to a model).
- Inline payloads: a payload that is entirely strict base64 text (whitespace ignored) and is not
  JSON is decoded first (OSCAR sync and the SCAR client send base64). The same applies to an
  API Gateway body once `isBase64Encoded` has been honoured. A short plain word that happens to
  be valid base64 ("test") is therefore decoded too: send text as JSON to avoid that.
- A malformed event is refused, not taken for an inline payload: a body whose first character
  (after a BOM and blanks) is `{` or `[` but that is not UTF-8 JSON (truncated, a stray invalid
  byte) and not base64 either raises EventError (exit 65), so nothing is processed. Binary files,
  base64 text, plain text and JSON that is no storage event stay inline payloads.
- Inline file names are "input" + an extension: magic bytes first (png, jpg, gif, bmp, tiff,
  webp, wav, mp3, flac, ogg, mp4, heic, avif, zip, gz, pdf), then the request's Content-Type
  when it names a specific type, then .json (JSON text), .txt (UTF-8 text without NUL), .bin.
- ObjectRef.provider is set only when the event names a provider (OSCAR delegated events). A
  bare id is qualified with the type of the record's source (minio:s3 -> "minio.<id>", aws:s3 and
  aws.s3 -> "s3.<id>"); a value with a "." is kept as written. Plain events leave it None: the
  caller applies the contract's "default provider of its type" rule.
- Strictness. Anything that would make the worker fetch the wrong object is refused with an
  EventError naming the record (e.g. "Records[2]: missing s3.object.key"): a missing/empty bucket
  or key, a bucket containing "/" or NUL, a key containing NUL, invalid percent-encoding (no
  silent U+FFFD), a size that is not a whole number ("123" is accepted), an unknown eventSource,
  an envelope that does not hold a storage event, JSON nested too deeply to parse. Keys such as
  "../x" or "/etc/passwd" are valid S3 keys and are returned faithfully: path safety belongs to
  the code that writes files.
- Optional fields that are absent, null or "" become None (SCAR's synthetic events carry only
  bucket and key; MinIO sometimes sends eventTime "").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import unquote_plus

from conveyor.errors import ConfigError, EventError, OutsideInputsError
from conveyor.media import extension_for, sniff

if TYPE_CHECKING:
    from conveyor.config import FunctionConfig


@dataclass(frozen=True)
class ObjectRef:
    """One object in a bucket that an event points at. `key` is decoded (no %xx, no '+')."""

    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    event_time: str | None = None
    user: str | None = None
    provider: str | None = None  # "minio.default", "s3.default", "minio" ... as the event names it; None if unknown
    source: str = "aws:s3"  # aws:s3 | minio:s3 | aws.s3 (EventBridge): see SOURCE_PROVIDER_TYPES
    endpoint: str | None = None  # x-minio-origin-endpoint when present
    record: Any = None  # the raw record this ref came from (for EVENT / debugging)
    event_name: str | None = None  # "ObjectCreated:Put", "s3:ObjectCreated:Put", "Object Created" ...
    space: str | None = None  # OneTrigger: the Onedata space the Key names (bucket/key are inside it)

    inline = False

    @property
    def storage_object_key(self) -> str:
        """STORAGE_OBJECT_KEY as faas-supervisor sets it: the key, or a OneTrigger event's whole Key."""
        if self.source == ONETRIGGER and self.space is not None:
            return f"/{self.space}/{self.bucket}/{self.key}"
        return self.key

    def to_dict(self) -> dict[str, Any]:
        out = {
            "bucket": self.bucket or None,  # None: a dCache event not yet bound to its input folder
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "version_id": self.version_id,
            "event_time": self.event_time,
            "user": self.user,
            "provider": self.provider,
            "source": self.source,
            "endpoint": self.endpoint,
            "event_name": self.event_name,
            "inline": False,
        }
        if self.source in ADDED_SOURCES:  # the shapes OSCAR added since faas-supervisor 1.5.8
            out["provider_type"] = provider_type(self.source)
            if self.space is not None:
                out["space"] = self.space
        return out


@dataclass(frozen=True)
class InlineInput:
    """A payload that is the input file itself (OSCAR sync, API Gateway binary body, ...)."""

    data: bytes = field(repr=False)
    file_name: str  # safe base name, with an extension inferred from the content when possible
    content_type: str | None = None

    inline = True

    @property
    def size(self) -> int:
        return len(self.data)

    def to_dict(self) -> dict[str, Any]:
        return {"inline": True, "file_name": self.file_name, "size": self.size, "content_type": self.content_type}


Input = Union[ObjectRef, InlineInput]


@dataclass(frozen=True)
class Event:
    """A whole event: its inputs plus what rides along with them."""

    inputs: tuple[Input, ...]
    raw: Any  # the decoded JSON (dict/list) or the raw bytes for a non-JSON payload
    kind: str  # "storage" | "http" | "inline"
    script: bytes | None = None  # SCAR's per-call user script (decoded from base64)
    cmd_args: tuple[str, ...] | None = None  # SCAR's cmd_args
    query: dict[str, str] = field(default_factory=dict)  # API Gateway query parameters -> CONT_VAR_<name>
    storage_provider: str | None = None  # OSCAR delegated event's provider, as written ("minio.default" or "default")

    @property
    def wants_response(self) -> bool:
        """True when the caller waits for the output in the response (HTTP and inline payloads)."""
        return self.kind in ("http", "inline")

    @property
    def inner_event(self) -> Any:
        """The event inside OSCAR's delegation wrapper (`{"storage_provider", "event"}`), decoded, or
        None when the event is not such a wrapper. faas-supervisor gives the script this inner event
        in EVENT (re-serialized with json.dumps), not the wrapper."""
        value, depth = self.raw, 0
        while _storage_shape(value) == "delegated" and depth <= MAX_ENVELOPE_DEPTH:
            value, depth = value["event"], depth + 1
            if isinstance(value, (str, bytes)):
                text = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
                is_json, value = _try_json(text, "event")
                if not is_json:
                    return None
        return value if depth else None


# Envelopes (SQS, SNS, delegation, API Gateway body) nested deeper than this are refused.
MAX_ENVELOPE_DEPTH = 8
SCAR_EXTRAS = ("script", "cmd_args")
INLINE_STEM = "input"
# The provider type of the store an object comes from, by its record's source (the sources parse_event
# produces; any other is taken for S3 when fetching, and leaves a bare OSCAR provider id untyped).
ONETRIGGER, RUCIO, DCACHE = "OneTrigger", "rucio", "dcache"  # the sources of the shapes added since 1.5.8
SOURCE_PROVIDER_TYPES = {
    "aws:s3": "s3",
    "aws.s3": "s3",
    "minio:s3": "minio",
    ONETRIGGER: "onedata",
    RUCIO: "rucio",
    DCACHE: "webdav",
}
ADDED_SOURCES = (ONETRIGGER, RUCIO, DCACHE)
DEFAULT_PROVIDER_TYPE = "s3"
# faas-supervisor's provider ids for these events: dCache is `webdav.dcache`, Rucio `rucio.rucio`.
DCACHE_PROVIDER, RUCIO_PROVIDER = "webdav.dcache", "rucio.rucio"
# inotify flags of a dCache event that name no file to fetch: a folder, or a file going away.
DCACHE_NO_FILE = frozenset({"IN_ISDIR", "IN_DELETE", "IN_DELETE_SELF", "IN_MOVED_FROM", "IN_MOVE_SELF", "IN_IGNORED"})


def load_event(raw: bytes | str | dict | list) -> Event:
    """Parse one event as received (Lambda dict, stdin bytes, EVENT text). Raises EventError."""
    if isinstance(raw, (dict, list)):
        return _from_json(raw, None)
    if isinstance(raw, str):
        data = raw.encode("utf-8", "surrogatepass")
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
    else:
        raise EventError(f"unsupported event type {type(raw).__name__}")
    is_json, value = _try_json(data, "event")
    if is_json and isinstance(value, (dict, list)):
        return _from_json(value, data)
    if not data.strip():
        return Event(inputs=(), raw=data, kind="inline")
    if not is_json and _starts_like_json(data) and _b64_text(data) is None:
        raise EventError(f"event is malformed: it starts like JSON but is not valid UTF-8 JSON ({_json_problem(data)})")
    if is_json:  # a JSON scalar ("42", "\"text\"") is text, never base64
        return Event(inputs=(_inline(data, is_json=False),), raw=data, kind="inline")
    return Event(inputs=(_inline(_b64_text(data) or data),), raw=data, kind="inline")


def parse_event(raw: bytes | str | dict | list) -> list[Input]:
    return list(load_event(raw).inputs)


def refs_to_json(inputs: Any) -> list[dict[str, Any]]:
    """The JSON-ready list `conveyor parse-event` prints: one object per input, in order."""
    return [inp.to_dict() for inp in inputs]


# -- top level ------------------------------------------------------------------------------


def _from_json(value: dict | list, original: bytes | None) -> Event:
    if isinstance(value, list):
        found = _storage_from_json(value, "")
        if found is not None:
            refs, provider = found
            return Event(inputs=tuple(refs), raw=value, kind="storage", storage_provider=provider)
        return Event(inputs=(_json_inline(value, original),), raw=value, kind="inline")

    script, cmd_args = _scar_extras(value)
    if _is_http(value):
        inputs, query, provider = _http(value)
        return Event(tuple(inputs), value, "http", script, cmd_args, query, provider)
    found = _storage_from_json(value, "")
    if found is not None:
        refs, provider = found
        return Event(tuple(refs), value, "storage", script, cmd_args, storage_provider=provider)
    if all(k in SCAR_EXTRAS for k in value):
        return Event((), value, "inline", script, cmd_args)
    return Event((_json_inline(value, original),), value, "inline", script, cmd_args)


def _json_inline(value: Any, original: bytes | None) -> InlineInput:
    if original is None:
        try:
            original = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError, RecursionError) as exc:
            raise EventError(f"event cannot be serialized as JSON: {exc}") from None
    return _inline(original, is_json=True)


def _scar_extras(value: dict) -> tuple[bytes | None, tuple[str, ...] | None]:
    script = value.get("script")
    if script is not None:
        script = _b64_field(script, "'script'") or None
    return script, _cmd_args(value.get("cmd_args"))


def _cmd_args(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise EventError("'cmd_args' is not a JSON list") from None
    if not isinstance(value, list):
        raise EventError(f"'cmd_args' is not a list but {type(value).__name__}")
    args = []
    for i, arg in enumerate(value):
        if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
            raise EventError(f"'cmd_args'[{i}] is not a string: {_show(arg)}")
        arg = arg if isinstance(arg, str) else str(arg)
        if "\x00" in arg:
            raise EventError(f"'cmd_args'[{i}] contains a NUL character")
        args.append(arg)
    return tuple(args)


# -- storage events -------------------------------------------------------------------------


def _storage_shape(value: Any) -> str | None:
    """Which storage shape a JSON value has, or None when it is not a storage event."""
    if not isinstance(value, dict):
        return None
    if "event" in value and "subscription" in value:  # before "delegated", as faas-supervisor tests it
        return "dcache"
    if "storage_provider" in value and "event" in value:
        return "delegated"
    if "event_type" in value and isinstance(value.get("payload"), dict) and "scope" in value["payload"]:
        return "rucio"
    if "Records" in value:
        return "records"
    if value.get("Event") == "s3:TestEvent":
        return "test"
    if value.get("source") == "aws.s3" and isinstance(value.get("detail"), dict):
        return "eventbridge"
    if value.get("Type") == "Notification" and "Message" in value:
        return "sns-message"
    return None


def _storage_from_json(value: Any, where: str) -> tuple[list[ObjectRef], str | None] | None:
    """(refs, delegated provider as written) for a storage event or a batch of them, else None."""
    if isinstance(value, list):
        if not value or not all(_storage_shape(item) for item in value):
            return None
        refs: list[ObjectRef] = []
        provider = None
        for i, item in enumerate(value):
            refs.extend(_storage_refs(item, f"{where}[{i}]", 0))
            if provider is None and _storage_shape(item) == "delegated":
                provider = item["storage_provider"]
        return refs, provider
    shape = _storage_shape(value)
    if shape is None:
        return None
    refs = _storage_refs(value, where, 0)
    return refs, value["storage_provider"] if shape == "delegated" else None


def _storage_refs(value: Any, where: str, depth: int) -> list[ObjectRef]:
    if depth > MAX_ENVELOPE_DEPTH:
        raise EventError(f"{_at(where)}: envelopes nested more than {MAX_ENVELOPE_DEPTH} deep", where=where or None)
    shape = _storage_shape(value)
    if shape == "records":
        return _records(value["Records"], _join(where, "Records"), depth, value)
    if shape == "delegated":
        return _delegated(value, where, depth)
    if shape == "eventbridge":
        return [_eventbridge(value, where)]
    if shape == "sns-message":
        return _nested(value["Message"], _join(where, "Message"), depth)
    if shape == "test":
        return []
    if shape == "dcache":
        return _dcache(value, where)
    if shape == "rucio":
        return [_rucio(value, value, _at(where))]
    raise EventError(f"{_at(where)}: does not hold a storage event", where=where or None)


def _nested(value: Any, where: str, depth: int) -> list[ObjectRef]:
    """An envelope's payload: a JSON string (or, leniently, an object) holding a storage event."""
    if isinstance(value, (str, bytes)):
        text = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        is_json, value = _try_json(text, where)
        if not is_json:
            raise EventError(f"{where}: not valid JSON", where=where)
    if _storage_shape(value) is None:
        raise EventError(f"{where}: does not hold a storage event", where=where)
    return _storage_refs(value, where, depth + 1)


def _records(records: Any, where: str, depth: int, event: dict) -> list[ObjectRef]:
    if not isinstance(records, list):
        raise EventError(f"{where}: not a list", where=where)
    if not records:
        raise EventError(f"{where}: empty, the event names no object", where=where)
    refs: list[ObjectRef] = []
    for i, record in enumerate(records):
        at = f"{where}[{i}]"
        if not isinstance(record, dict):
            raise EventError(f"{at}: record is not an object", where=at)
        source = record.get("eventSource", record.get("EventSource"))
        if source in ("aws:s3", "minio:s3"):
            refs.append(_s3_record(record, at, source))
        elif source == "aws:sqs":
            if "body" not in record:
                raise EventError(f"{at}: missing body", where=at)
            refs.extend(_nested(record["body"], f"{at}.body", depth))
        elif source == "aws:sns":
            sns = record.get("Sns")
            if not isinstance(sns, dict) or "Message" not in sns:
                raise EventError(f"{at}: missing Sns.Message", where=at)
            refs.extend(_nested(sns["Message"], f"{at}.Sns.Message", depth))
        elif source == ONETRIGGER:
            refs.append(_onetrigger(record, event, at, len(records)))
        elif source == RUCIO:
            refs.append(_rucio(record if isinstance(record.get("payload"), dict) else event, record, at))
        elif source is None:
            raise EventError(f"{at}: missing eventSource", where=at)
        else:
            raise EventError(f"{at}: unsupported eventSource {_show(source)}", where=at)
    return refs


def _s3_record(record: dict, at: str, source: str) -> ObjectRef:
    s3 = record.get("s3")
    if not isinstance(s3, dict):
        raise EventError(f"{at}: missing s3", where=at)
    obj = s3.get("object")
    obj = obj if isinstance(obj, dict) else {}
    user = _dig(record, "userIdentity", "principalId")
    endpoint = None
    if source == "minio:s3":
        user = _dig(record, "requestParameters", "principalId") or user
        endpoint = _opt_str(_dig(record, "responseElements", "x-minio-origin-endpoint"), at, "x-minio-origin-endpoint")
    return ObjectRef(
        bucket=_bucket(_dig(s3, "bucket", "name"), at, "s3.bucket.name"),
        key=_key(obj.get("key"), at, "s3.object.key", decode=True),
        size=_size(obj.get("size"), at, "s3.object.size"),
        etag=_opt_str(obj.get("eTag"), at, "s3.object.eTag"),
        version_id=_opt_str(obj.get("versionId"), at, "s3.object.versionId"),
        event_time=_opt_str(record.get("eventTime"), at, "eventTime"),
        user=_opt_str(user, at, "principalId"),
        source=source,
        endpoint=endpoint,
        record=record,
        event_name=_opt_str(record.get("eventName"), at, "eventName"),
    )


def _eventbridge(event: dict, where: str) -> ObjectRef:
    at = _at(where)
    detail = event["detail"]
    obj = detail.get("object")
    obj = obj if isinstance(obj, dict) else {}
    return ObjectRef(
        bucket=_bucket(_dig(detail, "bucket", "name"), at, "detail.bucket.name"),
        key=_key(obj.get("key"), at, "detail.object.key", decode=False),
        size=_size(obj.get("size"), at, "detail.object.size"),
        etag=_opt_str(obj.get("etag"), at, "detail.object.etag"),
        version_id=_opt_str(obj.get("version-id"), at, "detail.object.version-id"),
        event_time=_opt_str(event.get("time"), at, "time"),
        user=_opt_str(detail.get("requester"), at, "detail.requester"),
        source="aws.s3",
        record=event,
        event_name=_opt_str(event.get("detail-type"), at, "detail-type"),
    )


def _dcache(value: dict, where: str) -> list[ObjectRef]:
    """A dCache inotify event as DCNiOS forwards it: a file name in the watched folder."""
    at = _at(where)
    inner = value["event"]
    if not isinstance(inner, dict):
        raise EventError(f"{at}: event is not an object: {_show(inner)}", where=at)
    mask = inner.get("mask")
    if mask is None:
        mask = []
    if not isinstance(mask, list) or not all(isinstance(flag, str) for flag in mask):
        raise EventError(f"{at}: event.mask is not a list of inotify flags: {_show(mask)}", where=at)
    if DCACHE_NO_FILE.intersection(mask):
        return []
    name = _key(inner.get("name"), at, "event.name", decode=False)
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise EventError(f"{at}: event.name is not a file name: {_show(name)}", where=at)
    return [
        ObjectRef(
            bucket="",  # the watched folder is the definition's, not the event's: see bind_inputs
            key=name,
            source=DCACHE,
            record=value,
            event_name=",".join(mask) or None,
        )
    ]


def _rucio(holder: dict, record: dict, at: str) -> ObjectRef:
    """A Rucio message: the DID scope:name (a dataset when event_type is "close")."""
    payload = holder.get("payload")
    if not isinstance(payload, dict):
        raise EventError(f"{at}: missing payload (a Rucio event names payload.scope and payload.name)", where=at)
    scope = _bucket(payload.get("scope"), at, "payload.scope")
    return ObjectRef(
        bucket=scope,
        key=_key(payload.get("name"), at, "payload.name", decode=False),
        event_time=_opt_str(holder.get("created_at", record.get("eventTime")), at, "created_at"),
        source=RUCIO,
        record=record,
        event_name=_opt_str(holder.get("event_type", record.get("eventName")), at, "event_type"),
    )


def _onetrigger(record: dict, event: dict, at: str, count: int) -> ObjectRef:
    """A OneTrigger record: the file is the event's top-level Key, "/<space>/<folder>/.../<file>"."""
    if count != 1:
        raise EventError(f"{at}: a OneTrigger event names one file (its Key), not {count}", where=at)
    path = _key(event.get("Key"), at, "Key", decode=False)
    parts = path.strip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise EventError(f"{at}: Key is not a path in a Onedata space: {_show(path)}", where=at)
    if len(parts) < 3:
        raise EventError(
            f"{at}: Key {_show(path)} names no file inside a folder of the space (expected /<space>/<folder>/<file>)",
            where=at,
        )
    return ObjectRef(
        bucket=parts[1],
        key="/".join(parts[2:]),
        event_time=_opt_str(record.get("eventTime"), at, "eventTime"),
        source=ONETRIGGER,
        record=record,
        space=parts[0],
    )


def _delegated(value: dict, where: str, depth: int) -> list[ObjectRef]:
    provider = value["storage_provider"]
    if not isinstance(provider, str) or not provider.strip():
        raise EventError(f"{_at(where)}: storage_provider must be a non-empty string", where=where or None)
    refs = _nested(value["event"], _join(where, "event"), depth)
    return [replace(ref, provider=ref.provider or qualify_provider(provider, ref.source)) for ref in refs]


def qualify_provider(provider: str, source: str) -> str:
    """OSCAR's provider as `<type>.<id>`: kept when it has a type, else typed by the record's source."""
    if "." in provider or source not in SOURCE_PROVIDER_TYPES:
        return provider
    return f"{provider_type(source)}.{provider}"


def bind_inputs(event: Event, config: FunctionConfig) -> Event:
    """The event with the refs of the shapes added since faas-supervisor 1.5.8 tied to the definition,
    as faas-supervisor ties them:

    - dCache: the file is `name` in the folder of the definition's input on webdav.dcache (or on the
      only webdav input, or on the provider a delegation wrapper names): bucket and key from its path;
    - Rucio: the provider is the wrapper's, else the definition's rucio input (rucio.rucio first);
    - OneTrigger: the provider is the wrapper's, else the onedata provider whose `space` is the one the
      event's Key names (those of the input entries first, then any configured).

    Raises ConfigError when the definition has no such input or provider. Other inputs are unchanged.
    """
    if not any(isinstance(inp, ObjectRef) and inp.source in ADDED_SOURCES for inp in event.inputs):
        return event
    return replace(event, inputs=tuple(_bind(inp, config) for inp in event.inputs))


def _bind(inp: Input, config: FunctionConfig) -> Input:
    if not isinstance(inp, ObjectRef) or inp.source not in ADDED_SOURCES:
        return inp
    if inp.source == RUCIO:
        return replace(inp, provider=inp.provider or _input_provider(config, "rucio", "rucio") or RUCIO_PROVIDER)
    if inp.source == DCACHE:
        if inp.bucket:  # bound already
            return inp
        provider = inp.provider or _input_provider(config, "webdav", "dcache") or DCACHE_PROVIDER
        spec = next((spec for spec in config.inputs if str(spec.provider) == provider), None)
        if spec is None or not spec.bucket:
            raise ConfigError(
                f"a dCache event names the file {inp.key!r} in the folder that the input entry on {provider} "
                f"watches, and the definition has {'no such input' if spec is None else 'an empty path there'}",
                key="input",
                source=config.source,
            )
        bucket, key = spec.destination(inp.key)
        return replace(inp, bucket=bucket, key=key, provider=provider)
    if inp.provider:  # OneTrigger, delegated with a named provider
        return inp
    named = [str(spec.provider) for spec in config.inputs if spec.provider.type == "onedata"]
    for ref in [*named, *sorted(config.providers)]:
        found = config.providers.get(ref)
        if found is not None and found.ref.type == "onedata" and found.space == inp.space:
            return replace(inp, provider=ref)
    raise ConfigError(
        f"the OneTrigger event names the Onedata space {inp.space!r}, and no onedata provider "
        f"of the definition has space: {inp.space}",
        key="storage_providers.onedata",
        source=config.source,
    )


ACCEPT_ANY_INPUT_KEY = "conveyor.accept_any_input"


def check_within_inputs(ref: ObjectRef, provider: str, config: FunctionConfig) -> None:
    """Raise OutsideInputsError unless `ref` (held by `provider`, "<type>.<id>") lies under one of the
    definition's `input[]` paths on that entry's provider: the bucket is the path's first segment
    (or, with `isolation_level: USER`, one of `bucket_list`) and the key starts with the rest of the
    path. An event cannot make the function read any other object (a confused deputy) unless
    `conveyor: accept_any_input: true`. A dCache ref is the definition's by construction (bind_inputs
    puts it in its input folder); a Rucio DID (scope:name) has no path: it is within when its
    provider is an input's. A key with a `..` segment is never within.
    """
    if config.conveyor.accept_any_input or ref.source == DCACHE:
        return
    if ref.source == RUCIO and any(str(spec.provider) == provider for spec in config.inputs):
        return
    user_buckets = config.bucket_list if config.isolation_level.upper() == "USER" else ()
    if ".." not in ref.key.split("/"):
        for spec in config.inputs:
            if str(spec.provider) != provider or not (ref.bucket == spec.bucket or ref.bucket in user_buckets):
                continue
            if not spec.key_prefix or ref.key.startswith(f"{spec.key_prefix}/"):
                return
    paths = ", ".join(f"{spec.path} on {spec.provider}" for spec in config.inputs) or "none"
    raise OutsideInputsError(
        f"the event names {ref.bucket}/{ref.key} on {provider}, outside the function's input paths ({paths}): "
        f"not fetched; set {ACCEPT_ANY_INPUT_KEY}: true to accept objects from anywhere",
        bucket=ref.bucket,
        key=ref.key,
        provider=provider,
    )


def _input_provider(config: FunctionConfig, type_: str, preferred_id: str) -> str | None:
    """The definition's input provider of this type: the one with the preferred id, else the only one."""
    refs = list(dict.fromkeys(spec.provider for spec in config.inputs if spec.provider.type == type_))
    for ref in refs:
        if ref.id == preferred_id:
            return str(ref)
    return str(refs[0]) if len(refs) == 1 else None


def provider_type(source: str) -> str:
    """The provider type for an object of this source ("minio:s3" -> "minio"); S3 when unknown."""
    return SOURCE_PROVIDER_TYPES.get(source, DEFAULT_PROVIDER_TYPE)


# -- field checks ---------------------------------------------------------------------------


def _dig(value: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _bucket(value: Any, at: str, name: str) -> str:
    if value is None:
        raise EventError(f"{at}: missing {name}", where=at)
    if not isinstance(value, str):
        raise EventError(f"{at}: {name} is not a string: {_show(value)}", where=at)
    if not value:
        raise EventError(f"{at}: {name} is empty", where=at)
    if "/" in value or "\x00" in value:
        raise EventError(f"{at}: {name} is not a bucket name: {_show(value)}", where=at)
    return value


def _key(value: Any, at: str, name: str, *, decode: bool) -> str:
    if value is None:
        raise EventError(f"{at}: missing {name}", where=at)
    if not isinstance(value, str):
        raise EventError(f"{at}: {name} is not a string: {_show(value)}", where=at)
    key = value
    if decode:
        try:
            key = unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            raise EventError(f"{at}: {name} is not valid URL-encoded UTF-8: {_show(value)}", where=at) from None
    if not key:
        raise EventError(f"{at}: {name} is empty", where=at)
    if "\x00" in key:
        raise EventError(f"{at}: {name} contains a NUL character: {_show(value)}", where=at)
    return key


_DIGITS = re.compile(r"[0-9]{1,20}")


def _size(value: Any, at: str, name: str) -> int | None:
    if value is None or value == "":
        return None
    size: int | None = None
    if isinstance(value, bool):
        size = None
    elif isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        size = int(value.strip())
    if size is None or size < 0:
        raise EventError(f"{at}: {name} is not a whole number of bytes: {_show(value)}", where=at)
    return size


def _opt_str(value: Any, at: str, name: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise EventError(f"{at}: {name} is not a string: {_show(value)}", where=at)


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _at(where: str) -> str:
    return where or "event"


# -- HTTP (API Gateway v1/v2, Function URLs) ------------------------------------------------


def _is_http(value: dict) -> bool:
    if "httpMethod" in value:
        return True
    return value.get("version") == "2.0" and isinstance(_dig(value, "requestContext", "http"), dict)


def _http(value: dict) -> tuple[list[Input], dict[str, str], str | None]:
    query = _query(value.get("queryStringParameters"))
    headers = value.get("headers")
    content_type = None
    if isinstance(headers, dict):
        for name, header in headers.items():
            if isinstance(name, str) and name.lower() == "content-type" and isinstance(header, str):
                content_type = header
    body = value.get("body")
    if body is None or body == "":
        return [], query, None
    if isinstance(body, (dict, list)):  # test tools sometimes put the JSON itself there
        found = _storage_from_json(body, "body")
        if found is not None:
            return [*found[0]], query, found[1]
        return [_json_inline(body, None)], query, None
    if not isinstance(body, str):
        raise EventError(f"body is not a string but {type(body).__name__}")
    if value.get("isBase64Encoded"):
        data = _b64_field(body, "body (isBase64Encoded)")
    else:
        data = body.encode("utf-8", "surrogatepass")
    is_json, parsed = _try_json(data, "body")
    if is_json:
        found = _storage_from_json(parsed, "body")
        if found is not None:
            return [*found[0]], query, found[1]
        return [_inline(data, content_type, is_json=isinstance(parsed, (dict, list)))], query, None
    return [_inline(_b64_text(data) or data, content_type)], query, None


def _query(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventError(f"queryStringParameters is not an object but {type(value).__name__}")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


# -- inline payloads ------------------------------------------------------------------------


def _try_json(data: bytes, where: str) -> tuple[bool, Any]:
    """(True, value) when `data` is JSON text, (False, None) when it is not."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False, None
    text = text.lstrip("\ufeff \t\r\n")
    if not text:
        return False, None
    try:
        return True, json.loads(text)
    except RecursionError:
        raise EventError(f"{_at(where)}: JSON nested too deeply to parse") from None
    except ValueError:
        return False, None


def _starts_like_json(data: bytes) -> bool:
    """True when the first character after a BOM and blanks opens a JSON object or array."""
    head = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    return head.lstrip(b" \t\r\n")[:1] in (b"{", b"[")


def _json_problem(data: bytes) -> str:
    """Why `data` is not JSON text, for the error of a malformed event."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}"
    try:
        json.loads(text.lstrip("\ufeff \t\r\n"))
    except ValueError as exc:
        return str(exc)
    return "not JSON"


_B64_TEXT = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(rb"\s+")


def _b64_text(data: bytes) -> bytes | None:
    """The decoded bytes when the whole payload is strict base64 text, else None."""
    compact = _WHITESPACE.sub(b"", data)
    if not compact or len(compact) % 4 or not _B64_TEXT.fullmatch(compact):
        return None
    try:
        return base64.b64decode(compact, validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _b64_field(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise EventError(f"{name} is not a base64 string but {type(value).__name__}")
    try:
        return base64.b64decode(re.sub(r"\s+", "", value), validate=True)
    except (binascii.Error, ValueError):
        raise EventError(f"{name} is not valid base64") from None


def _inline(data: bytes, content_type: str | None = None, *, is_json: bool | None = None) -> InlineInput:
    ext, media = _sniff(data, content_type, is_json)
    return InlineInput(data=data, file_name=INLINE_STEM + ext, content_type=media)


# Content-Types that say nothing about the format.
_GENERIC_TYPES = {"application/octet-stream", "binary/octet-stream", "text/plain", "application/x-www-form-urlencoded"}


def _sniff(data: bytes, content_type: str | None, is_json: bool | None) -> tuple[str, str]:
    """(extension, media type) for an inline payload."""
    magic = sniff(data)
    if magic:
        return magic
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media and media not in _GENERIC_TYPES:
        ext = extension_for(media)
        if ext:
            return ext, media
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return ".bin", "application/octet-stream"
    if "\x00" in text:
        return ".bin", "application/octet-stream"
    if is_json is None:
        is_json = text.lstrip("\ufeff \t\r\n")[:1] in ("{", "[") and _try_json_quietly(text)
    return (".json", "application/json") if is_json else (".txt", "text/plain")


def _try_json_quietly(text: str) -> bool:
    try:
        return isinstance(json.loads(text.lstrip("\ufeff")), (dict, list))
    except (ValueError, RecursionError):
        return False
