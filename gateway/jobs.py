"""A user's jobs, read back from the stores the models' definitions name (the gateway keeps no database).

Job = one uploaded file. It lives at `<input path>/<user>/<upload id>/<stored name>` (names.py);
its result record at the runtime's status key for that input (conveyor.records.status_key); its
outputs are the record's `outputs`. A job id is looked up only under the caller's own folder, so
another user's id is not found, whatever is guessed.

States:
    PENDING     the input is stored; no record yet (the model has not started)
    RUNNING     the record says RUNNING (the runtime's start record)
    SUCCEEDED   the model finished and its outputs are stored
    FAILED      the model (or its storage) failed: the record's error and log tail say why
    DELEGATED   handed off to AWS Batch: `batch_state` is Batch's own state of the job

Listing is cheap however many jobs a user has: the keys of a user's folder are listed once, then
only what was added in the last seconds (upload ids sort by time), with a full listing every
FULL_LISTING seconds; a page of jobs reads its records concurrently, and final records (SUCCEEDED,
FAILED) are kept in memory.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from conveyor.config import IOSpec, ProviderRef
from conveyor.errors import StorageError
from conveyor.gateway.batch import BatchStates
from conveyor.gateway.catalogue import Model
from conveyor.gateway.names import is_upload_id, shown_name, upload_time
from conveyor.gateway.objects import list_after, object_size, read_bytes
from conveyor.storage import ObjectStore, TransferOptions, guess_content_type, open_store

log = logging.getLogger(__name__)

PENDING, RUNNING, SUCCEEDED, FAILED, DELEGATED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "DELEGATED"
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, DELEGATED)
FINAL = (SUCCEEDED, FAILED)
UNFINISHED = (PENDING, RUNNING, DELEGATED)
FULL_LISTING = 30.0  # seconds between full listings of a user's folder
RELIST_WINDOW = timedelta(seconds=10)  # each listing re-reads the uploads of the last seconds


@dataclass(frozen=True)
class JobRef:
    """Where one job's input lies."""

    model: Model
    user: str
    id: str
    bucket: str
    key: str  # the input key: <input prefix>/<user>/<id>/<stored name>

    @property
    def stored_name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def status_location(self) -> tuple[str, str] | None:
        spec = self.model.config.conveyor.status
        return None if spec is None else spec.destination(f"{self.bucket}/{self.key}.json")


@dataclass
class Job:
    ref: JobRef
    record: dict[str, Any] | None = None
    batch_state: str | None = None
    unreadable: str | None = None  # the record exists but is not a record

    @property
    def status(self) -> str:
        if self.record is None:
            return PENDING
        value = str(self.record.get("status", "")).upper()
        return value if value in STATES else FAILED

    @property
    def uploaded_at(self) -> datetime | None:
        return upload_time(self.ref.id)

    @property
    def started_at(self) -> datetime | None:
        return _parse_time(self.record.get("started_at")) if self.record else None

    @property
    def finished_at(self) -> datetime | None:
        if self.record is None or self.status not in FINAL:
            return None
        finished = _parse_time(self.record.get("finished_at"))
        if finished is not None:
            return finished
        started, total = self.started_at, (self.record.get("timings") or {}).get("total")
        if started is None or not isinstance(total, int | float):
            return None
        return started + timedelta(seconds=float(total))

    def durations(self, now: datetime | None = None) -> tuple[float | None, float | None]:
        """(wait_s, run_s): upload to start, start to end; so far, for a job still waiting or running."""
        now = now or datetime.now(UTC)
        uploaded, started, finished = self.uploaded_at, self.started_at, self.finished_at
        wait = run = None
        if uploaded is not None:
            wait = ((started or (now if self.status == PENDING else None)) or uploaded) - uploaded
        if started is not None:
            run = (finished or (now if self.status == RUNNING else started)) - started
        return (
            None if wait is None else round(max(0.0, wait.total_seconds()), 3),
            None if run is None else round(max(0.0, run.total_seconds()), 3),
        )

    def summary(self) -> dict[str, Any]:
        wait, run = self.durations()
        return {
            "id": self.ref.id,
            "model": self.ref.model.name,
            "file": shown_name(self.ref.stored_name),
            "stored_name": self.ref.stored_name,
            "status": self.status,
            "batch_state": self.batch_state,
            "uploaded_at": _iso(self.uploaded_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "wait_s": wait,
            "run_s": run,
        }


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Output:
    name: str  # what the page shows and the URL carries
    provider: ProviderRef
    bucket: str
    key: str
    media_type: str


@dataclass
class _Listing:
    keys: list[str] = field(default_factory=list)  # sorted input keys of one user's folder
    full_at: float = 0.0


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile (share in 0..1) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-int(share * 1000) * len(ordered) // 1000))  # ceil(share * n), in integers
    return ordered[min(rank, len(ordered)) - 1]


class Jobs:
    """The users' jobs across the catalogue's models."""

    def __init__(
        self,
        models: Iterable[Model],
        options: TransferOptions | None = None,
        batch: BatchStates | None = None,
        workers: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.models = {m.name: m for m in models}
        # The SDK engine: conveyor.gateway.objects reads records, sizes and new keys with its clients'
        # own calls (one GET, one HEAD, a LIST from a key); a long-lived server imports them once.
        self.options = options or TransferOptions(max_attempts=2, connect_timeout=2.0, read_timeout=30.0,
                                                  engine="sdk")
        self.batch = batch or BatchStates()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gateway-read")
        self._stores: dict[tuple[str, str], ObjectStore] = {}
        self._final: dict[tuple[str, str], dict[str, Any]] = {}  # status location -> final record
        self._listings: dict[tuple[str, str], _Listing] = {}  # (model, user) -> listing
        self._lock = threading.Lock()
        self._clock = clock

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- stores -----------------------------------------------------------------------------------

    def store(self, model: Model, ref: ProviderRef) -> ObjectStore:
        with self._lock:
            found = self._stores.get((model.name, str(ref)))
        if found is None:
            found = open_store(model.config.provider(ref), self.options)
            with self._lock:
                self._stores[(model.name, str(ref))] = found
        return found

    def input_spec(self, model: Model) -> IOSpec:
        return model.config.inputs[0]

    def user_prefix(self, model: Model, user: str) -> tuple[str, str]:
        """(bucket, key prefix) of a user's folder in the model's input path, ending in '/'."""
        return self.input_spec(model).destination(f"{user}/")

    # -- writing ----------------------------------------------------------------------------------

    def store_input(self, model: Model, user: str, upload_id: str, name: str, src: Path) -> JobRef:
        spec = self.input_spec(model)
        bucket, key = spec.destination(f"{user}/{upload_id}/{name}")
        self.store(model, spec.provider).upload(src, bucket, key)
        ref = JobRef(model, user, upload_id, bucket, key)
        with self._lock:
            listing = self._listings.get((model.name, user))
            if listing is not None and key not in listing.keys:
                listing.keys.append(key)
                listing.keys.sort()
        return ref

    def remove_inputs(self, refs: Iterable[JobRef]) -> None:
        """Best effort: take back inputs stored by a request that failed half way."""
        for ref in refs:
            try:
                self.delete(ref)
            except StorageError as exc:
                log.warning("could not take back %s/%s: %s", ref.bucket, ref.key, exc)

    def delete(self, ref: JobRef) -> None:
        """The job's input, outputs and record (the record last: until then the job still shows)."""
        model = ref.model
        job = self.read([ref], with_batch=False)[0]
        for output in self.outputs(job):
            self.store(model, output.provider).delete(output.bucket, output.key)
        for spec in model.config.outputs:  # whatever lies in the job's own folder of an output path
            bucket, prefix = spec.destination(f"{ref.user}/{ref.id}/")
            store = self.store(model, spec.provider)
            for key in store.list_keys(bucket, prefix):
                store.delete(bucket, key)
        spec = self.input_spec(model)
        store = self.store(model, spec.provider)
        for key in store.list_keys(ref.bucket, ref.key.rsplit("/", 1)[0] + "/"):
            store.delete(ref.bucket, key)
        location = ref.status_location
        status = model.config.conveyor.status
        if location is not None and status is not None:
            self.store(model, status.provider).delete(*location)
            with self._lock:
                self._final.pop(location, None)
        with self._lock:
            listing = self._listings.get((model.name, ref.user))
            if listing is not None:
                listing.keys = [k for k in listing.keys if not k.startswith(ref.key.rsplit("/", 1)[0] + "/")]

    # -- reading ----------------------------------------------------------------------------------

    def refs(self, model: Model, user: str) -> list[JobRef]:
        """The user's jobs of a model, newest first."""
        bucket, prefix = self.user_prefix(model, user)
        store = self.store(model, self.input_spec(model).provider)
        now = self._clock()
        with self._lock:
            listing = self._listings.setdefault((model.name, user), _Listing())
            known, full_at = list(listing.keys), listing.full_at
        if now - full_at > FULL_LISTING or not known:
            keys = store.list_keys(bucket, prefix)
            full_at = now
        else:
            newest = upload_time(known[-1][len(prefix) :].split("/", 1)[0])
            after = prefix + ((newest - RELIST_WINDOW).strftime("%Y%m%dT%H%M%S") if newest else "")
            keys = [k for k in known if k <= after] + list_after(store, bucket, prefix, after)
        with self._lock:
            listing.keys, listing.full_at = sorted(set(keys)), full_at
        found: dict[str, JobRef] = {}
        for key in keys:
            upload_id, _, rest = key[len(prefix) :].partition("/")
            if is_upload_id(upload_id) and rest and "/" not in rest and upload_id not in found:
                found[upload_id] = JobRef(model, user, upload_id, bucket, key)
        return [found[i] for i in sorted(found, reverse=True)]

    def find(self, user: str, job_id: str) -> JobRef | None:
        """The user's job with this id, in whichever model's folder it is; None for anything else."""
        if not is_upload_id(job_id):
            return None
        for model in self.models.values():
            bucket, prefix = self.user_prefix(model, user)
            with self._lock:
                listing = self._listings.get((model.name, user))
                cached = [k for k in listing.keys if k.startswith(f"{prefix}{job_id}/")] if listing else []
            keys = cached or self.store(model, self.input_spec(model).provider).list_keys(bucket, f"{prefix}{job_id}/")
            for key in keys:
                rest = key[len(prefix) + len(job_id) + 1 :]
                if rest and "/" not in rest:
                    return JobRef(model, user, job_id, bucket, key)
        return None

    def read(self, refs: list[JobRef], with_batch: bool = True) -> list[Job]:
        """The jobs with their records (read concurrently) and, for DELEGATED ones, Batch's state."""
        jobs = list(self._pool.map(self._read_one, refs)) if len(refs) > 1 else [self._read_one(r) for r in refs]
        delegated = [j for j in jobs if j.status == DELEGATED and j.record and j.record.get("job_id")]
        if with_batch and delegated:
            states = self.batch.states(str(j.record["job_id"]) for j in delegated if j.record)
            for job in delegated:
                job.batch_state = states.get(str(job.record["job_id"])) if job.record else None
        return jobs

    def _read_one(self, ref: JobRef) -> Job:
        location = ref.status_location
        status = ref.model.config.conveyor.status
        if location is None or status is None:
            return Job(ref)
        with self._lock:
            cached = self._final.get(location)
        if cached is not None:
            return Job(ref, cached)
        data = read_bytes(self.store(ref.model, status.provider), *location)
        if data is None:
            return Job(ref)
        try:
            record = json.loads(data)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            return Job(ref, {"status": FAILED, "error": {"kind": "record", "message": "the result record is not JSON"}},
                       unreadable="not JSON")
        job = Job(ref, record)
        if job.status in FINAL:
            with self._lock:
                self._final[location] = record
        return job

    def outputs(self, job: Job) -> list[Output]:
        """The job's outputs, as its record names them ("bucket/key"), with unique display names."""
        if job.record is None:
            return []
        model = job.ref.model
        found: list[Output] = []
        taken: set[str] = set()
        for target in job.record.get("outputs") or []:
            if not isinstance(target, str) or "/" not in target:
                continue
            bucket, key = target.split("/", 1)
            spec = next((s for s in model.config.outputs if s.bucket == bucket), None)
            spec = spec or (model.config.outputs[0] if model.config.outputs else self.input_spec(model))
            rel = key[len(spec.key_prefix) + 1 :] if spec.key_prefix and key.startswith(spec.key_prefix + "/") else key
            own = f"{job.ref.user}/{job.ref.id}/"
            rel = rel[len(own) :] if rel.startswith(own) else rel
            name = rel if rel not in taken else key
            taken.add(name)
            found.append(Output(name, spec.provider, bucket, key, guess_content_type(key)))
        return found

    def output_sizes(self, job: Job, outputs: list[Output]) -> list[int | None]:
        model = job.ref.model
        return list(self._pool.map(lambda o: object_size(self.store(model, o.provider), o.bucket, o.key), outputs))

    # -- the timing panel -------------------------------------------------------------------------

    def stats(self, model: Model, user: str, limit: int = 500) -> dict[str, Any]:
        """Wait and run time per job (the newest `limit`, oldest first), with count, failures, median, p95."""
        refs = self.refs(model, user)
        jobs = self.read(refs[:limit], with_batch=False)
        runs = [run for job in jobs if job.status in FINAL for _, run in [job.durations()] if run is not None]
        return {
            "model": model.name,
            "count": len(refs),
            "shown": len(jobs),
            "finished": sum(1 for job in jobs if job.status in FINAL),
            "failures": sum(1 for job in jobs if job.status == FAILED),
            "median": None if not runs else round(statistics.median(runs), 3),
            "p95": None if not runs else round(percentile(runs, 0.95) or 0.0, 3),
            "jobs": [
                {"id": job.ref.id, "file": shown_name(job.ref.stored_name), "status": job.status,
                 "wait_s": wait, "run_s": run}
                for job in reversed(jobs)
                for wait, run in [job.durations()]
            ],
        }
