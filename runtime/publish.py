"""A record's outputs: uploaded, or withdrawn when the record fails.

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
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar, cast

from conveyor.deadline import Deadline
from conveyor.errors import ConveyorError, Interrupted, StorageError
from conveyor.job import Job, Timer, check_shutdown
from conveyor.outputs import OutputFolder, Upload, plan_uploads
from conveyor.records import ResultRecord, log_upload, status_key
from conveyor.storage import ObjectStore, Written, is_permanent, is_taken

log = logging.getLogger(__name__)

WITHDRAW_MARGIN = 1.0  # seconds before the job's deadline at which a failed record stops withdrawing
POLL = 0.05  # seconds between looks at the deadline and the shutdown flag while a transfer runs
T = TypeVar("T")


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


def publish(
    job: Job,
    folder: OutputFolder,
    files: list[str],
    record: ResultRecord,
    timer: Timer,
    deadline: Deadline | None = None,
    claims: Claims | None = None,
    *,
    event_bucket: str | None = None,
    sub: str = "",
) -> None:
    """Upload every planned output, file by file, each from the one descriptor opened for it just
    before its uploads (at most one output file open at a time, however many the model wrote); on
    any failure withdraw what this record created (see the module docstring). `event_bucket` and
    `sub` place the outputs (plan_uploads: USER isolation, keep_input_folders)."""
    deadline = deadline or job.deadline
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
                check_shutdown(job)
                file = folder.open_file(rel)  # once, just before its uploads: a link or a FIFO by now is skipped
                if file is None:
                    continue
                with file:
                    shared = cast(BinaryIO, _CancellableFile(file, cancel))
                    for upload in uploads:
                        check_shutdown(job)
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
        left = withdraw(job, [a.upload for a in mine], {a.upload.target: a.etag for a in mine},
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


def withdraw(
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


def store_amended(job: Job, claims: Claims) -> None:
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
