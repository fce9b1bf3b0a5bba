"""The one thread that makes every call into an in-process (warm) DEEPaaS model."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class ModelThread:
    """One daemon thread that makes every call into an in-process model, in order.

    A daemon, so a model that never returns cannot hold the process at exit. Each call runs in
    the submitter's context (the request id stays on the model's log lines).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0  # submitted and not finished
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._thread.is_alive() and self._pending > 0

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._count_lock:
            self._pending += 1
        self._jobs.put((future, contextvars.copy_context(), fn, args, kwargs))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, context, fn, args, kwargs = job
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(context.run(fn, *args, **kwargs))
                    except BaseException as exc:  # handed to the waiting record
                        future.set_exception(exc)
            finally:
                with self._count_lock:
                    self._pending -= 1
