"""`conveyor local`: the whole event-driven loop on one machine.

    drop folder (DIR/inbox) --upload--> embedded S3 (weed server) --filer webhook--> WebhookReceiver
        --MinIO event, wrapped as OSCAR delegates it--> queue --> N workers --> executor (the
        platform's way) --> result record --> DIR/results/<key>/..., DIR/status/<key>.json

Layout of DIR (everything of a run lives there; delete it to start afresh):

    inbox/               drop files here (sub-folders become key prefixes)
    results/<key>/       the outputs of each input, downloaded from the output bucket
    status/<key>.json    the result record of each input (Conveyor's, plus a "local" section)
    logs/                <job>.log per oscar/batch/docker job; conveyor.log (this process, lambda)
    .s3/                 the S3 server's data, its weed.log and notification.toml
    .conveyor/           function_config.yaml (0600), credentials.json (0600), s3.json, scratch/,
                         gateway-login and gateway-secret (0600: the made-up login, the cookie key)

Order of start-up: directories and definition; the model's files (its handler's prepare()); the webhook
receiver (its URL goes into notification.toml); the S3 server and its buckets; a check that the
model loads (the first Lambda environment's init, or a throw-away handler for oscar/batch), so a
broken model fails the start rather than every file; without --once, the gateway (the web page,
conveyor.local.gateway); the workers; the drop folder. Shutdown runs in reverse and always: the drop
folder and the gateway stop, running jobs get SIGTERM and the grace period (then
SIGKILL), queued events are CANCELLED, the server gets SIGTERM (then SIGKILL). A second Ctrl-C kills at once.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar

from conveyor.child import tail
from conveyor.errors import ConveyorError, StorageError
from conveyor.local import definition as defs
from conveyor.local.executors import (
    Deployment,
    DockerExecutor,
    Executor,
    LocalRunError,
    Outcome,
    ProcessExecutor,
    WarmExecutor,
    clean_environment,
    docker_client,
)
from conveyor.local.progress import Progress, Task, TaskState
from conveyor.local.webhook import (
    ObjectChange,
    WebhookReceiver,
    minio_event,
    notification_toml,
    object_change,
    oscar_event,
)
from conveyor.outputs import safe_file_name
from conveyor.records import Status, results_in, uploads_in

log = logging.getLogger(__name__)
T = TypeVar("T")

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"
# Pauses between the tries of the loop's own S3 steps (drop folder upload, results copy, withdrawal):
# 5 tries in all, 1+2+4+8 s apart.
STORAGE_BACKOFF = (1.0, 2.0, 4.0, 8.0)
JOB_LOG_TAIL = 4096  # bytes of a dead job's log kept in the record the loop writes for it
MAX_DELIVERIES = 3  # deliveries of one event whose jobs are killed from outside (SIGKILL, OOM) before recording
MAX_RESTARTS = 5  # S3 server restarts allowed within RESTART_WINDOW seconds
RESTART_WINDOW = 60.0
SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")
PLATFORMS = ("oscar", "lambda", "batch")


@dataclass
class LocalOptions:
    root: Path
    platform: str = "oscar"
    workers: int = 2
    model: str | None = None  # None: --config's handler, else the default model
    config_path: Path | None = None
    once: bool = False
    docker: bool = False
    image: str | None = None
    timeout: float = 300.0
    samples: bool = True
    samples_dir: Path = SAMPLES_DIR
    json_summary: bool = False
    verbose: bool = False
    event_wait: float = 30.0  # how long an uploaded file may wait for its notification
    gateway_port: int | None = None  # without --once: the web page's port; 0 = none; None = 8642 or a free one
    users: tuple[str, ...] = ()  # the gateway's logins, "name:password"; none: made up (or kept) in .conveyor/
    storage_backoff: tuple[float, ...] = STORAGE_BACKOFF  # pauses between tries of the loop's own S3 steps


class _Stop(BaseException):
    """A signal arrived while starting up: unwind, clean up, report."""


class LocalRun:
    def __init__(self, options: LocalOptions, environ: dict[str, str], stderr: TextIO | None = None,
                 stdout: TextIO | None = None) -> None:
        self.opts = options
        self.environ = environ
        self.root = options.root.resolve()
        self.progress = Progress(self.root, stderr)
        self.stdout = stdout or sys.stdout
        self.inbox = self.root / "inbox"
        self.results = self.root / "results"
        self.status = self.root / "status"
        self.logs = self.root / "logs"
        self.private = self.root / ".conveyor"
        self.tasks: list[Task] = []
        self.queue: queue.Queue[Task | None] = queue.Queue()
        self.server: Any = None
        self.client: Any = None
        self.receiver: WebhookReceiver | None = None
        self.executor: Executor | None = None
        self.deployment: Deployment | None = None
        self._doc: dict[str, Any] = {}
        self.dropfolder: Any = None
        self.workers: list[threading.Thread] = []
        self.model_label = ""
        self.gateway: Any = None  # conveyor.gateway.server.Gateway, beside the loop without --once
        self.gateway_url: str | None = None
        self._entry: Any = None  # conveyor.local.gateway.Entry: the model, as the catalogue shows it
        self._login: Any = None  # conveyor.local.gateway.Login
        self._initial: bool = False  # without --once: files were found at start (their summary is due)
        self.image = options.image
        self._docker: Any = None
        self._saved_stdout: int | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._seen: set[str] = set()  # identities of the object versions already queued
        # (key, etag) the loop delivered itself, its notification overdue (_deliver_unnotified)
        self._delivered_unnotified: set[tuple[str, str | None]] = set()
        self._output_owners: dict[str, str] = {}  # "bucket/key" of an output -> the input that last wrote it
        self._deliveries: dict[str, int] = {}  # task id -> deliveries of its event so far (when redelivered)
        self._uploads: dict[str, tuple[float, float | None]] = {}  # drop-folder key -> (upload start, end)
        self._signal: str | None = None
        self._signals = 0
        self._phase = "starting"  # starting (a signal unwinds the start-up) | running | stopping
        self._started = time.monotonic()

    # -- the whole run ----------------------------------------------------------------------------

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        code = 1
        try:
            try:
                self._prepare()
                self._start()
                self._phase = "running"
                self._scan_inbox()
                self._wait()
                code = self._exit_code()
            except ConveyorError as exc:
                self.progress.say(f"conveyor local: {exc.kind} error: {exc.message}")
                code = exc.exit_code
            except _Stop:
                code = 130 if self._signal == "SIGINT" else 143
            except Exception as exc:  # a bug of ours: still stop everything and show what was done
                log.exception("conveyor local failed")
                self.progress.say(f"conveyor local: internal error: {type(exc).__name__}: {exc} "
                                  f"(traceback in {self.logs / 'conveyor.log'})")
                code = 1
            finally:
                self._phase = "stopping"
                self._shutdown()
            self._summary()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        self._signals += 1
        if self._signals > 1:
            self.progress.say(f"conveyor local: {name} again: killing everything now")
            if self.executor is not None:
                self.executor.interrupt(force=True)
            return
        self._signal = name
        self._wake.set()
        if self._phase == "starting":
            raise _Stop(name)

    # -- start-up ---------------------------------------------------------------------------------

    def _prepare(self) -> None:
        opts = self.opts
        if opts.platform not in PLATFORMS:
            raise LocalRunError(f"unknown platform {opts.platform!r} (choose from {', '.join(PLATFORMS)})")
        if opts.workers < 1:
            raise LocalRunError("--workers must be at least 1")
        if opts.docker and opts.platform == "lambda":
            raise LocalRunError("--docker runs one container per event, as OSCAR and Batch do: use "
                                "--platform oscar or batch (a warm Lambda container needs the Lambda emulator)")
        for folder in (self.inbox, self.results, self.status, self.logs, self.private):
            folder.mkdir(parents=True, exist_ok=True)
        self._setup_logging()
        if opts.config_path is not None:
            if opts.model is not None:
                raise LocalRunError("give --model or --config, not both")
            doc, handler = defs.definition_from_file(opts.config_path, self.environ)
            self.model_label = f"{handler} (from {opts.config_path})"
            preset = defs.preset_for_handler(handler)
            entry = (doc["name"], doc["name"], f"the {handler} handler, as {opts.config_path.name} defines it",
                     preset.accepts if preset else (), preset.example if preset else None)
        else:
            model = defs.model_named(opts.model or defs.DEFAULT_MODEL)
            doc, handler = defs.preset_definition(model), model.handler["name"]
            self.model_label = f"{model.name}: {model.description}"
            self.image = self.image or model.image
            entry = (model.name, model.title or model.name, model.description, model.accepts, model.example)
        if self._wants_gateway():
            self._prepare_gateway(*entry)
        if opts.docker:
            if self.image is None:
                raise LocalRunError("--docker with --config needs --image (the model image to run)")
            self._docker = docker_client(self.image, self.environ)  # before anything starts: no engine, no run
        if not opts.docker:  # a model image brings its own files
            self._prepare_model(doc, handler)
        self._doc = doc

    def _prepare_model(self, doc: dict[str, Any], handler: str) -> None:
        """What the model needs on this machine (weights, files), readied by its handler before anything starts."""
        from conveyor.handler import handler_class

        block = doc["conveyor"]["handler"]
        variables = (doc.get("environment") or {}).get("variables") or {}
        options = handler_class(handler).prepare(
            {k: v for k, v in block.items() if k != "name"},
            environ={**self.environ, **variables},
            say=lambda text: self.progress.say(f"conveyor local: {text}"),
            samples_dir=SAMPLES_DIR,
        )
        doc["conveyor"]["handler"] = {"name": block["name"], **options}

    def _setup_logging(self) -> None:
        from conveyor.logs import setup_logging

        self._log_file = open(self.logs / "conveyor.log", "a", encoding="utf-8", buffering=1)
        if self.stdout is sys.stdout:
            # Models that run in this process (lambda, the start-up check) may print: into the log with
            # it, so stdout holds nothing but the JSON summary. fd 1 itself, to catch C libraries too.
            sys.stdout.flush()
            self._saved_stdout = os.dup(1)
            os.dup2(self._log_file.fileno(), 1)
        setup_logging("INFO", stream=self._log_file)
        if self.opts.verbose:
            from conveyor.logs import LOG_FORMAT

            echo = logging.StreamHandler(self.progress.stream)
            echo.setFormatter(logging.Formatter(LOG_FORMAT))
            echo.addFilter(_with_request_id)
            echo._conveyor = True  # type: ignore[attr-defined]
            logging.getLogger().addHandler(echo)

    def _credentials(self) -> tuple[str, str]:
        """Keys kept from one run to the next, so scripts and S3 clients can keep them."""
        path = self.private / "credentials.json"
        try:
            data = json.loads(path.read_text())
            if isinstance(data.get("access_key"), str) and isinstance(data.get("secret_key"), str):
                return data["access_key"], data["secret_key"]
        except (OSError, ValueError, AttributeError):
            pass
        keys = "conveyor" + secrets.token_hex(6), secrets.token_urlsafe(30)
        _write_private(path, json.dumps({"access_key": keys[0], "secret_key": keys[1]}))
        return keys

    def _start(self) -> None:
        from conveyor.config import load_config
        from conveyor.local.s3server import SeaweedServer
        from conveyor.platform import Platform

        opts = self.opts
        access_key, secret_key = self._credentials()
        token = secrets.token_urlsafe(24)
        self.receiver = WebhookReceiver(self._on_filer_event, token).start()
        self.server = SeaweedServer(
            self.root / ".s3",
            environ=self.environ,
            access_key=access_key,
            secret_key=secret_key,
            notification_toml=notification_toml(self.receiver.url, token, defs.INPUT_BUCKET),
            buckets=defs.BUCKETS,
        )
        self.server.start()
        self.client = self.server.client()
        flat = defs.localize(self._doc, endpoint=self.server.endpoint, access_key=access_key,
                             secret_key=secret_key, timeout=opts.timeout)
        config_path = self.private / "function_config.yaml"
        text = defs.write_definition(flat, config_path)
        config = load_config({}, Platform(opts.platform), path=config_path, secrets_dir=None)
        _write_private(self.private / "s3.json", json.dumps(
            {"endpoint": self.server.endpoint, "access_key": access_key, "secret_key": secret_key,
             "region": "us-east-1", "buckets": dict(zip(("input", "output", "status"), defs.BUCKETS, strict=True))},
            indent=2))
        deployment = Deployment(
            root=self.root,
            platform=opts.platform,
            definition=text,
            config=config,
            timeout=opts.timeout,
            environ=clean_environment(self.environ),
            cwd=Path.cwd(),
            logs=self.logs,
            scratch=self.private / "scratch",
        )
        deployment.scratch.mkdir(parents=True, exist_ok=True)
        self.deployment = deployment
        if opts.docker:
            executor: Executor = DockerExecutor(deployment, self.image or "", self._docker)
        elif opts.platform == "lambda":
            executor = WarmExecutor(deployment, opts.workers)
            executor.spare = {self.server.pid}
        else:
            executor = ProcessExecutor(deployment)
            _check_model_loads(config)
        self.executor = executor
        executor.start()
        if self._entry is not None:
            self._start_gateway(config)
        self._banner(access_key, secret_key)
        for n in range(opts.workers):
            thread = threading.Thread(target=self._worker, name=f"worker-{n + 1}", daemon=True)
            thread.start()
            self.workers.append(thread)
        from conveyor.local.dropfolder import DropFolder

        self.dropfolder = DropFolder(self.inbox, self._upload).start()

    def _wants_gateway(self) -> bool:
        return not self.opts.once and self.opts.gateway_port != 0

    def _prepare_gateway(self, name: str, title: str, description: str, accepts: tuple[str, ...],
                         example: str | None) -> None:
        """The gateway's catalogue entry and login, before anything starts (a bad --user fails the start)."""
        from conveyor.local import gateway

        try:
            importlib.import_module("conveyor.gateway.server")  # the web server and its libraries load, or no gateway
            self._login = gateway.login(self.opts.users, self.private)
        except ImportError as exc:  # installed without the `gateway` extra (starlette, uvicorn ...)
            if self.opts.gateway_port is not None or self.opts.users:
                raise LocalRunError(f"the gateway cannot load: {exc} (pip install 'conveyor[gateway]', "
                                    "or --gateway-port 0 for none)") from exc
            self.progress.say(f"conveyor local: no gateway (the web page): {exc}; pip install 'conveyor[gateway]' "
                              "adds it (--gateway-port 0 to go without it)")
            return
        sample = self.opts.samples_dir / example if example else None
        self._entry = gateway.Entry(name=gateway.catalogue_name(name), title=title, description=description,
                                    accepts=accepts, example=sample if sample and sample.is_file() else None)

    def _start_gateway(self, config: Any) -> None:
        """The web page over the running model (conveyor.gateway), on 127.0.0.1."""
        from conveyor.local import gateway

        port = gateway.choose_port(self.opts.gateway_port)
        try:
            self.gateway, self.gateway_url = gateway.start(
                self._entry, config, self._login.users, port=port, secret=gateway.session_secret(self.private),
                environ=self.environ)
        except ConveyorError:
            raise
        except Exception as exc:  # the port is taken, the server would not start
            raise LocalRunError(f"the gateway could not start on {gateway.HOST}:{port}: "
                                f"{type(exc).__name__}: {exc} (--gateway-port PORT, or 0 for none)") from exc

    def _banner(self, access_key: str, secret_key: str) -> None:
        opts = self.opts
        how = {
            "oscar": "a fresh `conveyor run` per event, as an OSCAR Kubernetes job",
            "batch": "a fresh `conveyor run` per event, as an AWS Batch job",
            "lambda": "warm in-process environments, as AWS Lambda keeps them",
        }[opts.platform]
        if opts.docker:
            how = f"the image {self.image} per event (docker run --network host)"
        endpoint = self.server.endpoint
        say = self.progress.say
        say(f"conveyor local: {self.model_label}")
        say(f"  platform     {opts.platform}: {how}; {opts.workers} worker{'s' if opts.workers > 1 else ''}, "
            f"timeout {opts.timeout:g}s")
        say(f"  S3 endpoint  {endpoint}  access key {access_key}  secret key {secret_key}")
        say(f"  buckets      {defs.INPUT_BUCKET} (uploads here are processed), {defs.OUTPUT_BUCKET}, "
            f"{defs.STATUS_BUCKET} (result records)")
        say(f"  drop folder  {self.inbox}  ->  {self.results}/<file>/, records in {self.status}/")
        say(f"  e.g.         AWS_ACCESS_KEY_ID={access_key} AWS_SECRET_ACCESS_KEY={secret_key} "
            f"aws --endpoint-url {endpoint} s3 cp FILE s3://{defs.INPUT_BUCKET}/")
        if self.gateway_url is not None:
            say(f"  gateway      {self.gateway_url}  <- open it in a browser: upload files, follow them, see results")
            login = self._login
            if login.shown is not None:
                name, _, password = login.shown.partition(":")
                say(f"  login        user {name}  password {password}  (kept in {login.path}; "
                    "--user NAME:PASSWORD sets your own)")
            else:
                names = login.users.names
                plural = "s" if len(names) > 1 else ""
                say(f"  login        {', '.join(names)}, with the password{plural} given by --user")
        if not opts.once:
            say("  Ctrl-C stops (a summary is printed)")

    # -- events -----------------------------------------------------------------------------------

    def _on_filer_event(self, payload: Any) -> None:
        """A POST from the filer (webhook thread): queue a task when it is a new input object."""
        change = object_change(payload, defs.INPUT_BUCKET)
        if change is None or self.server is None or not self.server.ports:
            return
        with self._lock:
            if (change.key, change.etag) in self._delivered_unnotified:
                # delivered by the loop itself when this notification was overdue: not a second event
                self._delivered_unnotified.discard((change.key, change.etag))
                log.info("the overdue notification for %s/%s came after all: already delivered",
                         change.bucket, change.key)
                return
        self._queue_change(change)

    def _queue_change(self, change: ObjectChange) -> None:
        """Queue a task for an input object version not queued before."""
        if self.server is None:
            return
        with self._lock:
            if change.identity in self._seen or self._stopping.is_set():
                return
            self._seen.add(change.identity)
            event = minio_event(change, endpoint=self.server.endpoint, principal=self.server.access_key)
            task = Task(id=str(uuid.uuid4()), bucket=change.bucket, key=change.key, size=change.size,
                        event=oscar_event(event))
            self.tasks.append(task)
        log.info("event for %s/%s (%d bytes): job %s", change.bucket, change.key, change.size, task.id)
        self.progress.queued(task)
        self.queue.put(task)

    def _upload(self, path: Path, key: str) -> None:
        """Drop folder -> input bucket (the drop folder's thread)."""
        started = time.monotonic()
        with self._lock:
            self._uploads[key] = (started, None)
        try:
            # The file stays in the inbox whatever happens; a restarting S3 server is waited for.
            self._patiently(lambda: self.client.upload_file(str(path), defs.INPUT_BUCKET, key),
                            retry=lambda exc: not isinstance(exc, OSError))
        except Exception as exc:  # boto3's errors, or the file vanished
            log.warning("upload of %s failed: %s", path, exc)
            self._synthetic_failure(key, path.stat().st_size if path.exists() else 0,
                                    {"kind": "storage", "message": f"upload of {path.name} to the input bucket "
                                     f"failed: {' '.join(str(exc).split())[:300]}"})
            with self._lock:
                self._uploads.pop(key, None)
            return
        with self._lock:
            self._uploads[key] = (started, time.monotonic())
        self._wake.set()

    def _scan_inbox(self) -> None:
        inbox_files = [p for p in self.inbox.rglob("*") if p.is_file() and not p.name.startswith(".")]
        if not inbox_files and self.opts.samples:
            samples = sorted(p for p in self.opts.samples_dir.glob("*") if p.suffix.lower() in SAMPLE_SUFFIXES)
            for sample in samples:
                shutil.copy2(sample, self.inbox / sample.name)
            if samples:
                self.progress.say(f"conveyor local: the drop folder was empty: copied {len(samples)} sample "
                                  f"input{'s' if len(samples) > 1 else ''} from {self.opts.samples_dir}")
            else:
                self.progress.say(f"conveyor local: no sample inputs in {self.opts.samples_dir} (they come with "
                                  f"the source tree): drop files into {self.inbox}")
        with self._lock:  # held until every key is expected: an upload cannot finish before that
            keys = self.dropfolder.scan()
            for key in keys:
                self._uploads.setdefault(key, (time.monotonic(), None))
            self._initial = bool(keys) and not self.opts.once
        if self.opts.once:
            if not keys:
                self.progress.say(f"conveyor local: nothing to process in {self.inbox}")

    # -- workers ----------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            task = self.queue.get()
            if task is None:
                return
            if self._stopping.is_set():
                self._finish(task, TaskState.CANCELLED)
                continue

            def started(who: str, task: Task = task) -> None:
                task.worker = who
                task.started_at = time.monotonic()
                task.state = TaskState.RUNNING
                self.progress.running(task)

            executor = self.executor
            assert executor is not None  # started before the workers
            try:
                outcome = executor.run(task, started)
            except Exception as exc:
                log.exception("the %s executor failed on %s", executor.name, task.key)
                outcome = Outcome(error=f"{type(exc).__name__}: {exc}")
            if task.started_at is None:
                task.started_at = time.monotonic()
            self._complete(task, outcome)

    def _complete(self, task: Task, outcome: Outcome) -> None:
        record = self._record_for(task, outcome)
        if self._redeliver(task, outcome, record):
            return
        if outcome.error and record.get("status") == "SUCCEEDED":
            record["status"] = "FAILED"
            record["error"] = {"kind": "local", "message": outcome.error}
        state = TaskState.SUCCEEDED if record.get("status") == "SUCCEEDED" else TaskState.FAILED
        results_dir = local_path(self.results, task.key)
        _remove(results_dir)  # a re-processed input keeps only its latest outputs
        results_error = None
        if state is TaskState.SUCCEEDED:
            # The outputs are published: the local copy is a convenience. It waits a little for a
            # restarting S3 server, and failing it never turns the platform's SUCCEEDED into FAILED.
            try:
                folder = task.key.rpartition("/")[0]  # keep_input_folders: the outputs lie under it
                task.results = self._patiently(lambda: self._download(record.get("outputs") or [], results_dir, folder),
                                               retry=lambda exc: isinstance(exc, (StorageError, OSError)))
            except (StorageError, OSError) as exc:
                results_error = f"could not copy the results to {results_dir}: {exc}"
            if results_error:
                self.progress.say(f"conveyor local: warning: {task.key}: {results_error}")
        shared = self._shared_outputs(task, record.get("outputs") or [])
        if shared:
            self.progress.say(
                f"conveyor local: warning: {task.key} wrote {', '.join(sorted(shared))}, also written for "
                f"{', '.join(sorted(set(shared.values())))}: outputs are keyed by file name, so inputs whose "
                "model writes the same name overwrite each other (on OSCAR and Lambda too); name outputs "
                "after the input")
        record["local"] = {
            "job_id": task.id,
            "platform": self.opts.platform,
            "worker": task.worker,
            "wait_seconds": round(task.wait or 0.0, 3),
            "exit_code": outcome.exit_code,
            "results": [str(p) for p in task.results],
            **({"results_error": results_error} if results_error else {}),
            "log": str(task.log_path) if task.log_path else None,
            **({"outputs_shared_with": shared} if shared else {}),
            **outcome.facts,
        }
        task.record = record
        task.record_path = local_path(self.status, task.key, suffix=".json")
        task.record_path.parent.mkdir(parents=True, exist_ok=True)
        task.record_path.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n")
        self._finish(task, state)

    def _redeliver(self, task: Task, outcome: Outcome, record: dict[str, Any]) -> bool:
        """Queue the event again when its job was killed from outside (SIGKILL, the OOM killer: a
        negative exit code the loop did not cause) before it recorded a result, as the platforms'
        queues redeliver an event whose consumer died; at most MAX_DELIVERIES deliveries in all.
        `record` is the loop's own for the dead job (_record_for has withdrawn what it created).
        The new delivery is a new job: its own id, log, request id and scratch."""
        code = outcome.exit_code
        killed = code is not None and code < 0 and outcome.error is None
        ours = record.get("request_id") == task.id and (record.get("error") or {}).get("kind") == "local"
        done = self._deliveries.pop(task.id, 1)
        if not (killed and ours) or done >= MAX_DELIVERIES or self._stopping.is_set() or self._signal:
            return False
        old = task.id
        task.id = str(uuid.uuid4())
        self._deliveries[task.id] = done + 1
        task.state, task.started_at, task.log_path, task.worker = TaskState.QUEUED, None, None, ""
        self.progress.say(
            f"conveyor local: {task.key}: job {old[:8]} was killed by {_signal_name(-(code or 0))} before "
            f"recording a result: delivering the event again ({done + 1} of {MAX_DELIVERIES})")
        self.queue.put(task)
        return True

    def _finish(self, task: Task, state: TaskState) -> None:
        task.finished_at = time.monotonic()
        task.state = state
        self.progress.finished(task)
        self._wake.set()

    def _record_for(self, task: Task, outcome: Outcome) -> dict[str, Any]:
        """The task's result record: the executor's, the final one in the status bucket, the log's, or ours."""
        for record in outcome.records:
            if (record.get("input") or {}).get("key") == task.key:
                return record
        status_key = f"{defs.INPUT_BUCKET}/{task.key}.json"
        start: dict[str, Any] | None = None  # the job's start record, left in the status bucket by its death
        try:
            body = self.client.get_object(Bucket=defs.STATUS_BUCKET, Key=status_key)["Body"].read()
            record = json.loads(body)
            if record.get("request_id") == task.id:
                if record.get("status") != Status.RUNNING:
                    return record
                start = record  # the job died after starting: its last word is not a result
        except Exception as exc:  # absent (the job died before writing it), or unreadable
            log.debug("no record for job %s in %s/%s: %s", task.id, defs.STATUS_BUCKET, status_key, exc)
        for record in results_in(task.log_path):
            if record.get("request_id") == task.id and (record.get("input") or {}).get("key") == task.key:
                if start is not None:
                    self._replace_start(status_key, record)
                return record
        # The end of the dead job's own log (not of conveyor.log, which every lambda environment shares).
        end = tail(task.log_path, JOB_LOG_TAIL) if task.log_path and task.log_path.name != "conveyor.log" else ""
        code = outcome.exit_code
        ended = f"was killed by {_signal_name(-code)}" if code is not None and code < 0 else f"exited with code {code}"
        reason = outcome.error or f"the job {ended} before writing a result record"
        last = next((line for line in reversed(end.splitlines()) if line.strip()), "")
        record = {
            "status": "FAILED",
            "input": {"bucket": task.bucket, "key": task.key, "size": task.size},
            "platform": self.opts.platform,
            "request_id": task.id,
            "exit_code": outcome.exit_code,
            "error": {"kind": "local", "message": f"{reason}: {last}" if last else reason},
            "log_tail": end,
            "outputs": [],
            "timings": {},
        }
        # A job killed between its uploads and its record published outputs that no record will
        # claim: a FAILED input keeps none, so remove what its log says it uploaded.
        withdrawn, left = self._withdraw(uploads_in(task.log_path, task.id))
        record["extra"] = {name: targets for name, targets in (("withdrawn", withdrawn), ("not_withdrawn", left))
                           if targets}
        if start is not None:
            record["started_at"] = start.get("started_at", "")
            record["finished_at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
            self._replace_start(status_key, record)
        return record

    def _replace_start(self, status_key: str, record: dict[str, Any]) -> None:
        """A job that died after its start record left it (RUNNING) in the status bucket, where the
        gateway reads it, and would show it running for ever: the record the loop found or made for
        it takes its place (waiting for a restarting S3 server)."""
        body = json.dumps(record, ensure_ascii=False, sort_keys=True, default=str).encode()
        try:
            self._patiently(partial(self.client.put_object, Bucket=defs.STATUS_BUCKET, Key=status_key, Body=body),
                            retry=lambda exc: True)
        except Exception as exc:
            log.error("could not replace the start record %s/%s of a job that died: %s",
                      defs.STATUS_BUCKET, status_key, exc)

    def _withdraw(self, targets: list[str]) -> tuple[list[str], list[str]]:
        """Delete these "bucket/key" objects (waiting for a restarting S3 server). Returns (removed, left)."""
        removed, left = [], []
        for target in targets:
            bucket, _, key = target.partition("/")
            try:
                self._patiently(partial(self.client.delete_object, Bucket=bucket, Key=key), retry=lambda exc: True)
                removed.append(target)
                log.warning("withdrew %s: its job died before it recorded a result", target)
            except Exception as exc:
                left.append(target)
                log.error("could not withdraw %s after its job died: %s", target, exc)
        return removed, left

    def _shared_outputs(self, task: Task, outputs: list[str]) -> dict[str, str]:
        """Outputs of this task that another input's task wrote too: {output: the other input's key}."""
        shared = {}
        with self._lock:
            for output in outputs:
                owner = self._output_owners.setdefault(output, task.key)
                if owner != task.key:
                    shared[output] = owner
                    self._output_owners[output] = task.key
        return shared

    def _patiently(self, step: Callable[[], T], retry: Callable[[Exception], bool]) -> T:
        """Run one of the loop's own S3 steps; while it fails in a way `retry` accepts (the S3 server
        is restarting, say), try again after each pause of `storage_backoff` (once more than it has
        pauses in all), unless the loop is stopping."""
        pauses = self.opts.storage_backoff
        attempts = len(pauses) + 1
        for attempt in range(1, attempts + 1):
            try:
                return step()
            except Exception as exc:
                if attempt == attempts or self._stopping.is_set() or not retry(exc):
                    raise
                log.info("%s; trying again (%d of %d)", " ".join(str(exc).split())[:200], attempt + 1, attempts)
                self._stopping.wait(pauses[attempt - 1])
        raise AssertionError("unreachable")  # pragma: no cover

    def _download(self, outputs: list[str], target: Path, folder: str = "") -> list[Path]:
        """Copy the outputs into `target`, each by its key below the input's `folder` (where
        keep_input_folders put it): results/<input key>/<output name>."""
        files = []
        for output in outputs:
            bucket, _, key = output.partition("/")
            dest = local_path(target, key.removeprefix(f"{folder}/") if folder else key)
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            try:
                # One streamed GET (boto3's download_file starts a transfer manager and its threads for
                # every file: 7 ms rather than 2 for a small output, on the worker's way to its next job).
                body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
                try:
                    with open(part, "wb") as out:
                        shutil.copyfileobj(body, out, 1 << 20)
                finally:
                    body.close()
                os.replace(part, dest)
            except Exception as exc:
                with contextlib.suppress(OSError):
                    part.unlink(missing_ok=True)
                raise StorageError(f"{output}: {' '.join(str(exc).split())[:200]}") from exc
            files.append(dest)
        return files

    def _synthetic_failure(self, key: str, size: int, error: dict[str, Any]) -> None:
        """A FAILED task for a file that never became an event (upload failed, no notification)."""
        task = Task(id=str(uuid.uuid4()), bucket=defs.INPUT_BUCKET, key=key, size=size, event={})
        task.started_at = task.queued_at
        with self._lock:
            self.tasks.append(task)
        self._complete(task, Outcome(error=f"{error['kind']}: {error['message']}"))

    # -- waiting and stopping -----------------------------------------------------------------------

    def _wait(self) -> None:
        restarts: list[float] = []
        while self._signal is None:
            if not self.server.running:
                self._restart_server(restarts)
            if self.opts.once and self._once_finished():
                return
            if self._initial and self._once_finished():
                self._initial = False
                self._interim_summary()
            self._wake.wait(0.2)
            self._wake.clear()

    def _restart_server(self, restarts: list[float]) -> None:
        """The S3 server died: start it again on the same ports and data, as a platform's storage
        comes back. Jobs in flight meanwhile fail with a storage error and are recorded; drop-folder
        uploads wait for it. A start that fails (the server dies again while starting, a port is
        taken) is tried again, 0.5, 1, 2 ... s later. Every start counts: more than MAX_RESTARTS
        within RESTART_WINDOW seconds and the loop gives up (LocalRunError)."""
        now = time.monotonic()
        restarts[:] = [t for t in restarts if now - t < RESTART_WINDOW]
        tail = self.server.log_tail(20)
        if len(restarts) >= MAX_RESTARTS:
            raise LocalRunError(f"the S3 server stopped {len(restarts) + 1} times in {RESTART_WINDOW:.0f} s; "
                                f"{self.server.log_path}:\n{tail}")
        restarts.append(now)
        self.progress.say("conveyor local: the S3 server stopped unexpectedly: restarting it")
        pause = 0.5
        while True:
            try:
                self.server.start()
                break
            except ConveyorError as exc:  # it would not start, or died (was killed) while starting
                restarts.append(time.monotonic())
                if len(restarts) > MAX_RESTARTS or self._signal is not None:
                    raise LocalRunError(f"the S3 server stopped and could not be restarted: {exc.message}; "
                                        f"{self.server.log_path}:\n{tail}") from exc
                log.warning("the S3 server did not come back (%s): starting it again in %.1f s", exc.message, pause)
                until = time.monotonic() + pause
                while self._signal is None and time.monotonic() < until:
                    time.sleep(0.1)
                pause *= 2
        log.warning("S3 server restarted (pid %s)", self.server.pid)  # bench/drill.py waits for this line

    def _interim_summary(self) -> None:
        """Without --once: the files found at start are done; say so, and what the loop still offers."""
        self.progress.table(list(self.tasks), time.monotonic() - self._started, title="the files found at start")
        where = f"open {self.gateway_url} or drop files into {self.inbox}" if self.gateway_url else \
            f"drop files into {self.inbox}"
        self.progress.say(f"conveyor local: still running: {where} (Ctrl-C stops)")

    def _once_finished(self) -> bool:
        """Every drop-folder file has a finished task, and nothing else is queued or running (--once:
        the run is done; without it: the files found at start are)."""
        if self.dropfolder is not None and self.dropfolder.busy():
            return False
        now = time.monotonic()
        with self._lock:
            tasks = list(self.tasks)
            uploads = dict(self._uploads)
        if any(not t.state.finished for t in tasks):
            return False
        for key, (began, ended) in uploads.items():
            done = any(t.key == key and t.queued_at >= began - 1.0 and t.state.finished for t in tasks)
            if done:
                continue
            if ended is not None and now - ended > self.opts.event_wait:
                with self._lock:  # pending again until the loop's own delivery is queued (or fails)
                    self._uploads[key] = (began, None)
                threading.Thread(target=self._deliver_unnotified, args=(key, began), name="deliver-unnotified",
                                 daemon=True).start()
            return False
        return True

    def _deliver_unnotified(self, key: str, began: float) -> None:
        """An input the loop uploaded whose notification did not come within event_wait (SeaweedFS
        loses one now and then around a restart): the loop read the object back and delivers its
        event itself, as the notification would have; the notification, should it come after all,
        is then not a second event. Only an object that cannot be read back fails, with a record."""
        wait = f"{self.opts.event_wait:.0f}s"
        try:
            head = self._patiently(lambda: self.client.head_object(Bucket=defs.INPUT_BUCKET, Key=key),
                                   retry=lambda exc: "404" not in str(exc) and "Not Found" not in str(exc))
        except Exception as exc:  # boto3's errors: the object is gone, or the server stays down
            with self._lock:
                self._uploads.pop(key, None)
            self._synthetic_failure(key, 0, {
                "kind": "local",
                "message": f"uploaded, but no notification came from SeaweedFS within {wait}, and the "
                           f"object could not be read back: {' '.join(str(exc).split())[:300]} "
                           f"(see {self.server.log_path})",
            })
            return
        etag = str(head.get("ETag") or "").strip('"') or None
        modified = head.get("LastModified")
        change = ObjectChange(
            bucket=defs.INPUT_BUCKET, key=key, size=int(head.get("ContentLength") or 0), etag=etag,
            content_type=head.get("ContentType"), owner=None, multipart=bool(etag and "-" in etag),
            mtime_ns=int(modified.timestamp() * 1e9) if modified is not None else None,
            identity=json.dumps(["unnotified", key, etag]),
        )
        log.warning("no notification came from SeaweedFS within %s for %s/%s: delivering its event "
                    "from the loop", wait, defs.INPUT_BUCKET, key)
        with self._lock:
            if any(t.key == key and t.queued_at >= began - 1.0 for t in self.tasks):
                return  # the notification came while the object was read back
            self._delivered_unnotified.add((key, etag))
        self._queue_change(change)

    def _shutdown(self) -> None:
        self._stopping.set()
        if self._signal:
            running = sum(1 for t in self.tasks if t.state is TaskState.RUNNING)
            jobs = f" ({running} running job{'s' if running > 1 else ''} get SIGTERM)" if running else ""
            self.progress.say(f"conveyor local: {self._signal}: stopping{jobs}")
        if self.dropfolder is not None:
            self.dropfolder.stop()
        if self.gateway is not None:
            self.gateway.stop()  # no new uploads while the loop stops
        if self.executor is not None:
            self.executor.interrupt()
        while True:  # whatever is still queued will not run
            try:
                task = self.queue.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                self._finish(task, TaskState.CANCELLED)
        for _ in self.workers:
            self.queue.put(None)
        grace = self.deployment.grace if self.deployment is not None else 10.0
        deadline = time.monotonic() + grace + 15
        for thread in self.workers:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.workers) and self.executor is not None:
            self.executor.interrupt(force=True)
            for thread in self.workers:
                thread.join(timeout=5)
        for task in list(self.tasks):  # queued while the queue was being drained
            if task.state is TaskState.QUEUED:
                self._finish(task, TaskState.CANCELLED)
        if self.executor is not None:
            self.executor.close()
        if self.server is not None:
            self.server.stop()
        if self.receiver is not None:
            self.receiver.stop()
        shutil.rmtree(self.private / "scratch", ignore_errors=True)

    def _exit_code(self) -> int:
        if self._signal is not None and self.opts.once:
            return 130 if self._signal == "SIGINT" else 143
        return 1 if any(t.state is not TaskState.SUCCEEDED for t in self.tasks) else 0

    def _summary(self) -> None:
        wall = time.monotonic() - self._started
        if self._saved_stdout is not None:
            sys.stdout.flush()
            os.dup2(self._saved_stdout, 1)
            os.close(self._saved_stdout)
            self._saved_stdout = None
        tasks = list(self.tasks)
        if tasks or self.server is not None:
            self.progress.table(tasks, wall, interrupted=self._signal)
        if self.opts.json_summary:
            counts = {state.value: sum(1 for t in tasks if t.state is state) for state in TaskState}
            summary = {
                "platform": self.opts.platform,
                "model": self.model_label,
                "root": str(self.root),
                "wall_seconds": round(wall, 3),
                "interrupted_by": self._signal,
                "succeeded": counts["SUCCEEDED"],
                "failed": counts["FAILED"],
                "cancelled": counts["CANCELLED"],
                "files": [t.summary(self.root) for t in tasks],
            }
            print(json.dumps(summary, indent=2, ensure_ascii=False), file=self.stdout, flush=True)
        if getattr(self, "_log_file", None) is not None:
            root = logging.getLogger()
            for handler in list(root.handlers):
                if getattr(handler, "_conveyor", False):
                    root.removeHandler(handler)
            self._log_file.close()


def _with_request_id(record: logging.LogRecord) -> bool:
    if not hasattr(record, "request_id"):
        from conveyor.logs import request_id

        record.request_id = request_id.get()
    return True


def _check_model_loads(config: Any) -> None:
    """oscar/batch: load the model once here, so a broken setup fails now rather than once per file."""
    from conveyor.handler import load_handler

    handler = load_handler(config)
    try:
        handler.ensure_setup()
    finally:
        handler.close()


def local_path(base: Path, key: str, suffix: str = "") -> Path:
    """base/<key> with every segment made a safe file name (no '..', no absolute paths)."""
    parts = [safe_file_name(part, fallback="_") for part in key.split("/") if part not in ("", ".")]
    parts = [part if part != ".." else "_" for part in parts] or ["_"]
    parts[-1] += suffix
    return base.joinpath(*parts)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
