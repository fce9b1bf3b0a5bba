"""The record protocol (conveyor.records): what a job logs about its records and uploads, and what
`conveyor local` reads back from the log of a job that died."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.logs import LOG_FORMAT, bound_request_id, request_id
from conveyor.records import MARKER, ResultRecord, Status, log_result, log_upload, results_in, uploads_in

# Keys that try to start a line of their own, or to close the JSON string early.
FORGING_KEYS = [
    'a\n2026-01-01 00:00:00,000 INFO [r1] x: @conveyor-record uploaded {"request_id": "r1", "target": "evil/one"}',
    'a\r\n@conveyor-record result {"request_id": "r1", "status": "SUCCEEDED", "input": {"key": "evil"}}',
    'q"uo"te", "target": "evil/two"} @conveyor-record uploaded {"request_id": "r1", "target": "evil/three"}',
    "été/日本語/\u2028@conveyor-record uploaded {\"request_id\": \"r1\", \"target\": \"evil/four\"}",
    "line\x85sep\u2029@conveyor-record uploaded {\"request_id\": \"r1\", \"target\": \"evil/five\"}",
    "\x0b\x0c\x1c\x1d\x1e@conveyor-record uploaded {\"request_id\": \"r1\", \"target\": \"evil/six\"}",
]


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


@pytest.fixture
def job_log(tmp_path: Path) -> Iterator[Path]:
    """A job's log file, in Conveyor's own format, holding whatever conveyor.records logs."""
    path = tmp_path / "job.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_RequestId())
    logger = logging.getLogger("conveyor.records")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


def a_record(key: str, request: str = "r1", **changes) -> ResultRecord:
    return ResultRecord(input={"bucket": "in", "key": key, "size": 3}, platform="oscar", request_id=request,
                        handler="script", **changes)


def test_a_record_and_an_upload_round_trip(job_log: Path) -> None:
    record = a_record("photos/one.jpg", status=Status.SUCCEEDED, exit_code=0, outputs=["out/one.jpg"],
                      log_tail="model: done\n", extra={"warm_start": False})
    with bound_request_id("r1"):
        log_upload("out/one.jpg", "r1")
        log_result(record)
    assert results_in(job_log) == [record.to_dict()]
    assert uploads_in(job_log, "r1") == ["out/one.jpg"]
    text = job_log.read_text()
    assert len(text.splitlines()) == 2 and all(MARKER in line for line in text.splitlines())
    # The same from the log's text (str or bytes) or its lines, as a test reads a process's stderr.
    assert results_in(text) == results_in(text.encode()) == results_in(text.splitlines()) == [record.to_dict()]
    assert uploads_in(text.splitlines(keepends=True), "r1") == ["out/one.jpg"]


def test_the_marker_does_not_depend_on_the_logger_or_the_format(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))  # no logger name, no request id
    logger = logging.getLogger("conveyor.records")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        log_upload("b/k", "r9")
        log_result(a_record("k", request="r9"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    assert uploads_in(stream.getvalue(), "r9") == ["b/k"]
    assert [r["input"]["key"] for r in results_in(stream.getvalue())] == ["k"]


@pytest.mark.parametrize("key", FORGING_KEYS)
def test_a_key_cannot_forge_an_upload_line(job_log: Path, key: str) -> None:
    with bound_request_id("r1"):
        log_upload(f"out/{key}", "r1")
    text = job_log.read_text(encoding="utf-8")
    assert len(text.split("\n")) == 2 and len(text.splitlines()) == 1  # one line, whatever splits it
    assert uploads_in(job_log, "r1") == [f"out/{key}"]
    assert uploads_in(text.splitlines(), "r1") == [f"out/{key}"]


@pytest.mark.parametrize("key", FORGING_KEYS)
def test_a_key_cannot_forge_a_result_record(job_log: Path, key: str) -> None:
    record = a_record(key, error={"kind": "handler", "message": f"cannot read {key}"}, log_tail=key)
    with bound_request_id("r1"):
        log_result(record)
    text = job_log.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1
    assert results_in(job_log) == [record.to_dict()]
    assert results_in(text.splitlines()) == [record.to_dict()]
    assert uploads_in(job_log, "r1") == []


def test_uploads_of_another_request_are_ignored(job_log: Path) -> None:
    with bound_request_id("r1"):
        log_upload("out/mine.txt", "r1")
    with bound_request_id("r2"):
        log_upload("out/theirs.txt", "r2")
    log_upload("out/also-mine.txt", "r1")  # the reader trusts the payload, not the line's [request id]
    assert uploads_in(job_log, "r1") == ["out/mine.txt", "out/also-mine.txt"]
    assert uploads_in(job_log, "r2") == ["out/theirs.txt"]
    assert uploads_in(job_log, "r") == [] and uploads_in(job_log, "r1]") == []


def test_lines_that_are_not_the_protocol_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    good = json.dumps({"request_id": "r1", "target": "out/ok"})
    path.write_text("\n".join([
        "2026 INFO [r1] conveyor: uploaded out/old-format",  # the old log line: not the protocol
        "2026 INFO [r1] conveyor: result {\"request_id\": \"r1\"}",
        f"{MARKER} uploaded {good[:-5]}",  # cut short (a log tail starts mid-line)
        f"{MARKER} uploaded [\"r1\", \"out/list\"]",
        f"{MARKER} uploaded {{\"request_id\": \"r1\", \"target\": 7}}",
        f"{MARKER} result \"not an object\"",
        f"x {MARKER} uploaded {good}",
    ]) + "\n")
    assert uploads_in(path, "r1") == ["out/ok"]
    assert results_in(path) == []


def test_a_missing_log_reads_as_empty(tmp_path: Path) -> None:
    assert results_in(tmp_path / "absent.log") == [] and uploads_in(tmp_path / "absent.log", "r") == []
    assert results_in(None) == [] and uploads_in(tmp_path, "r") == []


def test_a_start_record_is_not_a_result() -> None:
    """RUNNING marks a record in flight (the start record at the status key): never a success."""
    start = a_record("x.jpg", status=Status.RUNNING)
    assert not start.ok and not Status.RUNNING.final
    assert start.to_dict()["status"] == "RUNNING" and start.to_dict()["finished_at"] == ""
    assert a_record("x.jpg", status=Status.SUCCEEDED).ok and a_record("x.jpg", status=Status.DELEGATED).ok
    assert not a_record("x.jpg", status=Status.FAILED).ok
    assert [s for s in Status if s.final] == [Status.SUCCEEDED, Status.FAILED, Status.DELEGATED]
