"""A long-lived worker the benchmark drives one event at a time: `python -m bench.warm_worker`.

The first stdin line is a JSON spec; then every `run` line processes one event (or one file) and
answers one JSON line on stdout; `quit` (or EOF) closes the handler and exits. Logs go to stderr.

Specs
  {"mode": "pipeline", "config": PATH, "event": {...}, "scratch": DIR}
      Conveyor's warm path without a platform around it: one Job (config, handler, stores) built
      once, then `conveyor.process.run_event(job, event)` per `run`, as a warm Lambda environment or
      a `conveyor local` worker calls it. Answer: {"wall": s, "records": [record dicts]}, wall
      measured around run_event.
  {"mode": "handler", "handler": NAME, "options": {...}, "input": PATH, "scratch": DIR}
      One handler kept loaded (setup once), `handle(invocation)` per `run` on a fresh Invocation
      (fresh folders, the input copied in, outside the timing), as the pipeline builds it.
      Answer: {"wall": s, "details": {...}}, wall measured around handle().
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _pipeline(spec: dict[str, Any]):
    from conveyor.config import load_config
    from conveyor.events import load_event
    from conveyor.handler import load_handler
    from conveyor.job import Job, Stores
    from conveyor.logs import setup_logging
    from conveyor.platform import Platform
    from conveyor.process import run_event

    environ = dict(os.environ)
    config = load_config(environ, Platform.OSCAR, path=spec["config"])
    setup_logging(config.log_level)
    job = Job(
        config=config,
        platform=Platform.OSCAR,
        handler=load_handler(config),
        stores=Stores(config),
        base_env=environ,
        scratch_dir=Path(spec["scratch"]),
        request_id="bench",
        shutdown=threading.Event(),
    )
    raw = json.dumps(spec["event"]).encode()

    def run() -> dict[str, Any]:
        started = time.perf_counter()
        records = run_event(job, load_event(raw))
        wall = time.perf_counter() - started
        return {"wall": wall, "records": [r.to_dict() for r in records]}

    return run, job.handler.close


def _handler(spec: dict[str, Any]):
    from conveyor.config import ConveyorSettings, FunctionConfig, HandlerSpec
    from conveyor.deadline import Deadline
    from conveyor.events import ObjectRef
    from conveyor.handler import Invocation, load_handler
    from conveyor.logs import setup_logging

    setup_logging("INFO")
    options = spec.get("options") or {}
    config = FunctionConfig(conveyor=ConveyorSettings(handler=HandlerSpec(name=spec["handler"], options=options)))
    handler = load_handler(config)
    handler.ensure_setup()
    source = Path(spec["input"])
    scratch = Path(spec["scratch"])
    log = logging.getLogger("conveyor")
    env = dict(os.environ)

    def run() -> dict[str, Any]:
        root = Path(tempfile.mkdtemp(prefix="record-", dir=scratch))
        try:
            input_dir, output_dir, work_dir = root / "input", root / "output", root / "work"
            for folder in (input_dir, output_dir, work_dir):
                folder.mkdir()
            input_path = input_dir / source.name
            shutil.copyfile(source, input_path)
            inv = Invocation(
                input=ObjectRef(bucket="bench", key=f"in/{source.name}"),
                input_path=input_path,
                input_dir=input_dir,
                output_dir=output_dir,
                work_dir=work_dir,
                env={**env, "INPUT_FILE_PATH": str(input_path), "TMP_INPUT_DIR": str(input_dir),
                     "TMP_OUTPUT_DIR": str(output_dir)},
                deadline=Deadline.after(300),
                log=log,
                log_file=root / "model.log",
                shutdown=threading.Event(),
                request_id="bench",
                grace_period=1.0,
            )
            started = time.perf_counter()
            result = handler.handle(inv)
            wall = time.perf_counter() - started
            outputs = sorted(p.name for p in output_dir.iterdir())
            if not outputs:
                raise RuntimeError(f"handler {spec['handler']} wrote no output")
            return {"wall": wall, "details": result.details, "outputs": outputs}
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return run, handler.close


class WarmWorker:
    """The benchmark's side: start the worker, `ask()` for one run, `close()`.

        with WarmWorker(spec, env=env, log_path=path) as worker:
            answer = worker.ask()      # {"wall": ..., ...}
    """

    def __init__(self, spec: dict[str, Any], env: dict[str, str], log_path: Path, timeout: float = 300) -> None:
        import subprocess

        self.timeout = timeout
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.warm_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=str(Path(__file__).resolve().parents[1]),
            start_new_session=True,
        )
        self._send(json.dumps(spec))
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"the warm worker did not start: {ready}")

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def _read(self) -> dict[str, Any]:
        import select

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.close()
            raise RuntimeError(f"the warm worker gave no answer (log: {self._log.name})")
        return json.loads(line)

    def ask(self) -> dict[str, Any]:
        self._send("run")
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"warm worker: {answer['error']} (log: {self._log.name})")
        return answer

    def close(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            try:
                self._send("quit")
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> WarmWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    make = {"pipeline": _pipeline, "handler": _handler}[spec["mode"]]
    run, close = make(spec)
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "quit":
                break
            if command != "run":
                continue
            try:
                answer = run()
            except Exception as exc:  # reported, not fatal: the benchmark decides
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer, default=str), flush=True)
    finally:
        close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
