"""What every record of a run shares: the Job (configuration, platform, handler, stores, deadline,
shutdown flag), the stores it opens once, and the small helpers of every step (the record's
timings, the shutdown check)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from conveyor.config import FunctionConfig, ProviderRef
from conveyor.deadline import Deadline
from conveyor.errors import Interrupted
from conveyor.events import Input
from conveyor.handler import Handler
from conveyor.platform import Platform
from conveyor.records import ResultRecord
from conveyor.storage import ObjectStore, TransferOptions, open_store

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
        # retries, timeouts, CA bundle: built at the edge (cli, LambdaApp); the engine: the definition's
        self._options = replace(options or TransferOptions(), engine=config.conveyor.transfer_engine)
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

    def new_record(self, inp: Input | None, **fields: Any) -> ResultRecord:
        """A result record of this run for `inp` (None: an invocation without input): the run's
        platform, request id, handler and job id (unless `fields` name another), plus `fields`."""
        fields.setdefault("job_id", self.job_id)
        return ResultRecord(
            input=inp.to_dict() if inp is not None else {"inline": True, "file_name": None, "size": 0},
            platform=self.platform.value,
            request_id=self.request_id,
            handler=self.config.conveyor.handler.name,
            **fields,
        )


class Timer:
    def __init__(self, record: ResultRecord) -> None:
        self.record = record

    def __call__(self, name: str) -> "Timer":
        self.name = name
        return self

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.record.timings[self.name] = round(time.monotonic() - self.start, 4)


def check_shutdown(job: Job) -> None:
    if job.shutdown.is_set():
        raise Interrupted("stopped by a termination signal before the work was done")
