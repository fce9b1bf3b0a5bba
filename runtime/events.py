"""Raw event -> typed inputs, for every shape in the platform contract (section 2).

`parse_event(raw)` returns one input per record: an `ObjectRef` for a storage object, an
`InlineInput` for a payload that is itself the input file. `load_event(raw)` returns the
whole `Event`, with SCAR's extras (script, cmd_args) and the HTTP details of API Gateway.

IMPLEMENTATION PENDING (helper "events").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union


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
    source: str = "aws:s3"  # aws:s3 | minio:s3 | aws.s3 (EventBridge) | seaweedfs ...
    endpoint: str | None = None  # x-minio-origin-endpoint when present
    record: Any = None  # the raw record this ref came from (for EVENT / debugging)

    inline = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "version_id": self.version_id,
            "event_time": self.event_time,
            "user": self.user,
            "provider": self.provider,
            "source": self.source,
            "endpoint": self.endpoint,
            "inline": False,
        }


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


def load_event(raw: bytes | str | dict | list) -> Event:  # pragma: no cover - pending
    raise NotImplementedError


def parse_event(raw: bytes | str | dict | list) -> list[Input]:
    return list(load_event(raw).inputs)
