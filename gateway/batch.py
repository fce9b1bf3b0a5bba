"""The state of jobs handed off to AWS Batch (a DELEGATED record's `job_id`), from `describe_jobs`.

Batch's own states: SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED, FAILED. Answers are
kept for `ttl` seconds, so a page polling every second asks Batch at most that often; up to 100
job ids go in one call (Batch's limit). Batch unreachable: the state is None and the reason is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

BATCH_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
PER_CALL = 100


def default_client_factory() -> Any:
    """boto3's Batch client (its region and credentials from the environment, as boto3 reads them;
    AWS_ENDPOINT_URL_BATCH points it elsewhere)."""
    import boto3

    return boto3.client("batch")


class BatchStates:
    def __init__(self, client_factory: Callable[[], Any] | None = None, ttl: float = 2.0) -> None:
        self._factory = client_factory or default_client_factory
        self._client: Any = None
        self._ttl = ttl
        self._known: dict[str, tuple[float, str | None]] = {}  # job id -> (when asked, state)
        self._lock = threading.Lock()

    def states(self, job_ids: Iterable[str]) -> dict[str, str | None]:
        now = time.monotonic()
        wanted = list(dict.fromkeys(job_ids))
        with self._lock:
            stale = [j for j in wanted if j not in self._known or now - self._known[j][0] > self._ttl]
        found: dict[str, str | None] = {}
        for start in range(0, len(stale), PER_CALL):
            chunk = stale[start : start + PER_CALL]
            try:
                if self._client is None:
                    self._client = self._factory()
                answer = self._client.describe_jobs(jobs=chunk)
            except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoCredentialsError ...
                log.warning("AWS Batch did not answer describe_jobs for %d job(s): %s", len(chunk), exc)
                found.update(dict.fromkeys(chunk))
                continue
            found.update(dict.fromkeys(chunk))
            for job in answer.get("jobs", ()):
                status = job.get("status")
                found[str(job.get("jobId"))] = str(status) if status in BATCH_STATES else None
        with self._lock:
            for job_id, state in found.items():
                self._known[job_id] = (now, state)
            return {j: self._known.get(j, (0.0, None))[1] for j in wanted}
