"""The job: for every input of an event, fetch -> handler -> upload, under a deadline, with a
result record per input.

A record either SUCCEEDS (the model exited cleanly and every output was uploaded) or FAILS
(nothing it created stays in the output paths, the error and log tail go to the record). Per-record
work directories live under the scratch dir and are removed afterwards, success or not.

Publishing never destroys what another record or run published:

- Each output key is checked (`ObjectStore.version`) just before its upload. A key that did not
  exist is written create-only (`If-None-Match: *` in the S3 store, atomic there); a key that
  existed (a duplicate delivery of the same event, a rerun) is overwritten, as a redelivery must,
  but is never withdrawn: a failed record names it under `kept` in its record. Should the
  create-only write be refused (another writer created the key since the check, or this very
  write landed and its retry, after a lost answer, found it), the key counts as not this record's:
  the safe side.
- A failed record withdraws only the keys it created, and each only while it still holds the
  version this record wrote (`delete(if_match=etag)`: atomic in the S3 store, compared just before
  in the others), so a run that overwrote it since keeps its object.
- Two records of one event whose outputs map to the same key are a conflict, found before any
  upload of the later record: the later record fails naming the earlier one, and the earlier
  record (which stays SUCCEEDED: its outputs are its own) gets `conflicts` in its extra and is
  stored again at the status location.

Limits: a key that existed before is overwritten with this record's output even when the record
then fails (it holds a complete output of the same input, from the failed run); the stores that
cannot write conditionally (MinIO through its SDK, WebDAV, Onedata, local folders) leave a window of
one request between the check and the write or the removal; WebDAV and Onedata give no version, so
a withdrawal there removes what is under a key this record created, whoever wrote it last.

Every step has the record's deadline: uploads (and the checks around them) run in a daemon thread
that the job stops waiting for at the deadline or on SIGTERM; the abandoned transfer's file then
refuses to be read, so it stops at its next read and aborts its multipart upload (half the grace
period is given to that), and the withdrawal gets the other half: the record ends within its
timeout plus its grace period. A store that already received a whole object may still keep it:
the record names what it could not withdraw (`not_withdrawn`).

For `conveyor local`, which withdraws what a job killed before its record had created, the
record protocol's `uploaded` line for a key this record creates is written before its upload.
Work directories are marked with their owner (pid, start time, pid namespace): `scratch_dir`
removes at start those whose owner died (SIGKILL leaves them).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

from conveyor.child import tail
from conveyor.config import FunctionConfig, ProviderRef
from conveyor.config.model import MAX_ARG_STRLEN, PRIVATE_VARS
from conveyor.config.redaction import mask_values
from conveyor.deadline import Deadline
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
from conveyor.handler import Handler, Invocation
from conveyor.isolation import model_user
from conveyor.outputs import OutputFolder, Upload, input_folder, plan_uploads, safe_file_name
from conveyor.platform import Platform
from conveyor.records import ResultRecord, Status, log_result, log_upload, status_key
from conveyor.response import write_sync_response
from conveyor.storage import ObjectStore, TransferOptions, Written, is_permanent, is_taken, open_store

log = logging.getLogger(__name__)

WITHDRAW_MARGIN = 1.0  # seconds before the job's deadline at which a failed record stops withdrawing
# A failed record's withdrawal retries after these pauses: the first, doubled each time up to the cap.
WITHDRAW_BACKOFF = (0.5, 4.0)
POLL = 0.05  # seconds between looks at the deadline and the shutdown flag while a transfer runs
T = TypeVar("T")


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
    temporary directory (/tmp under Lambda, where TMPDIR is unset). Created when missing; the work
    directories that dead Conveyor processes left there are removed (sweep_scratch)."""
    scratch = Path(environ.get("CONVEYOR_SCRATCH") or environ.get("TMPDIR") or tempfile.gettempdir())
    scratch.mkdir(parents=True, exist_ok=True)
    removed = sweep_scratch(scratch)
    if removed:
        log.warning("removed %d work director%s left in %s by Conveyor processes that died: %s", len(removed),
                    "y" if len(removed) == 1 else "ies", scratch, ", ".join(removed[:5]))
    return scratch


WORK_PREFIX = "conveyor-"  # a record's work directory: <scratch>/conveyor-XXXXXXXX
OWNER_MARK = ".conveyor-owner"  # in it: the owning process, "<pid> <start time> <pid namespace>"


def start_time(pid: int) -> str | None:
    """When a process started (clock ticks after boot, /proc/<pid>/stat field 22): with its pid,
    what tells a live process from a recycled pid. None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return stat[stat.rfind(b")") + 2 :].split()[19].decode()
    except (OSError, IndexError, ValueError):
        return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "-"


def mark_owner(work: Path) -> None:
    """Mark a work directory as this process's (sweep_scratch leaves it alone while we live)."""
    pid = os.getpid()
    (work / OWNER_MARK).write_text(f"{pid} {start_time(pid) or '-'} {_pid_namespace()}")


def sweep_scratch(scratch: Path) -> list[str]:
    """Remove the work directories in `scratch` whose owner (their OWNER_MARK) is dead: its pid
    gone, or taken by a process that started at another time. A directory without a mark (being
    created, or an older Conveyor's) or marked by another pid namespace (a container sharing the
    folder: its pids mean nothing here) is left alone. Returns the names removed."""
    namespace = _pid_namespace()
    removed: list[str] = []
    try:
        entries = list(os.scandir(scratch))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(WORK_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            mark = (Path(entry.path) / OWNER_MARK).read_text().split()
        except (OSError, UnicodeDecodeError):
            continue
        if len(mark) != 3 or not mark[0].isdigit() or namespace == "-" or mark[2] != namespace:
            continue
        if start_time(int(mark[0])) == mark[1]:
            continue  # its owner is alive
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    return sorted(removed)


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


def run_input(
    job: Job,
    event: Event | None,
    inp: Input | None,
    response: BinaryIO | None = None,
    claims: Claims | None = None,
) -> ResultRecord:
    """Process one input end to end. Never raises for the record's own failures: they are recorded.

    `inp` None runs the model once with no input file (a SCAR invocation carrying only a script).
    `claims`: the output keys the event's earlier records planned (run_event passes one per event).
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
        _check_shutdown(job)
        user = model_user(job.config)  # conveyor.isolate_model: ConfigError when it cannot hold
        input_path = _fetch(job, inp, input_dir, record, timer)
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
            result = job.handler.handle(inv)
        record.exit_code = result.exit_code
        record.extra.update(result.details)
        _check_shutdown(job)
        outputs = OutputFolder.open(output_dir, parent_fd=work_fd)
        files = outputs.files() if outputs is not None else []
        if not files and output_required(job.config, event):
            raise NoOutputError("the model finished but wrote no output file", output_dir=str(output_dir))
        if outputs is not None:
            _publish(job, inp, outputs, files, record, timer, deadline, claims)
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
    _store_record(job, record)
    if claims is not None:
        _store_amended(job, claims)
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
    store = job.stores.get(input_provider(inp))
    with timer("download"):
        record.bytes_in = store.download(inp.bucket, inp.key, path)
    log.info("downloaded %s/%s (%d bytes) to %s", inp.bucket, inp.key, record.bytes_in, path.name)
    return path


@dataclass
class _Attempt:
    """One output upload of a record: was the key absent before it (then the record created it and
    may withdraw it), and the version it wrote (None: unknown, the answer never came)."""

    upload: Upload
    created: bool
    etag: str | None = None


class Claims:
    """The output keys the records of one event planned, to find two that map to the same key."""

    def __init__(self) -> None:
        self._owner: dict[str, ResultRecord] = {}
        self.amended: list[ResultRecord] = []  # earlier records told of a conflict: to store again

    def claim(self, plan: list[Upload], record: ResultRecord) -> None:
        """Claim every target of `plan` for `record`, or raise (claiming nothing) when an earlier
        record of the event claimed one: both records are told."""
        clashes = {u.target: self._owner[u.target] for u in plan if self._owner.get(u.target, record) is not record}
        if clashes:
            for target, earlier in clashes.items():
                earlier.extra.setdefault("conflicts", []).append({"target": target, "with": _input_name(record.input)})
                if all(earlier is not other for other in self.amended):
                    self.amended.append(earlier)
            target, earlier = next(iter(clashes.items()))
            bucket, _, key = target.partition("/")
            raise StorageError(
                f"output conflict: {target} is also an output of {_input_name(earlier.input)}, an earlier "
                f"record of this event ({len(clashes)} key(s) in common); nothing of this record was uploaded",
                operation="upload",
                bucket=bucket,
                key=key,
                cause="OutputConflict",
                conflicts=[{"target": t, "with": _input_name(r.input)} for t, r in clashes.items()],
            )
        for upload in plan:
            self._owner[upload.target] = record


def _input_name(ref: dict[str, Any]) -> str:
    if ref.get("inline"):
        return f"inline payload {ref.get('file_name')}"
    return f"{ref.get('bucket')}/{ref.get('key')}"


class _CancellableFile:
    """An output file handed to an upload thread: once `cancel` is set, reading it fails, so a
    transfer the job stopped waiting for (deadline, SIGTERM) stops at its next read."""

    def __init__(self, file: BinaryIO, cancel: threading.Event) -> None:
        self._file = file
        self._cancel = cancel

    def read(self, size: int = -1) -> bytes:
        if self._cancel.is_set():
            raise OSError("the upload was abandoned (the record's deadline or a termination signal)")
        return self._file.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def __getattr__(self, name: str) -> Any:  # mode, name ...: what HTTP clients look at
        return getattr(self._file, name)


def _bounded(
    job: Job,
    until: Deadline,
    what: str,
    call: Callable[[], T],
    *,
    stoppable: bool = True,
    threads: list[threading.Thread] | None = None,
) -> T:
    """Run `call` in a daemon thread and wait for it until `until` (a StorageError when it passes)
    or, when `stoppable`, a shutdown signal (Interrupted). A thread left behind cannot keep the
    process alive, and its transfer stops at the next read of a _CancellableFile. `threads`
    collects the thread, for a caller that gives it a moment to clean up (abort a multipart upload)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed over to the waiting thread
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=run, name=f"conveyor-{what}", daemon=True)
    thread.start()
    if threads is not None:
        threads.append(thread)
    while not done.wait(POLL):
        if stoppable and job.shutdown.is_set():
            raise Interrupted(f"stopped by a termination signal during {what}")
        if until.expired():
            raise StorageError(f"{what} did not finish before the record's deadline", cause="DeadlineExceeded")
    if "error" in box:
        raise box["error"]
    return cast(T, box["value"])


def _publish(
    job: Job,
    inp: Input | None,
    folder: OutputFolder,
    files: list[str],
    record: ResultRecord,
    timer: _Timer,
    deadline: Deadline | None = None,
    claims: Claims | None = None,
) -> None:
    """Upload every planned output, file by file, each from the one descriptor opened for it just
    before its uploads (at most one output file open at a time, however many the model wrote); on
    any failure withdraw what this record created (see the module docstring)."""
    deadline = deadline or job.deadline
    event_bucket = inp.bucket if isinstance(inp, ObjectRef) else None
    sub = (
        input_folder(job.config, str(input_provider(inp)), inp.bucket, inp.key) if isinstance(inp, ObjectRef) else ""
    )
    plan = plan_uploads(folder.path, files, job.config, event_bucket, sub)
    if files and not plan and job.config.outputs:
        log.warning("no output entry matches any of the %d output files: nothing uploaded", len(files))
    if claims is not None:
        claims.claim(plan, record)  # before anything is opened or uploaded
    by_file: dict[str, list[Upload]] = {}  # one open per file, however many destinations it has
    for upload in plan:
        by_file.setdefault(upload.rel, []).append(upload)
    attempts: list[_Attempt] = []
    cancel = threading.Event()
    inflight: list[threading.Thread] = []
    try:
        with timer("upload"):
            for rel, uploads in by_file.items():
                _check_shutdown(job)
                file = folder.open_file(rel)  # once, just before its uploads: a link or a FIFO by now is skipped
                if file is None:
                    continue
                with file:
                    shared = cast(BinaryIO, _CancellableFile(file, cancel))
                    for upload in uploads:
                        _check_shutdown(job)
                        record.bytes_out += _upload(job, upload, shared, deadline, attempts, inflight)
    except BaseException as exc:
        cancel.set()
        stopped = isinstance(exc, Interrupted) or (
            isinstance(exc, StorageError) and exc.context.get("cause") == "DeadlineExceeded"
        )
        # An abandoned transfer stops at its next read and aborts its multipart upload: half the
        # grace for that, half for the withdrawal, so the record ends within the grace.
        share = job.grace / 2 if stopped else job.grace
        settle = Deadline.after(share)
        for thread in inflight:
            thread.join(settle.remaining())
        mine = [a for a in attempts if a.created]
        # and never past the record's deadline plus the grace, whatever withdraw_timeout says
        until = Deadline(None if deadline.at is None else deadline.at + job.grace)
        left = _withdraw(job, [a.upload for a in mine], {a.upload.target: a.etag for a in mine},
                         window=0.0 if stopped else None, grace=share, until=until)
        if left:
            record.extra["not_withdrawn"] = left
        kept = [a.upload.target for a in attempts if not a.created]
        if kept:
            record.extra["kept"] = kept
            for target in kept:
                log.warning("kept %s: it existed before this record wrote it, so it is not withdrawn", target)
        raise
    record.outputs = [a.upload.target for a in attempts]


def _upload(
    job: Job,
    upload: Upload,
    file: BinaryIO,
    deadline: Deadline,
    attempts: list[_Attempt],
    inflight: list[threading.Thread],
) -> int:
    """One output: check the key, write it (create-only when it was absent), note the attempt
    before it can fail (a failed upload may have landed: its answer was lost). Returns bytes sent."""
    store = job.stores.get(upload.provider)
    before = _bounded(job, deadline, f"the check of {upload.target}", lambda: store.version(upload.bucket, upload.key))
    own = next((a for a in attempts if a.upload.target == upload.target), None)  # two entries, one key
    attempt = _Attempt(upload, created=before is None or (own is not None and own.created))
    attempts.append(attempt)
    if attempt.created:
        log_upload(upload.target, job.request_id)  # conveyor local withdraws these for a job that died

    def put(create_only: bool) -> Written:
        return store.put_file(file, upload.bucket, upload.key, create_only=create_only)

    try:
        written = _bounded(job, deadline, f"the upload of {upload.target}", lambda: put(before is None),
                           threads=inflight)
    except StorageError as exc:
        if before is not None or not is_taken(exc):
            raise
        # Created by another writer since the check (or by this very write, whose answer was lost
        # and whose retry was refused): not this record's to withdraw. Overwritten, as a rerun is.
        attempt.created = False
        written = _bounded(job, deadline, f"the upload of {upload.target}", lambda: put(False), threads=inflight)
    attempt.etag = written.etag
    return written.size


def _withdraw(
    job: Job,
    uploads: list[Upload],
    etags: dict[str, str | None] | None = None,
    window: float | None = None,
    grace: float = 0.0,
    until: Deadline | None = None,
) -> list[str]:
    """A failed record publishes nothing: remove every object it created (uploaded or tried to
    upload), each only while it holds the version this record wrote (`etags`; unknown: removed).
    The store may be the very thing that failed (restarting, unreachable), so the removal keeps
    trying for `window` seconds (default `conveyor.withdraw_timeout`, a single pass after a shutdown
    signal), within the job's deadline and `until`; no pass runs longer than max(window, grace), whatever the
    store does (each removal waits in a daemon thread). A removal the store refuses (a 4xx answer)
    is not asked again; an object or bucket that does not exist counts as removed. Returns the
    targets that could not be removed (logged, and named in the record)."""
    etags = etags or {}
    if window is None:
        window = 0.0 if job.shutdown.is_set() else job.config.conveyor.withdraw_timeout
    limit = max(window, grace)
    remaining = job.deadline.remaining()
    if remaining is not None:
        window = min(window, max(0.0, remaining - WITHDRAW_MARGIN))
        limit = min(limit, max(0.0, remaining - WITHDRAW_MARGIN))
    last = until.remaining() if until is not None else None
    if last is not None:  # the record's deadline plus its grace
        window, limit = min(window, last), min(limit, last)
    start = time.monotonic()
    give_up, stop = start + window, Deadline(start + limit)
    pause, cap = job.withdraw_backoff
    pending = list(uploads)
    failures: dict[str, str] = {}  # target -> why it is still there (the last answer)
    kept: set[str] = set()  # replaced since by another writer: theirs now
    while True:
        retry: list[Upload] = []
        for upload in pending:
            if stop.expired():
                failures.setdefault(upload.target, "no time left to withdraw it (the record's deadline, or the grace)")
                continue
            remove = _remover(job.stores.get(upload.provider), upload, etags.get(upload.target))
            try:
                if not _bounded(job, stop, f"the withdrawal of {upload.target}", remove, stoppable=False):
                    kept.add(upload.target)
                failures.pop(upload.target, None)
            except ConveyorError as exc:
                failures[upload.target] = exc.message
                if exc.context.get("cause") != "DeadlineExceeded" and not is_permanent(exc):
                    retry.append(upload)  # a 4xx (access denied ...) is the same answer next time
        pending = retry
        if not pending or stop.expired() or job.shutdown.is_set() or time.monotonic() + pause > give_up:
            break
        log.warning("cannot withdraw %d output(s) yet, retrying in %.1f s: %s",
                    len(pending), pause, failures[pending[0].target])
        job.shutdown.wait(pause)
        pause = min(pause * 2, cap)
    for upload in uploads:
        if upload.target in failures:
            log.error("could not withdraw %s after a failed upload: %s", upload.target, failures[upload.target])
        elif upload.target in kept:
            log.warning("kept %s: another writer replaced it after this record wrote it", upload.target)
        else:
            log.warning("withdrew %s: an upload of this record failed, so none of its outputs stays", upload.target)
    return [upload.target for upload in uploads if upload.target in failures]


def _remover(store: ObjectStore, upload: Upload, etag: str | None) -> Callable[[], bool]:
    """The removal of one created output: of the version this record wrote when it is known."""

    def remove() -> bool:
        if etag is None:  # the answer was lost: whatever is there came after a check that found nothing
            store.delete(upload.bucket, upload.key)
            return True
        return store.delete(upload.bucket, upload.key, if_match=etag)

    return remove


def _store_amended(job: Job, claims: Claims) -> None:
    """The earlier records a conflict was found with: say so, and re-write their stored copies
    (their result lines are not repeated: the record protocol has one per input)."""
    spec = job.config.conveyor.status
    while claims.amended:
        earlier = claims.amended.pop(0)
        clashes = "; ".join(f"{c['target']} is also an output of {c['with']}" for c in earlier.extra["conflicts"])
        log.warning("record of %s: %s", _input_name(earlier.input), clashes)
        if spec is None:
            continue
        bucket, key = status_key(spec, earlier)
        try:
            job.stores.get(spec.provider).put_bytes(earlier.to_json().encode(), bucket, key)
        except ConveyorError as exc:
            log.error("could not re-write the result record at %s/%s: %s", bucket, key, exc.message)


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
        record = ResultRecord(
            input=inp.to_dict(),
            platform=job.platform.value,
            request_id=job.request_id,
            handler=job.config.conveyor.handler.name,
            status=Status.FAILED,
            error=dict(error),
            job_id=job.job_id,
            started_at=now,
            extra={**job.extra, "not_started": True},
        )
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
