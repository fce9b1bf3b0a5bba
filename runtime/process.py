"""The job: for every input of an event, fetch -> handler -> upload, under a deadline, with a
result record per input.

A record either SUCCEEDS (the model exited cleanly and every output was uploaded) or FAILS
(nothing it created stays in the output paths, the error and log tail go to the record). Per-record
work directories live under the scratch dir and are removed afterwards, success or not.

Publishing (conveyor.publish) never destroys what another record or run published; the scratch
folder (conveyor.scratch) marks each work directory with its owner.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from conveyor.child import tail
from conveyor.config import FunctionConfig, ProviderRef
from conveyor.config.model import MAX_ARG_STRLEN, PRIVATE_VARS
from conveyor.config.redaction import mask_values
from conveyor.errors import ConveyorError, Interrupted, NoOutputError, StorageError
from conveyor.events import (
    Event,
    InlineInput,
    Input,
    ObjectRef,
    bind_inputs,
    check_within_inputs,
    provider_type,
)
from conveyor.handler import Invocation
from conveyor.isolation import model_user
from conveyor.job import Job, Timer, check_shutdown
from conveyor.outputs import OutputFolder, input_folder, safe_file_name
from conveyor.platform import Platform
from conveyor.publish import Claims, publish, store_amended
from conveyor.records import ResultRecord, Status, log_result, status_key
from conveyor.response import write_sync_response
from conveyor.scratch import WORK_PREFIX, mark_owner
from conveyor.unpack import handle_input

log = logging.getLogger(__name__)


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


# EVENT of the whole event, per event object (by identity: an Event holds dicts, so it has no hash):
# computed on its first record and reused by the others, so a record's cost does not grow with
# the size of its event. An entry goes when its event does.
_WHOLE_EVENT: dict[int, str | None] = {}


def _whole_event_json(event: Event) -> str | None:
    """EVENT holding the whole event, or None when it does not fit (or is not text)."""
    key = id(event)
    if key not in _WHOLE_EVENT:
        _WHOLE_EVENT[key] = _serialise_event(event)
        weakref.finalize(event, _WHOLE_EVENT.pop, key, None)
    return _WHOLE_EVENT[key]


def _serialise_event(event: Event) -> str | None:
    """The event as received; an OSCAR delegation wrapper gives the event inside it, re-serialized by
    json.dumps as faas-supervisor does. None when too large for one environment variable."""
    raw = event.raw
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) >= MAX_ARG_STRLEN:  # too large whatever it decodes to
            return None
        try:
            return _env_value(bytes(raw).decode())
        except UnicodeDecodeError:
            return None
    inner = event.inner_event
    return _env_value(json.dumps(raw, ensure_ascii=False) if inner is None else json.dumps(inner))


def _event_json(event: Event | None, inp: Input | None) -> str | None:
    """EVENT for the child: the event as received, else (too large) this record alone."""
    if event is None:
        return None
    whole = _whole_event_json(event)
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


def run_input(
    job: Job,
    event: Event | None,
    inp: Input | None,
    response: BinaryIO | None = None,
    claims: Claims | None = None,
    fetched: Path | None = None,
) -> ResultRecord:
    """Process one input end to end. Never raises for the record's own failures: they are recorded.

    `inp` None runs the model once with no input file (a SCAR invocation carrying only a script).
    `claims`: the output keys the event's earlier records planned (run_event passes one per event).
    `fetched`: the object `inp` names, already downloaded to this local file (`conveyor sweep`
    downloads ahead while the model works): moved into the work directory instead of fetched.
    """
    record = job.new_record(inp, started_at=_now(), extra=dict(job.extra))
    timer = Timer(record)
    started = time.monotonic()
    _store_start(job, record)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=job.scratch_dir))
    mark_owner(work)
    work_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)  # the outputs' anchor
    outputs: OutputFolder | None = None
    input_dir, output_dir, scratch = work / "input", work / "output", work / "work"
    for folder in (input_dir, output_dir, scratch):
        folder.mkdir()
    log_file = work / "model.log"
    log_file.touch()
    try:
        check_shutdown(job)
        user = model_user(job.config)  # conveyor.isolate_model: ConfigError when it cannot hold
        input_path = _fetch(job, inp, input_dir, record, timer, fetched)
        if user is not None:  # after the download: nothing of the model's may lie in its way
            work.chmod(0o711)  # the model may reach its folders, not list or touch the log beside them
            user.hand_over(input_dir, output_dir, scratch)
        deadline = job.deadline.sooner(job.config.conveyor.timeout)
        env = child_env(job, event, inp, input_path, input_dir, output_dir)
        if user is not None:
            env["HOME"] = str(scratch)  # Conveyor's home is not the model's to write
        inv = Invocation(
            input=inp,
            input_path=input_path,
            input_dir=input_dir,
            output_dir=output_dir,
            work_dir=scratch,
            env=env,
            deadline=deadline,
            log=log,
            log_file=log_file,
            shutdown=job.shutdown,
            event=event,
            request_id=job.request_id,
            grace_period=job.grace,
            log_max_bytes=job.config.conveyor.log_max_bytes,
            user=user,
        )
        record.extra["warm_start"] = job.handler.ready
        with timer("handler"):
            job.handler.ensure_setup()
            result, output_dir = handle_input(job, inv, record, work, output_required(job.config, event))
        record.exit_code = result.exit_code
        record.extra.update(result.details)
        check_shutdown(job)
        outputs = OutputFolder.open(output_dir, parent_fd=work_fd)
        files = outputs.files() if outputs is not None else []
        if not files and output_required(job.config, event):
            raise NoOutputError("the model finished but wrote no output file", output_dir=str(output_dir))
        if outputs is not None:
            event_bucket = inp.bucket if isinstance(inp, ObjectRef) else None
            sub = (
                input_folder(job.config, str(input_provider(inp)), inp.bucket, inp.key)
                if isinstance(inp, ObjectRef) else ""
            )
            publish(job, outputs, files, record, timer, deadline, claims, event_bucket=event_bucket, sub=sub)
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
        if outputs is not None:
            outputs.close()
        os.close(work_fd)
        shutil.rmtree(work, ignore_errors=True)
    store_record(job, record)
    if claims is not None:
        store_amended(job, claims)
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


def _fetch(
    job: Job, inp: Input | None, input_dir: Path, record: ResultRecord, timer: Timer, fetched: Path | None = None
) -> Path | None:
    if inp is None:
        return None
    if isinstance(inp, ObjectRef):  # before anything is read, whether Conveyor or the model fetches it
        check_within_inputs(inp, str(input_provider(inp)), job.config)
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
    if fetched is not None:  # downloaded ahead (conveyor sweep): the same checks, then moved in
        record.bytes_in = fetched.stat().st_size
        shutil.move(fetched, path)
        record.extra["prefetched"] = True
        return path
    store = job.stores.get(input_provider(inp))
    with timer("download"):
        record.bytes_in = store.download(inp.bucket, inp.key, path)
    log.info("downloaded %s/%s (%d bytes) to %s", inp.bucket, inp.key, record.bytes_in, path.name)
    return path


def store_record(job: Job, record: ResultRecord) -> None:
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
    """Process every input of an event in order. After a shutdown signal the inputs not yet started
    are not started: each gets a FAILED record at once (see _not_started).

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
    claims = Claims()  # the output keys of this event's records: two records, one key is a conflict
    records: list[ResultRecord] = []
    for index, inp in enumerate(inputs):
        if job.shutdown.is_set():
            records.extend(_not_started(job, inputs[index:], len(inputs)))
            break
        records.append(run_input(job, event, inp, sink, claims))
    return records


NOT_STARTED_SHOWN = 10  # inputs named in the summary line of those a shutdown left unstarted


def _not_started(job: Job, inputs: list[Input], total: int) -> list[ResultRecord]:
    """The FAILED records of the inputs a shutdown signal left unstarted, made without any work or
    log line per input (no work directory, no status upload, no record protocol line: the grace
    period is for the record under way, and an event may hold 100,000 inputs). They are returned
    with the others (the exit code, a response's records); one summary line names the first few
    and the last, and counts them."""
    names = ", ".join(_describe(inp) for inp in inputs[:NOT_STARTED_SHOWN])
    if len(inputs) > NOT_STARTED_SHOWN:
        names += f" ... {_describe(inputs[-1])}"
    log.warning("stopped by a termination signal: %d of the event's %d input(s) not started, each "
                "recorded as FAILED (interrupted) without a line of its own: %s", len(inputs), total, names)
    error = Interrupted("not started: stopped by a termination signal before this input's turn").to_dict()
    now = _now()
    records = []
    for inp in inputs:
        record = job.new_record(inp, status=Status.FAILED, error=dict(error), started_at=now,
                                extra={**job.extra, "not_started": True})
        records.append(record)
    return records


def responds_inline(event: Event) -> bool:
    """Does the caller get the output itself as the response? For an HTTP request or a raw payload
    with one input (or none); an HTTP body holding a storage event of several records gets the
    result records instead, as a storage event would."""
    return event.wants_response and len(event.inputs) <= 1


def _is_removal(inp: Input) -> bool:
    """S3/MinIO "ObjectRemoved:*" and EventBridge "Object Deleted" records name no object to fetch."""
    name = (inp.event_name or "") if isinstance(inp, ObjectRef) else ""
    return "ObjectRemoved" in name or name == "Object Deleted"
