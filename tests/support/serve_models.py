"""An in-process handler for `conveyor serve` and the warm daemon (tests/test_serve.py,
tests/test_warm_daemon.py), named as `tests.support.serve_models:ServeTestHandler` (PYTHONPATH=repo).

Options:
    gate       a path: setup() waits until it exists (a slow-loading model, without timing anything)
    runs       a path: every handle() appends one line "<pid> <input text>" (counts model runs)
    loads      a path: every setup() appends one line "<pid>" (counts model loads)

The input decides what one record does (each with a colon, so that no body is taken for base64):
    wait:<path>  wait (at most 60 s) until <path> exists, then answer (a request kept in flight)
    fail:        raise HandlerError (a model that fails: 500)
    hang:        sleep 3600 s (a hung model: only a supervised host can stop it)
    crash:       os._exit(3) (a model that crashes its process: only a supervised host survives it)
    stdout:TEXT  print TEXT and write no file (the answer is the model's stdout)
    anything     write result.txt holding the input upper-cased, and print the Http_Method it was given
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from conveyor.errors import HandlerError
from conveyor.handler import Handler, HandlerResult, Invocation


def _append(path: str | None, line: str) -> None:
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


class ServeTestHandler(Handler):
    name = "serve-test"

    def setup(self) -> None:
        gate = self.options.get("gate")
        while gate and not Path(gate).exists():
            time.sleep(0.02)
        _append(self.options.get("loads"), str(os.getpid()))

    def handle(self, inv: Invocation) -> HandlerResult:
        assert inv.input_path is not None
        text = inv.input_path.read_text(errors="replace").strip()
        _append(self.options.get("runs"), f"{os.getpid()} {text}")
        if text.startswith("wait:"):
            deadline = time.monotonic() + 60
            while not Path(text[5:]).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        elif text.startswith("fail:"):
            raise HandlerError("the test model failed on purpose")
        elif text.startswith("hang:"):
            time.sleep(3600)
        elif text.startswith("crash:"):
            os._exit(3)
        elif text.startswith("stdout:"):
            stdout = inv.work_dir / "stdout.txt"
            stdout.write_text(text[7:] + "\n")
            return HandlerResult(stdout_path=stdout)
        (inv.output_dir / "result.txt").write_text(text.upper() + " " + inv.env.get("Http_Method", "-"))
        return HandlerResult()
