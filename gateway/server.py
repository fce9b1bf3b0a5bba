"""The gateway's web app (create_app) and Gateway, which serves it with uvicorn in a thread.

Routes (every /api route needs the session cookie or HTTP Basic; see auth.py):

    GET    /                                  the page (static/index.html)
    GET    /static/...                        its script and style
    POST   /login  (form or JSON)             {"user", "csrf_token"} + the session cookie
    POST   /logout
    GET    /api/session                       {"user", "csrf_token"}
    GET    /api/models                        [{name, title, description, accepts, platform, example_url}]
    GET    /api/models/{model}/example        the model's example input
    POST   /api/models/{model}/files          multipart, field `file` (one or more) -> 201 {"jobs": [...]}
    GET    /api/models/{model}/stats          the timing panel's data
    GET    /api/jobs?model=M&page=N&per_page=50
    GET    /api/jobs/{id}                     one job, with outputs, error and log tail
    DELETE /api/jobs/{id}                     input, outputs and record -> 204
    GET    /api/jobs/{id}/input               the uploaded file
    GET    /api/jobs/{id}/outputs/{name}      one output (?download=1: as an attachment)
    GET    /api/jobs/{id}/outputs.zip         every output of the job
    GET    /healthz, GET /metrics             no credentials

Answers: 401 without or with wrong credentials; 403 without the CSRF token (cookie sessions); 404
for an unknown model and for a job or file that is not the caller's own; 413 for a file over the
limit (nothing stored); 503 when a store cannot be reached (and nothing is left half-written).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.errors import ConveyorError, StorageError
from conveyor.gateway.auth import COOKIE, SESSION_SECONDS, AuthError, Caller, Sessions
from conveyor.gateway.batch import BatchStates
from conveyor.gateway.catalogue import Model
from conveyor.gateway.jobs import UNFINISHED, Job, JobRef, Jobs
from conveyor.gateway.metrics import CONTENT_TYPE, Metrics
from conveyor.gateway.names import new_upload_id, shown_name, stored_name
from conveyor.gateway.uploads import BadUpload, TooLarge, UploadReader
from conveyor.gateway.users import Users
from conveyor.storage import guess_content_type

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD = 100 * 2**20
MAX_PER_PAGE = 200
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
# A file a model wrote is never run as a page of the gateway's origin, even opened on its own.
OUTPUT_POLICY = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"
INLINE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp",
    "application/json", "text/plain", "text/csv", "application/pdf",
    "video/mp4", "video/webm",
})  # fmt: skip


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class _Headers:
    """Security headers on every answer, and the request-latency metric."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                defaults = {
                    b"x-content-type-options": b"nosniff",
                    b"content-security-policy": PAGE_POLICY.encode(),
                    b"x-frame-options": b"DENY",
                    b"referrer-policy": b"no-referrer",
                    b"cache-control": b"no-store",
                }
                headers.extend((name, value) for name, value in defaults.items() if name not in names)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = scope.get("endpoint")
            route = getattr(endpoint, "__name__", "static" if scope["path"].startswith("/static/") else "other")
            self.metrics.latency.labels(scope["method"], route, str(status)).observe(time.perf_counter() - started)


def create_app(
    models: list[Model],
    users: Users,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    secret: bytes | None = None,
    batch_client_factory: Callable[[], Any] | None = None,
    jobs: Jobs | None = None,
) -> Starlette:
    catalogue = {m.name: m for m in models}
    sessions = Sessions(users, secret or secrets.token_bytes(32))
    book = jobs or Jobs(models, batch=BatchStates(batch_client_factory))
    metrics = Metrics()

    def caller(request: Request) -> Caller:
        return sessions.caller(request, request.method)

    def model_or_404(name: str) -> Model | None:
        return catalogue.get(name)

    # -- session ----------------------------------------------------------------------------------

    async def login(request: Request) -> Response:
        if request.headers.get("sec-fetch-site") == "cross-site":
            return _error(403, "cross-site requests are refused")
        kind = request.headers.get("content-type", "")
        is_form = not kind.startswith("application/json")
        if is_form:
            form = await request.form()
            name, password = str(form.get("username", "")), str(form.get("password", ""))
        else:
            try:
                body = await request.json()
            except ValueError:
                return _error(400, "send JSON {\"username\": ..., \"password\": ...} or a form")
            if not isinstance(body, dict):
                return _error(400, "send JSON {\"username\": ..., \"password\": ...}")
            name, password = str(body.get("username", "")), str(body.get("password", ""))
        found = await run_in_threadpool(sessions.login, name, password)
        if found is None:
            log.info("login refused for user %r", name[:64])
            return _error(401, "wrong user name or password")
        cookie, session = found
        answer: Response = (
            RedirectResponse("/", status_code=303)
            if is_form and "text/html" in request.headers.get("accept", "")
            else JSONResponse({"user": session.user, "csrf_token": session.csrf})
        )
        answer.set_cookie(COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True, samesite="strict", path="/",
                          secure=request.url.scheme == "https")
        log.info("user %s logged in", session.user)
        return answer

    def logout(request: Request) -> Response:
        caller(request)
        sessions.logout(request.cookies.get(COOKIE))
        answer = Response(status_code=204)
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return answer

    def session(request: Request) -> Response:
        if "authorization" not in request.headers and sessions.session(request.cookies.get(COOKIE)) is None:
            return JSONResponse({"user": None, "csrf_token": None})  # the page asks before anyone logged in
        who = caller(request)
        return JSONResponse({"user": who.user, "csrf_token": who.csrf, "via": who.via})

    # -- models -----------------------------------------------------------------------------------

    def list_models(request: Request) -> Response:
        caller(request)
        return JSONResponse([
            {
                "name": m.name, "title": m.title, "description": m.description, "accepts": list(m.accepts),
                "platform": m.platform,
                "example_url": f"/api/models/{m.name}/example" if m.example else None,
                "example_name": m.example.name if m.example else None,
                "max_upload_bytes": max_upload_bytes,
            }
            for m in catalogue.values()
        ])

    def example(request: Request) -> Response:
        caller(request)
        model = model_or_404(request.path_params["model"])
        if model is None or model.example is None:
            return _error(404, "no such model, or it has no example")
        return _file(model.example, model.example.name, guess_content_type(model.example.name), download=True)

    async def upload(request: Request) -> Response:
        who = caller(request)
        model = model_or_404(request.path_params["model"])
        if model is None:
            return _error(404, f"no model named {request.path_params['model']!r}")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes * 100 + 1024 * 1024:
            metrics.refused.labels("too_large").inc()
            return _error(413, f"the request is over the upload limit of {max_upload_bytes} bytes per file")
        folder = Path(tempfile.mkdtemp(prefix="conveyor-upload-"))
        try:
            try:
                reader = UploadReader(request.headers.get("content-type", ""), folder, max_upload_bytes)
                async for chunk in request.stream():
                    reader.write(chunk)
                files = reader.finish()
            except TooLarge as exc:
                metrics.refused.labels("too_large").inc()
                return _error(413, str(exc), max_upload_bytes=max_upload_bytes)
            except BadUpload as exc:
                metrics.refused.labels("bad_request").inc()
                return _error(400, str(exc))
            refused = [name for name, _ in files if not model.accepts_name(stored_name(name))]
            if refused:
                metrics.refused.labels("file_type").inc()
                return _error(415, f"{model.title} accepts {', '.join(model.accepts)} files; not "
                              f"{', '.join(repr(shown_name(stored_name(n))) for n in refused)}: nothing was stored")
            stored: list[JobRef] = []

            def store_all() -> None:
                for name, path in files:
                    stored.append(book.store_input(model, who.user, new_upload_id(), stored_name(name), path))

            try:
                await run_in_threadpool(store_all)
            except StorageError as exc:
                await run_in_threadpool(book.remove_inputs, stored)
                metrics.refused.labels("store").inc()
                log.warning("upload by %s to %s failed: %s", who.user, model.name, exc)
                return _error(503, f"the store cannot be reached, nothing was stored: {exc.message}", store=True)
            for _, path in files:
                metrics.uploads.labels(model.name).inc()
                metrics.upload_bytes.labels(model.name).inc(path.stat().st_size)
            log.info("user %s uploaded %d file(s) to %s", who.user, len(stored), model.name)
            return JSONResponse(
                {"jobs": [{"id": r.id, "file": shown_name(r.stored_name), "stored_name": r.stored_name,
                           "status": "PENDING", "model": model.name} for r in stored]},
                status_code=201,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def stats(request: Request) -> Response:
        who = caller(request)
        model = model_or_404(request.path_params["model"])
        if model is None:
            return _error(404, f"no model named {request.path_params['model']!r}")
        data = book.stats(model, who.user)
        metrics.saw_jobs(model.name, who.user, [j["status"] for j in data["jobs"]])
        return JSONResponse(data)

    # -- jobs -------------------------------------------------------------------------------------

    def list_jobs(request: Request) -> Response:
        who = caller(request)
        name = request.query_params.get("model")
        if name:
            model = model_or_404(name)
            if model is None:
                return _error(404, f"no model named {name!r}")
            chosen = [model]
        else:
            chosen = list(catalogue.values())
        try:
            page = max(1, int(request.query_params.get("page", "1")))
            per_page = min(MAX_PER_PAGE, max(1, int(request.query_params.get("per_page", "50"))))
        except ValueError:
            return _error(400, "page and per_page are whole numbers")
        refs = sorted((r for m in chosen for r in book.refs(m, who.user)), key=lambda r: r.id, reverse=True)
        chunk = refs[(page - 1) * per_page : page * per_page]
        jobs = book.read(chunk)
        return JSONResponse({
            "jobs": [job.summary() for job in jobs],
            "page": page,
            "per_page": per_page,
            "total": len(refs),
            "next_page": page + 1 if page * per_page < len(refs) else None,
            "unfinished": sum(1 for job in jobs if job.status in UNFINISHED),
        })

    def own_job(request: Request) -> tuple[Caller, JobRef | None]:
        who = caller(request)
        return who, book.find(who.user, request.path_params["job"])

    def job_detail(request: Request) -> Response:
        _, ref = own_job(request)
        if ref is None:
            return _error(404, "no such job")
        job = book.read([ref])[0]
        outputs = book.outputs(job)
        sizes = book.output_sizes(job, outputs)
        record = job.record or {}
        error = record.get("error") if job.status == "FAILED" else None
        return JSONResponse({
            **job.summary(),
            "input_url": f"/api/jobs/{ref.id}/input",
            "outputs": [
                {"name": o.name, "url": _output_url(ref.id, o.name), "size": size, "media_type": o.media_type}
                for o, size in zip(outputs, sizes, strict=True)
            ],
            "zip_url": f"/api/jobs/{ref.id}/outputs.zip" if outputs else None,
            "error": None if not isinstance(error, dict) else
            {"kind": str(error.get("kind", "error")), "message": str(error.get("message", ""))},
            "log_tail": str(record.get("log_tail") or "") if job.status == "FAILED" else "",
            "job_id": record.get("job_id"),
            "platform": record.get("platform"),
        })

    def delete_job(request: Request) -> Response:
        who, ref = own_job(request)
        if ref is None:
            return _error(404, "no such job")
        book.delete(ref)
        log.info("user %s deleted job %s", who.user, ref.id)
        return Response(status_code=204)

    def job_input(request: Request) -> Response:
        _, ref = own_job(request)
        if ref is None:
            return _error(404, "no such job")
        return _fetched(book, ref.model, ref.model.config.inputs[0].provider, ref.bucket, ref.key,
                        shown_name(ref.stored_name), request)

    def job_output(request: Request) -> Response:
        _, ref = own_job(request)
        if ref is None:
            return _error(404, "no such job")
        job = book.read([ref], with_batch=False)[0]
        wanted = request.path_params["name"]
        output = next((o for o in book.outputs(job) if o.name == wanted), None)
        if output is None:
            return _error(404, "no such output")
        return _fetched(book, ref.model, output.provider, output.bucket, output.key,
                        PurePosixPath(output.name).name, request)

    def job_zip(request: Request) -> Response:
        _, ref = own_job(request)
        if ref is None:
            return _error(404, "no such job")
        job = book.read([ref], with_batch=False)[0]
        outputs = book.outputs(job)
        if not outputs:
            return _error(404, "this job has no outputs (yet)")
        folder = Path(tempfile.mkdtemp(prefix="conveyor-zip-"))
        try:
            archive = folder / "outputs.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
                for index, output in enumerate(outputs):
                    part = folder / f"part-{index}"
                    book.store(ref.model, output.provider).download(output.bucket, output.key, part)
                    inside = "/".join(p for p in PurePosixPath(output.name).parts if p not in ("", ".", "..", "/"))
                    zipped.write(part, inside or f"output-{index}")
                    part.unlink()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        name = f"{PurePosixPath(shown_name(ref.stored_name)).stem or 'job'}-{ref.id}-outputs.zip"
        return FileResponse(archive, media_type="application/zip", filename=name,
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    # -- the rest ---------------------------------------------------------------------------------

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "models": len(catalogue)})

    def metrics_page(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def auth_failed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthError)
        answer = _error(exc.status, exc.message)
        if exc.status == 401 and request.headers.get("x-requested-with") != "conveyor":
            answer.headers["WWW-Authenticate"] = 'Basic realm="conveyor gateway", charset="UTF-8"'
        return answer

    async def store_failed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConveyorError)
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        if isinstance(exc, StorageError):
            return _error(503, f"the store cannot be reached: {exc.message}", store=True)
        return _error(500, f"{exc.kind} error: {exc.message}")

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/metrics", metrics_page),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/session", session),
        Route("/api/models", list_models),
        Route("/api/models/{model}/example", example),
        Route("/api/models/{model}/files", upload, methods=["POST"]),
        Route("/api/models/{model}/stats", stats),
        Route("/api/jobs", list_jobs),
        Route("/api/jobs/{job}", job_detail, methods=["GET"]),
        Route("/api/jobs/{job}", delete_job, methods=["DELETE"]),
        Route("/api/jobs/{job}/input", job_input),
        Route("/api/jobs/{job}/outputs.zip", job_zip),
        Route("/api/jobs/{job}/outputs/{name:path}", job_output),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={AuthError: auth_failed, ConveyorError: store_failed},
    )
    app.add_middleware(_Headers, metrics=metrics)
    app.state.jobs = book
    app.state.metrics = metrics
    app.state.sessions = sessions
    return app


def _output_url(job_id: str, name: str) -> str:
    from urllib.parse import quote

    return f"/api/jobs/{job_id}/outputs/{quote(name, safe='/')}"


def _file(path: Path, name: str, media_type: str, download: bool, background: BackgroundTask | None = None) -> Response:
    """A stored file, served so it is never run as a page: inline only for types a browser shows as
    such (images, audio, JSON, plain text ...); HTML, SVG, scripts and anything unknown as an attachment."""
    inline = not download and (media_type in INLINE_TYPES or media_type.startswith("audio/"))
    if not inline and media_type.startswith("text/"):
        media_type = "text/plain"
    if not inline and media_type not in INLINE_TYPES and not media_type.startswith("audio/"):
        media_type = "application/octet-stream"
    if media_type.startswith("text/") or media_type == "application/json":
        media_type += "; charset=utf-8"
    return FileResponse(path, media_type=media_type, filename=name, background=background,
                        content_disposition_type="inline" if inline else "attachment",
                        headers={"Content-Security-Policy": OUTPUT_POLICY})


def _fetched(book: Jobs, model: Model, provider: Any, bucket: str, key: str, name: str, request: Request) -> Response:
    folder = Path(tempfile.mkdtemp(prefix="conveyor-get-"))
    try:
        path = folder / "object"
        book.store(model, provider).download(bucket, key, path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    download = request.query_params.get("download") in ("1", "true", "yes")
    return _file(path, name, guess_content_type(key), download,
                 background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


def batch_client_for(environ: Mapping[str, str]) -> Callable[[], Any]:
    """A factory of boto3 Batch clients in the region `environ` names (AWS_REGION, AWS_DEFAULT_REGION);
    credentials and AWS_ENDPOINT_URL_BATCH as boto3 finds them."""
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None

    def factory() -> Any:
        import boto3

        return boto3.client("batch", region_name=region)

    return factory


class Gateway:
    """The gateway app, served by uvicorn in a background thread (start/stop), or used as `app`."""

    def __init__(
        self,
        models: list[Model],
        users: Users,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
        secret: bytes | None = None,
        environ: Mapping[str, str] | None = None,
        batch_client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.models = models
        self.users = users
        self.host = host
        self.port = port
        self.environ = dict(environ or {})
        self.app = create_app(models, users, max_upload_bytes=max_upload_bytes, secret=secret,
                              batch_client_factory=batch_client_factory or batch_client_for(self.environ))
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError("the gateway is not started")
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def _server_on_socket(self) -> tuple[Any, socket.socket]:
        import uvicorn

        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(2048)  # connections wait in the queue from now on, before uvicorn serves them
        except OSError:
            sock.close()
            raise
        self._socket = sock
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        return self._server, sock

    def start(self) -> str:
        """Serve in a background thread; returns the base URL ("http://127.0.0.1:PORT")."""
        server, sock = self._server_on_socket()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name="conveyor-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway's web server did not start")
            time.sleep(0.01)
        return self.url

    def serve(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in this thread until Ctrl-C or SIGTERM (the `conveyor gateway` command)."""
        server, sock = self._server_on_socket()
        if on_ready is not None:
            on_ready(self.url)
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
            self.app.state.jobs.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self.app.state.jobs.close()


__all__ = ["Gateway", "Job", "create_app"]
