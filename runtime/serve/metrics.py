"""The Prometheus metrics of one `conveyor serve` (its own registry, served at GET /metrics).

    conveyor_serve_requests_total{status}        answers by HTTP status (429/503 included)
    conveyor_serve_records_total{status}         result records by status (SUCCEEDED, FAILED ...)
    conveyor_serve_step_seconds{step}            per record: download, handler (the model), upload, total
    conveyor_serve_request_seconds               per request, from its body read to its answer
    conveyor_serve_in_flight                     requests holding a model slot
    conveyor_serve_slots                         model slots
    conveyor_serve_model_ready                   1 once the model is loaded
    conveyor_serve_model_loads_total             model loads (a supervised host's own count when it keeps one)
    conveyor_serve_model_restarts_total          model restarts (hung or crashed models; the host's count)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from conveyor.records import ResultRecord
from conveyor.serve.worker import Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STEPS = ("download", "handler", "upload", "total")


class _ModelCollector(Collector):
    """Read at scrape time from the worker (and its handler): nothing to keep in step."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        worker = self.worker
        yield GaugeMetricFamily("conveyor_serve_in_flight", "Requests holding a model slot", value=worker.in_flight)
        yield GaugeMetricFamily("conveyor_serve_slots", "Model slots", value=worker.slots)
        yield GaugeMetricFamily("conveyor_serve_model_ready", "1 once the model is loaded", value=int(worker.ready))
        yield CounterMetricFamily("conveyor_serve_model_loads", "Model loads", value=worker.loads())
        yield CounterMetricFamily("conveyor_serve_model_restarts", "Model restarts (hung or crashed)",
                                  value=worker.restarts())


class Metrics:
    def __init__(self, worker: Worker) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("conveyor_serve_requests", "Answers by HTTP status", ["status"],
                                registry=self.registry)
        self.records = Counter("conveyor_serve_records", "Result records by status", ["status"],
                               registry=self.registry)
        self.steps = Histogram("conveyor_serve_step_seconds", "Seconds per record step", ["step"],
                               buckets=BUCKETS, registry=self.registry)
        self.request_seconds = Histogram("conveyor_serve_request_seconds", "Seconds per request",
                                         buckets=BUCKETS, registry=self.registry)
        self.registry.register(_ModelCollector(worker))

    def answered(self, status: int, seconds: float, records: list[ResultRecord]) -> None:
        self.requests.labels(status=str(status)).inc()
        self.request_seconds.observe(seconds)
        for record in records:
            self.records.labels(status=record.status.value).inc()
            for step in STEPS:
                if step in record.timings:
                    self.steps.labels(step=step).observe(record.timings[step])

    def render(self) -> bytes:
        return generate_latest(self.registry)
