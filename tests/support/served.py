"""`conveyor serve` as a real process for the tests (tests/test_serve.py): started on a free port of
127.0.0.1, its stderr collected, stopped at the end."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import requests

from tests.support.pipeline import CONVEYOR, Deployment

REPO = Path(__file__).resolve().parents[2]
HANDLER = "tests.support.serve_models:ServeTestHandler"


def serve_deployment(
    deploy: Any, *, outputs: bool = False, conveyor: dict[str, Any] | None = None, **options: Any
) -> Deployment:
    """A function definition whose model is ServeTestHandler with `options` (and `conveyor` settings);
    without `outputs`, the sync answer is the only place results go (concurrent requests would
    otherwise share output keys)."""
    d = deploy(script=None, handler={"name": HANDLER, **options}, **(conveyor or {}))
    if not outputs:
        d.definition["output"] = []
    return d


class Served:
    def __init__(self, d: Deployment, *args: str, **env: str) -> None:
        self.stderr = b""
        self.proc = subprocess.Popen(
            [*CONVEYOR, "serve", "--config", str(d.write()), "--platform", "oscar", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=d.env(PYTHONPATH=str(REPO), **env),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_url()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line

    def _wait_url(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if found := re.search(rb"conveyor serve on (http://127\.0\.0\.1:\d+)", self.stderr):
                return found.group(1).decode()
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"conveyor serve did not start:\n{self.stderr.decode(errors='replace')}")

    def post(self, body: bytes, path: str = "/", **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, data=body, timeout=120, **kwargs)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while self.get("/health").status_code != 200:
            assert time.monotonic() < deadline, self.stderr.decode(errors="replace")
            time.sleep(0.02)

    def in_flight(self) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.get("/metrics").text):
            if family.name == "conveyor_serve_in_flight":
                return family.samples[0].value
        raise AssertionError("no conveyor_serve_in_flight in /metrics")

    def wait_in_flight(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while self.in_flight() != count:
            assert time.monotonic() < deadline, f"never {count} request(s) in flight"
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=10)
        return code
