"""The result record: one JSON document per input, whatever happened to it."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from conveyor.config import IOSpec


class Status(enum.StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    DELEGATED = "DELEGATED"


@dataclass
class ResultRecord:
    input: dict[str, Any]
    platform: str
    request_id: str
    handler: str
    status: Status = Status.FAILED
    exit_code: int | None = None  # the model's own exit code, when it ran as a process
    error: dict[str, Any] | None = None  # {"kind", "message", ...context}
    timings: dict[str, float] = field(default_factory=dict)  # seconds: download, handler, upload, total
    bytes_in: int = 0
    bytes_out: int = 0
    outputs: list[str] = field(default_factory=list)  # "bucket/key" of every uploaded output
    log_tail: str = ""
    job_id: str | None = None  # AWS Batch job id (delegated, or running in Batch)
    started_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAILED

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, default=str)


def status_key(spec: IOSpec, record: ResultRecord) -> tuple[str, str]:
    """Where a record is uploaded: <status path>/<input bucket>/<input key>.json.

    Stable per input, so a redelivered event overwrites its record instead of adding one.
    Inline payloads have no key: theirs is filed under the request id.
    """
    ref = record.input
    if ref.get("inline"):
        name = f"inline/{record.request_id or 'request'}/{ref.get('file_name', 'input')}"
    else:
        name = f"{ref.get('bucket')}/{ref.get('key')}"
    return spec.destination(f"{name}.json")
