"""The job: for every input of an event, fetch -> handler -> upload, under a deadline, with a
result record per input.

A record either SUCCEEDS (the model exited cleanly and every output was uploaded) or FAILS
(nothing reaches the output paths, the error and log tail go to the record). Per-record work
directories live under the scratch dir and are removed afterwards, success or not.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from conveyor.child import tail
from conveyor.config import FunctionConfig, ProviderRef
from conveyor.config.model import MAX_ARG_STRLEN, PRIVATE_VARS
from conveyor.config.redaction import mask_values
from conveyor.deadline import Deadline
from conveyor.errors import ConveyorError, Interrupted, NoOutputError, StorageError
from conveyor.events import Event, InlineInput, Input, ObjectRef, bind_inputs, provider_type
from conveyor.handler import Handler, Invocation
from conveyor.outputs import Upload, collect_outputs, plan_uploads, safe_file_name
from conveyor.platform import Platform
from conveyor.records import ResultRecord, Status, log_result, log_upload, status_key
from conveyor.response import write_sync_response
from conveyor.storage import ObjectStore, TransferOptions, is_permanent, open_store

log = logging.getLogger(__name__)

WITHDRAW_MARGIN = 1.0  # seconds before the job's deadline at which a failed record stops withdrawing
# A failed record's withdrawal retries after these pauses: the first, doubled each time up to the cap.
WITHDRAW_BACKOFF = (0.5, 4.0)


class Stores:
    """One ObjectStore per provider, opened on first use and kept for the process."""

    def __init__(
        self,
        config: FunctionConfig,
        opener: Callable[..., ObjectStore] = open_store,
        options: TransferOptions | None = None,
    ) -> None:
        self._config = config
        self._opener = opener
        self._options = options  # retries, timeouts, CA bundle: built at the edge (cli, LambdaApp)
        self._open: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    def get(self, ref: ProviderRef) -> ObjectStore:
        with self._lock:
            key = str(ref)
            if key not in self._open:
                self._open[key] = self._opener(self._config.provider(ref), self._options)
            return self._open[key]


@dataclass
class Job:
    """What every record of a run shares. Built once by the CLI (or the Lambda handler)."""

    config: FunctionConfig
    platform: Platform
    handler: Handler
    stores: Stores
    base_env: Mapping[str, str]  # the process environment, captured once at the edge
    scratch_dir: Path
    request_id: str = "-"
    deadline: Deadline = field(default_factory=Deadline.never)
    shutdown: threading.Event = field(default_factory=threading.Event)
    job_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # platform facts for the record (Lambda context, Batch attempt)
    grace_period: float | None = None  # SIGTERM -> SIGKILL for children; None: the config's
    withdraw_backoff: tuple[float, float] = WITHDRAW_BACKOFF  # (first pause, cap) between withdrawal passes

    @property
    def grace(self) -> float:
        return self.config.conveyor.grace_period if self.grace_period is None else self.grace_period


def scratch_dir(environ: Mapping[str, str]) -> Path:
    """Where records get their work directories: CONVEYOR_SCRATCH, else TMPDIR, else the system's
    temporary directory (/tmp under Lambda, where TMPDIR is unset). Created when missing."""
    scratch = Path(environ.get("CONVEYOR_SCRATCH") or environ.get("TMPDIR") or tempfile.gettempdir())
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


def input_provider(ref: ObjectRef) -> ProviderRef:
    """The provider that holds an object: as the event names it, else the default of its type."""
    source_type = provider_type(ref.source)
    if ref.provider:
        return ProviderRef.parse(ref.provider, default_type=source_type)
    return ProviderRef(source_type)


def output_required(config: FunctionConfig, event: Event | None) -> bool:
    """Is a record whose model wrote no file a failure? (see ConveyorSettings.require_output)"""
    if config.conveyor.require_output is not None:
        return config.conveyor.require_output
    return bool(config.outputs) and not (event is not None and event.wants_response)


def _env_value(text: str) -> str | None:
    return text if len(f"EVENT={text}".encode()) < MAX_ARG_STRLEN and "\x00" not in text else None


def _event_json(event: Event | None, inp: Input | None) -> str | None:
    """EVENT for the child: the event as received, else (too large) this record alone. An OSCAR
    delegation wrapper gives the event inside it, re-serialized by json.dumps as faas-supervisor does."""
    if event is None:
        return None
    raw = event.raw
    if isinstance(raw, (bytes, bytearray)):
        try:
            text = bytes(raw).decode()
        except UnicodeDecodeError:
            return None
        return _env_value(text)
    inner = event.inner_event
    whole = _env_value(json.dumps(raw, ensure_ascii=False) if inner is None else json.dumps(inner))
    if whole is None and isinstance(inp, ObjectRef) and inp.record is not None:
        return _env_value(json.dumps({"Records": [inp.record]}, ensure_ascii=False))
    return whole


def child_env(
    job: Job, event: Event | None, inp: Input | None, input_path: Path | None, input_dir: Path, output_dir: Path
) -> dict[str, str]:
    """The child's complete environment, built fresh for every record (contract section 4)."""
    env = {k: v for k, v in job.base_env.items() if k not in PRIVATE_VARS}
    env.update(job.config.environment)
    env["TMP_INPUT_DIR"] = str(input_dir)
    env["TMP_OUTPUT_DIR"] = str(output_dir)
    if input_path is not None:
        env["INPUT_FILE_PATH"] = str(input_path)
    if isinstance(inp, ObjectRef):
        env["STORAGE_OBJECT_KEY"] = inp.storage_object_key
        if inp.event_time:
            env["EVENT_TIME"] = inp.event_time
    if (text := _event_json(event, inp)) is not None:
        env["EVENT"] = text
    if job.platform in (Platform.LAMBDA, Platform.BATCH) and job.request_id not in ("", "-"):
        env["AWS_LAMBDA_REQUEST_ID"] = job.request_id
    for name, value in (event.query if event else {}).items():
        env[f"CONT_VAR_{name}"] = str(value)
    return {k: v for k, v in env.items() if "\x00" not in k and "\x00" not in v and "=" not in k}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class _Timer:
    def __init__(self, record: ResultRecord) -> None:
        self.record = record

    def __call__(self, name: str) -> "_Timer":
        self.name = name
        return self

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.record.timings[self.name] = round(time.monotonic() - self.start, 4)


def _check_shutdown(job: Job) -> None:
    if job.shutdown.is_set():
        raise Interrupted("stopped by a termination signal before the work was done")


def run_input(job: Job, event: Event | None, inp: Input | None, response: BinaryIO | None = None) -> ResultRecord:
    """Process one input end to end. Never raises for the record's own failures: they are recorded.

    `inp` None runs the model once with no input file (a SCAR invocation carrying only a script).
    """
    record = ResultRecord(
        input=inp.to_dict() if inp is not None else {"inline": True, "file_name": None, "size": 0},
        platform=job.platform.value,
        request_id=job.request_id,
        handler=job.config.conveyor.handler.name,
        job_id=job.job_id,
        started_at=_now(),
        extra=dict(job.extra),
    )
    timer = _Timer(record)
    started = time.monotonic()
    _store_start(job, record)
    work = Path(tempfile.mkdtemp(prefix="conveyor-", dir=job.scratch_dir))
    input_dir, output_dir, scratch = work / "input", work / "output", work / "work"
    for folder in (input_dir, output_dir, scratch):
        folder.mkdir()
    log_file = work / "model.log"
    log_file.touch()
    try:
        _check_shutdown(job)
        input_path = _fetch(job, inp, input_dir, record, timer)
        deadline = job.deadline.sooner(job.config.conveyor.timeout)
        inv = Invocation(
            input=inp,
            input_path=input_path,
            input_dir=input_dir,
            output_dir=output_dir,
            work_dir=scratch,
            env=child_env(job, event, inp, input_path, input_dir, output_dir),
            deadline=deadline,
            log=log,
            log_file=log_file,
            shutdown=job.shutdown,
            event=event,
            request_id=job.request_id,
            grace_period=job.grace,
            log_max_bytes=job.config.conveyor.log_max_bytes,
        )
        record.extra["warm_start"] = job.handler.ready
        with timer("handler"):
            job.handler.ensure_setup()
            result = job.handler.handle(inv)
        record.exit_code = result.exit_code
        record.extra.update(result.details)
        _check_shutdown(job)
        files = collect_outputs(output_dir)
        if not files and output_required(job.config, event):
            raise NoOutputError("the model finished but wrote no output file", output_dir=str(output_dir))
        _publish(job, inp, output_dir, files, record, timer)
        if response is not None:
            record.extra["response"] = write_sync_response(output_dir, files, result.stdout_path, response, scratch)
        record.status = Status.SUCCEEDED
    except ConveyorError as exc:
        record.status = Status.FAILED
        record.error = exc.to_dict()
        if record.exit_code is None and "exit_code" in exc.context:
            record.exit_code = exc.context["exit_code"]
    except Exception as exc:  # a bug of ours or a handler's: still a FAILED record, never a lost input
        log.exception("unexpected error while processing %s", _describe(inp))
        record.status = Status.FAILED
        record.error = {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}
    finally:
        # the model's own output may echo a secret it was given (OSCAR_SERVICE_TOKEN ...): never into the record
        log_tail = tail(log_file, job.config.conveyor.log_tail_bytes)
        record.log_tail = mask_values(log_tail, job.config.secret_values(job.base_env))
        record.timings["total"] = round(time.monotonic() - started, 4)
        record.finished_at = _now()
        shutil.rmtree(work, ignore_errors=True)
    _store_record(job, record)
    return record


def _store_start(job: Job, record: ResultRecord) -> None:
    """The start record: the record as it begins, status RUNNING, at the status key the final record
    overwrites, so whoever watches the status location (the gateway) sees the input being processed.
    One small PUT, when the config names a status location; a failure is logged and noted in the
    final record, never the record's failure."""
    spec = job.config.conveyor.status
    if spec is None:
        return
    start = replace(record, status=Status.RUNNING)
    bucket, key = status_key(spec, start)
    try:
        job.stores.get(spec.provider).put_bytes(start.to_json().encode(), bucket, key)
    except Exception as exc:  # whatever it is, the input is still processed and its final record written
        message = exc.message if isinstance(exc, ConveyorError) else f"{type(exc).__name__}: {exc}"
        log.warning("could not upload the start record to %s/%s: %s", bucket, key, message)
        record.extra["status_start_error"] = message


def _describe(inp: Input | None) -> str:
    if inp is None:
        return "an invocation without input"
    return f"inline payload {inp.file_name}" if isinstance(inp, InlineInput) else f"{inp.bucket}/{inp.key}"


def _fetch(job: Job, inp: Input | None, input_dir: Path, record: ResultRecord, timer: _Timer) -> Path | None:
    if inp is None:
        return None
    if isinstance(inp, InlineInput):
        path = input_dir / safe_file_name(inp.file_name)
        path.write_bytes(inp.data)
        record.bytes_in = len(inp.data)
        return path
    if job.config.file_stage_in:
        log.info("file_stage_in is set: %s/%s is not downloaded", inp.bucket, inp.key)
        return None
    path = input_dir / safe_file_name(inp.key)
    if path.resolve().parent != input_dir.resolve():  # belt and braces: safe_file_name gives one component
        raise StorageError("refusing an input path outside the work directory", key=inp.key)
    store = job.stores.get(input_provider(inp))
    with timer("download"):
        record.bytes_in = store.download(inp.bucket, inp.key, path)
    log.info("downloaded %s/%s (%d bytes) to %s", inp.bucket, inp.key, record.bytes_in, path.name)
    return path


def _publish(
    job: Job, inp: Input | None, output_dir: Path, files: list[str], record: ResultRecord, timer: _Timer
) -> None:
    event_bucket = inp.bucket if isinstance(inp, ObjectRef) else None
    plan = plan_uploads(output_dir, files, job.config, event_bucket)
    if files and not plan and job.config.outputs:
        log.warning("no output entry matches any of the %d output files: nothing uploaded", len(files))
    done: list[Upload] = []
    with timer("upload"):
        try:
            for upload in plan:
                _check_shutdown(job)
                store = job.stores.get(upload.provider)
                try:
                    record.bytes_out += store.upload(upload.src, upload.bucket, upload.key)
                finally:
                    done.append(upload)  # even a failed upload may have landed (its answer was lost)
                log_upload(upload.target, job.request_id)  # conveyor local reads these of a job that died
        except BaseException:
            left = _withdraw(job, done)
            if left:
                record.extra["not_withdrawn"] = left
            raise
    record.outputs = [upload.target for upload in done]


def _withdraw(job: Job, uploads: list[Upload]) -> list[str]:
    """A failed record publishes nothing: remove every object it uploaded or tried to upload. The
    store may be the very thing that failed (restarting, unreachable), so the removal keeps trying
    for up to `conveyor.withdraw_timeout` seconds, within the job's deadline; a single pass after a
    shutdown signal. A removal the store refuses (a 4xx answer) is not asked again; an object or
    bucket that does not exist counts as removed. Returns the targets that could not be removed
    (logged, and named in the record)."""
    window = 0.0 if job.shutdown.is_set() else job.config.conveyor.withdraw_timeout
    remaining = job.deadline.remaining()
    if remaining is not None:
        window = min(window, max(0.0, remaining - WITHDRAW_MARGIN))
    give_up = time.monotonic() + window
    pause, cap = job.withdraw_backoff
    pending = list(uploads)
    failures: dict[str, str] = {}  # target -> why it is still there (the last answer)
    while True:
        retry: list[Upload] = []
        for upload in pending:
            try:
                job.stores.get(upload.provider).delete(upload.bucket, upload.key)
                failures.pop(upload.target, None)
            except ConveyorError as exc:
                failures[upload.target] = exc.message
                if not is_permanent(exc):  # a 4xx (access denied ...) is the same answer next time
                    retry.append(upload)
        pending = retry
        if not pending or job.shutdown.is_set() or time.monotonic() + pause > give_up:
            break
        log.warning("cannot withdraw %d output(s) yet, retrying in %.1f s: %s",
                    len(pending), pause, failures[pending[0].target])
        job.shutdown.wait(pause)
        pause = min(pause * 2, cap)
    for upload in uploads:
        if upload.target in failures:
            log.error("could not withdraw %s after a failed upload: %s", upload.target, failures[upload.target])
        else:
            log.warning("withdrew %s: an upload of this record failed, so none of its outputs stays", upload.target)
    return [upload.target for upload in uploads if upload.target in failures]


def _store_record(job: Job, record: ResultRecord) -> None:
    """Log the record (the record protocol's line); upload it to the status location when the config names one."""
    spec = job.config.conveyor.status
    if spec is not None:
        bucket, key = status_key(spec, record)
        try:
            job.stores.get(spec.provider).put_bytes(record.to_json().encode(), bucket, key)
        except ConveyorError as exc:
            log.error("could not upload the result record to %s/%s: %s", bucket, key, exc.message)
            record.extra["status_upload_error"] = exc.message
    log_result(record)


def run_event(job: Job, event: Event, response: BinaryIO | None = None) -> list[ResultRecord]:
    """Process every input of an event in order. After a shutdown signal the rest are recorded as FAILED.

    A storage event with no object (s3:TestEvent) does nothing; a payload with no input at all
    (SCAR's `{"script": ...}`, an empty body) runs the model once without an input file.
    """
    event = bind_inputs(event, job.config)  # dCache, Rucio, OneTrigger refs: their folder and provider
    sink = response if responds_inline(event) else None
    inputs = [inp for inp in event.inputs if not _is_removal(inp)]
    if len(inputs) < len(event.inputs):
        log.info("skipping %d removal notification(s): there is no object to fetch", len(event.inputs) - len(inputs))
        if not inputs:
            return []
    if not inputs:
        if event.kind == "storage":
            log.info("the event holds no object to process")
            return []
        return [run_input(job, event, None, sink)]
    return [run_input(job, event, inp, sink) for inp in inputs]


def responds_inline(event: Event) -> bool:
    """Does the caller get the output itself as the response? For an HTTP request or a raw payload
    with one input (or none); an HTTP body holding a storage event of several records gets the
    result records instead, as a storage event would."""
    return event.wants_response and len(event.inputs) <= 1


def _is_removal(inp: Input) -> bool:
    """S3/MinIO "ObjectRemoved:*" and EventBridge "Object Deleted" records name no object to fetch."""
    name = (inp.event_name or "") if isinstance(inp, ObjectRef) else ""
    return "ObjectRemoved" in name or name == "Object Deleted"
