"""Figure 2: what a warm event costs Conveyor on top of the model.

Two peers, each started once and warmed up, then driven one event at a time, interleaved:

    lambda emulator   `conveyor run` under the real Lambda Runtime Interface Emulator on loopback
                      (tests.support.emulator): overhead = the invoke's round trip, seen by the
                      client, minus the handler time of the record the response carries.
    warm worker       one Job kept in a process, `run_event` per event (bench.warm_worker), the
                      path a warm Lambda environment and a `conveyor local` worker take:
                      overhead = the run_event call minus the record's handler time.

The event is the 100 KiB MinIO upload of figure 1 and the handler the same `cp` script, so the
overhead includes fetching and storing 100 KiB on loopback (reported apart: download, upload),
the work directory, the child's environment, the record and its log line; for the emulator also
the Runtime API round trips and awslambdaric's own handling. *Without GET/PUT* takes the record's
download and upload timings (the upload's key check included) off the overhead: what is left is
Conveyor's own work per event.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.measure import Samples, interleave
from bench.server import BUCKET, CP_SCRIPT, Bench
from bench.warm_worker import WarmWorker
from tests.support.pipeline import minio_event

KiB = 1024
OBJECT_SIZE = 100 * KiB
KEY = "in/warm-100k.bin"
WARMUP = 3
TARGET_MS = 8.0  # issue 16 (it was 20)


class Peer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.overhead = Samples("ms")
        self.own = Samples("ms")  # the overhead without the GET and the PUT: Conveyor's own work
        self.latency = Samples("ms")
        self.handler = Samples("ms")
        self.download = Samples("ms")
        self.upload = Samples("ms")

    def add(self, latency: float, timings: dict[str, float]) -> None:
        handler = timings.get("handler", 0.0)
        self.latency.add(latency * 1000)
        self.handler.add(handler * 1000)
        self.overhead.add((latency - handler) * 1000)
        self.download.add(timings.get("download", 0.0) * 1000)
        self.upload.add(timings.get("upload", 0.0) * 1000)
        self.own.add((latency - handler - timings.get("download", 0.0) - timings.get("upload", 0.0)) * 1000)

    def summary(self) -> dict[str, Any]:
        return {
            "overhead": self.overhead.summary(2),
            "own": self.own.summary(2),
            "latency": self.latency.summary(2),
            "handler": self.handler.summary(2),
            "download": self.download.summary(2),
            "upload": self.upload.summary(2),
        }


def _one_record(records: list[dict[str, Any]], who: str) -> dict[str, float]:
    if len(records) != 1 or records[0].get("status") != "SUCCEEDED":
        raise RuntimeError(f"{who}: expected one SUCCEEDED record, got {json.dumps(records)[:1500]}")
    return records[0]["timings"]


def measure(bench: Bench, rounds: int, log=print) -> dict[str, Any]:
    from tests.support.emulator import LambdaEmulator, ensure_rie

    bench.put_random(KEY, OBJECT_SIZE)
    event = minio_event(BUCKET, KEY, OBJECT_SIZE)
    work = bench.dir("warm")
    script = work / "script.sh"
    script.write_text(CP_SCRIPT)
    config = work / "function_config.yaml"
    config.write_text(yaml.safe_dump(bench.definition("out-warm", init_script=str(script))))
    lambda_tmp, worker_tmp = bench.dir("warm/lambda-tmp"), bench.dir("warm/worker-tmp")

    result: dict[str, Any] = {"object_bytes": OBJECT_SIZE, "rounds": rounds, "target_ms": TARGET_MS, "skipped": {}}
    peers = {"lambda emulator": Peer("lambda emulator"), "warm worker": Peer("warm worker")}
    try:
        ensure_rie()
    except Exception as exc:  # no registry: the emulator comes from the aws-sam-cli wheel
        result["skipped"]["lambda emulator"] = f"the Lambda emulator could not be fetched: {exc}"
        del peers["lambda emulator"]

    venv_bin = Path(sys.executable).parent
    rie = None
    if "lambda emulator" in peers:
        rie = LambdaEmulator(
            [str(venv_bin / "conveyor"), "run", "--config", str(config)],
            env=bench.child_env(TMPDIR=str(lambda_tmp)),
            timeout=120,
            log_path=work / "rie.log",
            function_name="conveyor-bench",
        )
        rie.start()
    worker = WarmWorker(
        {"mode": "pipeline", "config": str(config), "event": event, "scratch": str(worker_tmp)},
        env=bench.child_env(TMPDIR=str(worker_tmp)),
        log_path=work / "worker.log",
    )
    try:

        def invoke_lambda() -> tuple[float, dict[str, float]]:
            assert rie is not None
            started = time.perf_counter()
            status, _, response = rie.invoke(event)
            latency = time.perf_counter() - started
            if status != 200 or not isinstance(response, dict) or response.get("statusCode") != 200:
                raise RuntimeError(f"lambda emulator: HTTP {status}: {str(response)[:1000]}\n{rie.log()[-1500:]}")
            records = json.loads(base64.b64decode(response["body"]))
            return latency, _one_record(records, "lambda emulator")

        def invoke_worker() -> tuple[float, dict[str, float]]:
            answer = worker.ask()
            return answer["wall"], _one_record(answer["records"], "warm worker")

        calls = {"lambda emulator": invoke_lambda, "warm worker": invoke_worker}
        for name in peers:  # the first call loads everything (a cold start): not counted
            for _ in range(WARMUP):
                calls[name]()
        for r, name in interleave(list(peers), rounds):
            latency, timings = calls[name]()
            peers[name].add(latency, timings)
            if r % 10 == 0 or r == rounds - 1:
                p = peers[name]
                log(f"  warm  round {r + 1}/{rounds}  {name:<16} latency {latency * 1000:7.1f} ms  "
                    f"handler {timings.get('handler', 0) * 1000:6.1f} ms  overhead {p.overhead.values[-1]:6.1f} ms")
    finally:
        worker.close()
        if rie is not None:
            rie.stop()
    result["peers"] = {name: p.summary() for name, p in peers.items()}
    return result
