"""The shard's run: every input through the handler loaded once, with downloads and uploads
overlapping the model's work.

    prefetch thread   downloads the next inputs (at most PREFETCH files waiting on disk)
    main loop         starts a record when the model is free (its turn) and a lane is free
    lanes             run_input of one input each: the model (one at a time), then the uploads,
                      while the next lane's record already has the model

A record gets the model only when the previous one has left it, so no record waits for the
model with its deadline running; the model is never called twice at once. Records finish in
any order; each is stored as it ends (the order of records is not promised, their completeness is).

The sweep stops starting inputs on a termination signal (the record under way finishes or is
withdrawn, within the grace period) or when the store has failed STORE_FAILURES inputs in a row
(it is down: each of those already retried; the rest is left for a re-run). Inputs not started
get no record: a re-run picks them up, as it does every input not SUCCEEDED.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from conveyor.config import IOSpec
from conveyor.errors import ConveyorError, Interrupted, StorageError, exit_code_for
from conveyor.events import check_within_inputs
from conveyor.handler import Handler, HandlerResult, Invocation
from conveyor.job import Job
from conveyor.logs import bound_request_id
from conveyor.process import input_provider, run_input
from conveyor.records import ResultRecord
from conveyor.scratch import WORK_PREFIX, mark_owner
from conveyor.sweep.listing import Item, Plan, make_item
from conveyor.sweep.shards import Shard

log = logging.getLogger(__name__)

PREFETCH = 2  # inputs downloaded ahead of the model
LANES = 3  # records under way at once: one with the model, the others uploading (I/O-bound models gain)
STORE_FAILURES = 3  # inputs failed by the store in a row: it is down, the rest is left for a re-run
STORE_KINDS = ("storage", "credentials")
POLL = 0.1  # seconds between looks at the shutdown flag while waiting
PROGRESS_EVERY = 1.0  # seconds between progress lines


@dataclass
class Summary:
    """How a shard's run ended."""

    shard: Shard
    total: int  # the shard's inputs, skipped ones included
    skipped: int
    succeeded: int = 0
    failed: list[ResultRecord] = field(default_factory=list)  # in listing order (those that succeeded are
    # stored and logged, and only counted here: a shard of 100,000 inputs keeps no 100,000 records)
    left: int = 0  # not started: left for a re-run
    seconds: float = 0.0
    stopped: str | None = None  # why the sweep stopped early
    error: ConveyorError | None = None  # what stopped it before any input (the model's set-up)

    @property
    def processed(self) -> int:
        return self.succeeded + len(self.failed)

    @property
    def exit_code(self) -> int:
        """0 only when every input of the shard succeeded; else the first failure's code, as `run`."""
        if self.error is not None:
            return self.error.exit_code
        if self.failed:
            return exit_code_for((self.failed[0].error or {}).get("kind"))
        if self.left:
            return Interrupted.exit_code if self.stopped == SIGNALLED else StorageError.exit_code
        return 0

    def line(self) -> str:
        text = (f"conveyor sweep: {self.shard}: {self.processed} processed ({self.succeeded} succeeded, "
                f"{len(self.failed)} failed), {self.skipped} skipped (already SUCCEEDED)")
        if self.left:
            text += f", {self.left} left for a re-run"
        return f"{text}; {self.seconds:.1f} s"


SIGNALLED = "a termination signal"


def run_shard(job: Job, plan: Plan, *, say: Callable[[str], None] = lambda _: None, prefetch: int = PREFETCH,
              lanes: int = LANES) -> Summary:
    """Run the plan's inputs through `job.handler` (set up once, here); `say` gets the progress lines."""
    started = time.monotonic()
    summary = Summary(plan.shard, total=len(plan.todo) + len(plan.skipped), skipped=len(plan.skipped))
    if plan.todo:
        try:
            job.handler.ensure_setup()
        except ConveyorError as exc:
            summary.error, summary.left = exc, len(plan.todo)
            summary.stopped = f"the model could not be set up: {exc.message}"
        else:
            _Run(job, plan, say, prefetch, lanes).into(summary)
    summary.seconds = time.monotonic() - started
    return summary


class _Run:
    def __init__(self, job: Job, plan: Plan, say: Callable[[str], None], prefetch: int, lanes: int) -> None:
        self.job, self.plan = job, plan
        self.progress = _Progress(len(plan.todo), say)
        self.prefetch, self.lanes = prefetch, threading.BoundedSemaphore(lanes)
        self.turn = threading.Semaphore(1)  # the model's: held from a record's start to the end of its handle()
        self.succeeded = 0
        self.failed: dict[int, ResultRecord] = {}  # by listing index
        self.lock = threading.Lock()
        self.store_failures = 0
        self.stopped: str | None = None

    def into(self, summary: Summary) -> None:
        folder = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=self.job.scratch_dir))  # swept if we die
        mark_owner(folder)
        fetcher = _Prefetcher(self.job, self.plan.spec, self.plan.todo, folder, self.prefetch, self._stopping)
        threads: list[threading.Thread] = []
        try:
            for index, item, path in fetcher:
                if not self._take(self.turn):
                    break
                if not self._take(self.lanes):
                    self.turn.release()
                    break
                thread = threading.Thread(target=self._lane, args=(index, item, path), name=f"conveyor-sweep-{index}")
                thread.start()
                fetcher.started()
                threads = [t for t in threads if t.is_alive()] + [thread]
        finally:
            fetcher.close()
            for thread in threads:
                thread.join()
            shutil.rmtree(folder, ignore_errors=True)
        summary.succeeded, summary.failed = self.succeeded, [self.failed[i] for i in sorted(self.failed)]
        summary.left = len(self.plan.todo) - summary.processed
        summary.stopped = SIGNALLED if self.job.shutdown.is_set() else self.stopped
        if summary.left:
            log.warning("stopped by %s: %d input(s) not started, left for a re-run",
                        summary.stopped or "an error", summary.left)

    def _stopping(self) -> bool:
        return self.job.shutdown.is_set() or self.stopped is not None

    def _take(self, semaphore: threading.Semaphore) -> bool:
        """Acquire `semaphore` unless the sweep stops first (then False, nothing held)."""
        while not semaphore.acquire(timeout=POLL):
            if self._stopping():
                return False
        if self._stopping():
            semaphore.release()
            return False
        return True

    def _lane(self, index: int, item: Item, path: Path | None) -> None:
        release = _once(self.turn.release)
        job = replace(self.job, handler=_ModelTurn(self.job.handler, release))
        try:
            with bound_request_id(job.request_id):
                record = run_input(job, item.event, item.ref, fetched=path)
            self._note(index, record)
        finally:
            release()
            self.lanes.release()

    def _note(self, index: int, record: ResultRecord) -> None:
        with self.lock:
            if record.ok:
                self.succeeded += 1
            else:
                self.failed[index] = record
            kind = (record.error or {}).get("kind")
            self.store_failures = self.store_failures + 1 if not record.ok and kind in STORE_KINDS else 0
            if self.store_failures >= STORE_FAILURES and self.stopped is None:
                self.stopped = f"the store failing {self.store_failures} inputs in a row"
                log.error("the store failed %d inputs in a row (the last: %s): stopping the sweep, the rest is "
                          "left for a re-run", self.store_failures, (record.error or {}).get("message"))
            self.progress.note(record)


class _ModelTurn(Handler):
    """The shard's handler for one record: hands the model's turn on as soon as handle() returns,
    so the next record starts while this one uploads."""

    name = "sweep-turn"

    def __init__(self, inner: Handler, release: Callable[[], None]) -> None:
        super().__init__(inner.config, inner.options)
        self.inner, self.release = inner, release

    @property
    def ready(self) -> bool:
        return self.inner.ready

    def ensure_setup(self) -> None:
        self.inner.ensure_setup()

    def handle(self, inv: Invocation) -> HandlerResult:
        try:
            return self.inner.handle(inv)
        finally:
            self.release()

    def close(self) -> None:  # the shard's handler is closed once, by whoever loaded it
        pass


def _once(call: Callable[[], None]) -> Callable[[], None]:
    lock, done = threading.Lock(), [False]

    def once() -> None:
        with lock:
            if not done[0]:
                done[0] = True
                call()

    return once


class _Prefetcher:
    """Makes each key an Item and downloads it, in order, ahead of the model: at most `ahead` files
    waiting in `folder`. A download that fails (or an input that is refused before any download) is handed
    on without a file: run_input then fetches it itself, and records why it could not."""

    def __init__(self, job: Job, spec: IOSpec, keys: list[str], folder: Path, ahead: int,
                 stopping: Callable[[], bool]) -> None:
        self.job, self.spec, self.keys, self.folder, self.stopping = job, spec, keys, folder, stopping
        self.queue: queue.Queue[tuple[int, Item, Path | None] | None] = queue.Queue()
        self.room = threading.Semaphore(ahead)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="conveyor-prefetch", daemon=True)
        self.thread.start()

    def __iter__(self) -> Iterator[tuple[int, Item, Path | None]]:
        while True:
            try:
                entry = self.queue.get(timeout=POLL)
            except queue.Empty:
                if self.stopping():
                    return
                continue
            if entry is None:
                return
            yield entry

    def started(self) -> None:
        """The input last handed out has started (its file is the record's now): room for another."""
        self.room.release()

    def close(self) -> None:
        self.closed.set()
        self.thread.join(POLL * 5)  # a download under way is the store's to time out: it is a daemon

    def _halt(self) -> bool:
        return self.closed.is_set() or self.stopping()

    def _run(self) -> None:
        try:
            with bound_request_id(self.job.request_id):
                for index, key in enumerate(self.keys):
                    while not self.room.acquire(timeout=POLL):
                        if self._halt():
                            return
                    if self._halt():
                        return
                    item = make_item(self.spec, key)
                    self.queue.put((index, item, self._fetch(index, item)))
        finally:
            self.queue.put(None)

    def _fetch(self, index: int, item: Item) -> Path | None:
        if self.job.config.file_stage_in:
            return None
        provider = input_provider(item.ref)
        try:
            check_within_inputs(item.ref, str(provider), self.job.config)
        except ConveyorError:
            return None  # run_input refuses it again, and records why
        dest = self.folder / str(index)
        try:
            self.job.stores.get(provider).download(item.ref.bucket, item.ref.key, dest)
        except ConveyorError as exc:
            log.warning("could not download %s ahead (%s): it is fetched again in its turn", item.name, exc.message)
            _remove(dest)
            return None
        return dest


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _Progress:
    """done/total and the rate, at most one line a second (and the last one always)."""

    def __init__(self, total: int, say: Callable[[str], None]) -> None:
        self.total, self.say = total, say
        self.done = self.failed = 0
        self.start = self.last = time.monotonic()

    def note(self, record: ResultRecord) -> None:
        self.done += 1
        self.failed += not record.ok
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-6)
            self.say(f"conveyor sweep: {self.done}/{self.total} done ({self.failed} failed), {rate:.2f} inputs/s")
