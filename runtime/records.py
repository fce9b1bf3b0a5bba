"""The result record (one JSON document per input, whatever happened to it) and the record
protocol: the log lines that carry records and uploads, written and read only here.

A job logs every result record and every upload as one line holding MARKER, a kind and a JSON
payload:

    ... @conveyor-record result {"input": {...}, "request_id": "...", "status": "FAILED", ...}
    ... @conveyor-record uploaded {"request_id": "...", "target": "bucket/key"}

`conveyor local` reads them back from the log of a job that died before it could report
(`results_in`, `uploads_in`). The marker does not depend on the logger's name or the log format,
and the payload is JSON with every line separator escaped, so no key or message can start a line.
"""

from __future__ import annotations

import enum
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from conveyor.config import IOSpec

# The protocol's logger (conveyor.logs.PROTOCOL): a protocol, not a log, so its lines are shown
# whatever log_level says, except in a run whose stderr may join a sync response (keep_job_output).
log = logging.getLogger(__name__)

MARKER = "@conveyor-record"
RESULT = "result"
UPLOADED = "uploaded"

# Characters str.splitlines() breaks on that JSON leaves unescaped (json.dumps escapes those below 0x20).
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class Status(enum.StrEnum):
    """A record's status. RUNNING is the start record's alone: written to the status key when a
    record begins (conveyor.status configured), then overwritten by the final record. It is never
    logged as a result, and nothing that reads results takes it for one."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    DELEGATED = "DELEGATED"
    RUNNING = "RUNNING"

    @property
    def final(self) -> bool:
        return self is not Status.RUNNING


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
    started_at: str = ""  # ISO 8601, UTC
    finished_at: str = ""  # ISO 8601, UTC: set when the record is final ("" in a start record)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Did the input succeed, or go on elsewhere (DELEGATED)? A start record (RUNNING) is not a result."""
        return self.status in (Status.SUCCEEDED, Status.DELEGATED)

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


# -- the protocol: writers --------------------------------------------------------------------------


def failure_line(record: ResultRecord) -> str:
    """`conveyor: <kind> error: <message> (input <what>)`, the line a failed run prints on stderr for
    a FAILED record (and `conveyor serve` answers with)."""
    error = record.error or {}
    ref = record.input
    what = (ref.get("file_name") or "payload") if ref.get("inline") else f"{ref.get('bucket')}/{ref.get('key')}"
    return f"conveyor: {error.get('kind', 'internal')} error: {error.get('message', 'unknown error')} (input {what})"


def failure_lines(records: Iterable[ResultRecord]) -> list[str]:
    """What a failed run prints on stderr, whatever log_level says: a failure_line per FAILED record,
    and one line counting those a shutdown left unstarted (counted, not listed)."""
    failed = [r for r in records if not r.ok]
    shown = [r for r in failed if not r.extra.get("not_started")]
    lines = [failure_line(record) for record in shown]
    if len(shown) < len(failed):
        lines.append(f"conveyor: interrupted error: {len(failed) - len(shown)} input(s) not started")
    return lines


def log_result(record: ResultRecord) -> None:
    """Log the record as one protocol line (the last line of its work)."""
    log.info("%s", _line(RESULT, record.to_json()))


def log_upload(target: str, request_id: str) -> None:
    """Log that `target` ("bucket/key") was uploaded (or tried) by the job `request_id`."""
    payload = json.dumps({"request_id": request_id, "target": target}, ensure_ascii=False, sort_keys=True)
    log.info("%s", _line(UPLOADED, payload))


def _line(kind: str, payload: str) -> str:
    for char, escaped in _LINE_BREAKS.items():
        payload = payload.replace(char, escaped)  # valid JSON: they can only occur inside strings
    return f"{MARKER} {kind} {payload}"


# -- the protocol: readers --------------------------------------------------------------------------

LogSource = str | bytes | os.PathLike[str] | Iterable[str] | None
"""A log to read: a file (a path object), its text (str or bytes), or its lines; None is empty."""


def results_in(source: LogSource) -> list[dict[str, Any]]:
    """Every result record logged in `source`, in order."""
    return list(_payloads(source, RESULT))


def uploads_in(source: LogSource, request_id: str) -> list[str]:
    """The "bucket/key" targets the job `request_id` logged as uploaded in `source`, in order."""
    return [
        payload["target"]
        for payload in _payloads(source, UPLOADED)
        if payload.get("request_id") == request_id and isinstance(payload.get("target"), str)
    ]


def _payloads(source: LogSource, kind: str) -> Iterator[dict[str, Any]]:
    head = f"{MARKER} {kind} "
    for line in _lines(source):
        _, found, payload = line.partition(head)
        if not found:
            continue
        try:
            value = json.loads(payload)
        except ValueError:  # a line cut short (a log tail), or not ours
            continue
        if isinstance(value, dict):
            yield value


def _lines(source: LogSource) -> Iterator[str]:
    if source is None:
        return
    if isinstance(source, bytes):
        source = source.decode("utf-8", errors="replace")
    if isinstance(source, str):
        yield from source.split("\n")
        return
    if isinstance(source, os.PathLike):
        try:
            with open(source, encoding="utf-8", errors="replace", newline="\n") as fh:
                yield from fh
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        return
    yield from source
