"""The gateway's Prometheus metrics (GET /metrics), in a registry of its own per app."""

from __future__ import annotations

import threading
from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from conveyor.gateway.jobs import STATES

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.uploads = Counter(
            "conveyor_gateway_uploads", "Files uploaded (one job each)", ["model"], registry=self.registry
        )
        self.upload_bytes = Counter(
            "conveyor_gateway_upload_bytes", "Bytes of the uploaded files", ["model"], registry=self.registry
        )
        self.refused = Counter(
            "conveyor_gateway_uploads_refused", "Uploads refused, by reason", ["reason"], registry=self.registry
        )
        self.jobs = Gauge(
            "conveyor_gateway_jobs", "Jobs by model and state, as last listed", ["model", "state"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "conveyor_gateway_request_seconds", "Time to answer a request", ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self._seen: dict[tuple[str, str], Tally[str]] = {}  # (model, user) -> states of the user's jobs
        self._lock = threading.Lock()

    def saw_jobs(self, model: str, user: str, states: list[str]) -> None:
        """The states of all of a user's jobs of a model, as just listed."""
        with self._lock:
            self._seen[(model, user)] = Tally(states)
            total: Tally[str] = Tally()
            for (name, _), tally in self._seen.items():
                if name == model:
                    total.update(tally)
        for state in STATES:
            self.jobs.labels(model=model, state=state).set(total.get(state, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
