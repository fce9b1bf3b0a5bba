"""The HTTP side of `conveyor serve`: the Starlette app and the uvicorn server around it.

Routes:
    GET  /_/health, /health   200 {"status": "ready"} once the model is loaded; 503 while it loads
                              ("loading"), after it failed to ("failed"), or while draining ("draining")
    GET  /metrics             Prometheus text (conveyor.serve.metrics)
    *    any other path       the request: the body is the event (see conveyor.serve.worker)

Busy (every model slot taken): 429 with Retry-After, as the classic watchdog answers; 503 for a
storage event (a bucket notification), so that its sender retries later: a notification is never
answered 200 before its work is done. SIGTERM drains: the listener closes, the requests under way get
the grace period to finish, then the children still running are stopped and the process exits 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor.errors import ConfigError, ConveyorError
from conveyor.logs import bound_request_id
from conveyor.serve import EXIT_CODE_HEADER, HTTP_VARS_HEADER, REQUEST_ID_HEADER, RUN_HEADER
from conveyor.serve.metrics import CONTENT_TYPE, Metrics
from conveyor.serve.worker import Answer, Worker, parse_body, refused

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
RETRY_AFTER = "1"
LOCK_WAIT = 3.0  # seconds a new daemon waits for the socket's lock


def watchdog_vars(request: Request) -> dict[str, str]:
    """The Http_* variables the classic watchdog gives the process it forks for a request."""
    return {
        "Http_Method": request.method,
        "Http_Content_Type": request.headers.get("content-type", ""),
        "Http_Query": request.url.query,
        "Http_Path": request.url.path,
    }


def _forwarded_vars(request: Request) -> dict[str, str]:
    try:
        value = json.loads(request.headers.get(HTTP_VARS_HEADER) or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if str(k).startswith("Http_")}


def create_app(worker: Worker, metrics: Metrics, draining: threading.Event) -> Starlette:
    async def health(request: Request) -> Response:
        if draining.is_set():
            return JSONResponse({"status": "draining"}, status_code=503)
        if worker.ready:
            return JSONResponse({"status": "ready"})
        if worker.setup_error is not None:
            return JSONResponse({"status": "failed", "error": worker.setup_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def invoke(request: Request) -> Response:
        started = time.monotonic()
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex[:12]
        run_mode = request.headers.get(RUN_HEADER) == "1"
        http_vars = _forwarded_vars(request) if run_mode else watchdog_vars(request)
        body = await request.body()
        answer = await _answer(worker, body, request_id, http_vars, run_mode, draining)
        took = time.monotonic() - started
        metrics.answered(answer.status, took, answer.records)
        _summary(request_id, request, answer, took, run_mode)
        headers = {EXIT_CODE_HEADER: str(answer.exit_code), REQUEST_ID_HEADER: request_id}
        if answer.status in (429, 503):
            headers["Retry-After"] = RETRY_AFTER
        if answer.json_body:
            media_type = "application/json"
        elif answer.status == 200:
            media_type = request.headers.get("content-type") or "application/octet-stream"
        else:
            media_type = TEXT
        return Response(answer.body, status_code=answer.status, headers=headers, media_type=media_type)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[
        Route("/_/health", health, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/{path:path}", invoke, methods=methods),
    ])


async def _answer(
    worker: Worker, body: bytes, request_id: str, http_vars: dict[str, str], run_mode: bool, draining: threading.Event
) -> Answer:
    if draining.is_set():
        return Answer(503, b"conveyor: the server is stopping\n", 75)
    try:
        event = parse_body(body)
    except ConveyorError as exc:
        return refused(exc)
    if not worker.try_acquire():
        storage = not event.wants_response  # its sender retries a 503, not a 429
        return Answer(503 if storage else 429, b"conveyor: every model slot is busy\n", 75)
    try:
        return await run_in_threadpool(worker.process, event, request_id, http_vars, run_mode)
    except Exception as exc:  # a bug of ours: still an answer, never a hung connection
        log.exception("request %s failed", request_id)
        return Answer(500, f"conveyor: internal error: {type(exc).__name__}: {exc}\n".encode(), 1)
    finally:
        worker.release()


def _summary(request_id: str, request: Request, answer: Answer, took: float, run_mode: bool) -> None:
    """One JSON line per request on stderr (through the log: credentials masked)."""
    statuses: dict[str, int] = {}
    steps: dict[str, float] = {}
    for record in answer.records:
        statuses[record.status.value] = statuses.get(record.status.value, 0) + 1
        for name, value in record.timings.items():
            steps[name] = round(steps.get(name, 0.0) + value, 4)
    summary = {
        "request_id": request_id, "method": request.method, "path": request.url.path, "status": answer.status,
        "exit_code": answer.exit_code, "seconds": round(took, 4), "records": statuses, "timings": steps,
        "forwarded": run_mode,
    }
    with bound_request_id(request_id):
        log.info("%s", json.dumps(summary, sort_keys=True))


class _Server:
    """uvicorn's Server, but a signal drains and the process exits 0 (uvicorn re-raises it)."""

    def __init__(self, config: Any, on_signal: Any) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                on_signal(sig)
                self.should_exit = True

        self.server = Server(config)


@contextlib.contextmanager
def _socket_lock(path: Path) -> Iterator[bool]:
    """Hold `<path>.lock` for the server's life: True when this process is the one that serves `path`."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT  # a daemon just killed (hung) lets go of it soon
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True
    finally:
        os.close(fd)


def listen(host: str, port: int, socket_path: Path | None) -> socket.socket:
    """The listening socket: TCP on host:port, or a unix socket only this user may connect to."""
    if socket_path is not None:
        socket_path.unlink(missing_ok=True)  # a dead daemon's: the lock says none is alive
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(socket_path))
        finally:
            os.umask(old)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    sock.listen(128)
    return sock


def serve(
    worker: Worker,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    socket_path: Path | None = None,
    idle_timeout: float | None = None,
    grace_period: float = 10.0,
) -> int:
    """Serve until SIGTERM/SIGINT (or `idle_timeout` seconds without a request); the exit code."""
    if socket_path is None:
        return _serve(worker, host, port, None, idle_timeout, grace_period)
    with _socket_lock(socket_path) as mine:
        if not mine:
            log.info("another conveyor serve holds %s: not starting a second one", socket_path)
            return 0
        try:
            return _serve(worker, host, port, socket_path, idle_timeout, grace_period)
        finally:
            socket_path.unlink(missing_ok=True)


def _serve(
    worker: Worker, host: str, port: int, socket_path: Path | None, idle_timeout: float | None, grace: float
) -> int:
    import uvicorn

    draining = threading.Event()
    metrics = Metrics(worker)
    app = create_app(worker, metrics, draining)
    try:
        sock = listen(host, port, socket_path)
    except OSError as exc:
        where = str(socket_path) if socket_path is not None else f"{host}:{port}"
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=max(1, math.ceil(grace)), timeout_keep_alive=5)

    def on_signal(sig: int) -> None:
        if not draining.is_set():
            log.info("received %s: draining (%d request(s) under way, %.1f s to finish)",
                     signal.Signals(sig).name, worker.in_flight, grace)
        draining.set()

    server = _Server(config, on_signal).server
    host_port = sock.getsockname()[:2] if socket_path is None else ("", 0)
    where = str(socket_path) if socket_path is not None else f"http://{host_port[0]}:{host_port[1]}"
    log.info("conveyor serve on %s (%d model slot(s)); loading the model", where, worker.slots)
    worker.start_setup()
    if idle_timeout:
        threading.Thread(target=_idle_watch, args=(server, worker, idle_timeout, draining),
                         name="conveyor-serve-idle", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        worker.shutdown.set()  # what the grace period did not finish: its children are stopped
        _wait_idle(worker, grace)
        worker.close()
    log.info("conveyor serve stopped")
    return 0


def _idle_watch(server: Any, worker: Worker, idle_timeout: float, draining: threading.Event) -> None:
    while not server.should_exit:
        time.sleep(min(1.0, idle_timeout / 4))
        if worker.idle_for() > idle_timeout:
            log.info("no request for %.0f s: stopping", idle_timeout)
            draining.set()
            server.should_exit = True


def _wait_idle(worker: Worker, grace: float) -> None:
    deadline = time.monotonic() + grace + 5
    while worker.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
