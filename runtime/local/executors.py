"""How one event is processed: the way the chosen platform would run it.

    oscar, batch   ProcessExecutor  a fresh `conveyor run --platform P` per event, as a Kubernetes
                                    Job or an AWS Batch job starts one: the event on stdin and in
                                    EVENT, the definition in FUNCTION_CONFIG (base64), the job's
                                    identity in JOB_UUID + OSCAR_SERVICE_NAME (oscar) or
                                    AWS_BATCH_JOB_ID/_ATTEMPT/_JQ_NAME/_CE_NAME (batch). Own session;
                                    stdout and stderr to DIR/logs/<job>.log.
    lambda         WarmExecutor     warm environments in this process, as Lambda keeps them: each
                                    is the Lambda handler itself (conveyor.lambda_runtime.LambdaApp)
                                    holding one handler (the model loaded once, in its init), and
                                    serves one event at a time with a context whose function
                                    timeout is --timeout; up to --workers environments, the most
                                    recently used one first. Logs to DIR/logs/conveyor.log.
    --docker       DockerExecutor   the model image per event (`docker run --network host`, the
                                    image's `conveyor run` entrypoint, EVENT and FUNCTION_CONFIG).

Every executor returns an Outcome; the result record itself is fetched by the runner (from the
status bucket, where Conveyor uploads it) when the executor does not hold it. `interrupt()` stops
what runs (SIGTERM, then SIGKILL after the grace period); `interrupt(force=True)` kills at once,
models included: they run in sessions of their own (conveyor.child), so a kill walks the process
tree (`kill_tree`) instead of trusting one process group. Both are safe from any thread. A job
that outlives --timeout + grace + 30 s is killed the same way.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.config import FunctionConfig
from conveyor.errors import ConveyorError, exit_code_for
from conveyor.local.progress import Task
from conveyor.procgroup import signal_group

if TYPE_CHECKING:
    from conveyor.handler import Handler

log = logging.getLogger(__name__)

# Variables that would tell a child it runs somewhere else, or hand it another definition.
FOREIGN_VARS = ("FDL", "FUNCTION_CONFIG", "SCRIPT", "EVENT", "CONTEXT", "CONVEYOR_PLATFORM", "JOB_UUID",
                "OSCAR_SERVICE_NAME")
MARGIN = 30.0  # seconds a job gets beyond its model deadline (start-up, download, upload)


class LocalRunError(ConveyorError):
    """`conveyor local` cannot run as asked (no Docker engine, no image, a bad combination)."""

    exit_code = 69
    kind = "local"


@dataclass
class Outcome:
    exit_code: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)  # when the executor holds them
    error: str | None = None  # what went wrong around the pipeline (a crash, a kill)
    facts: dict[str, Any] = field(default_factory=dict)  # who ran it: pid, environment, invocation ...


@dataclass
class Deployment:
    """What every executor shares: the definition, where things go, how long a job may take."""

    root: Path
    platform: str  # oscar | batch | lambda
    definition: str  # the flat YAML
    config: FunctionConfig  # the same, parsed
    timeout: float
    environ: Mapping[str, str]  # the base environment for jobs
    cwd: Path
    logs: Path
    scratch: Path

    @property
    def grace(self) -> float:
        return self.config.conveyor.grace_period

    def job_environment(self, task: Task) -> dict[str, str]:
        """The variables a platform sets for one job (besides what the image or machine has)."""
        env = {
            "FUNCTION_CONFIG": base64.b64encode(self.definition.encode()).decode(),
            "EVENT": json.dumps(task.event, ensure_ascii=False),
            "PYTHONUNBUFFERED": "1",
        }
        if self.platform == "batch":
            env.update(
                AWS_BATCH_JOB_ID=task.id,
                AWS_BATCH_JOB_ATTEMPT="1",
                AWS_BATCH_JQ_NAME="conveyor-local",
                AWS_BATCH_CE_NAME="conveyor-local",
                AWS_LAMBDA_FUNCTION_NAME=self.config.name,  # SCAR sets it in Batch jobs too
            )
        else:
            env.update(JOB_UUID=task.id, OSCAR_SERVICE_NAME=self.config.name)
        return env


def clean_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The developer's environment without what would mislead a job (AWS_*, a platform, a definition)."""
    return {k: v for k, v in environ.items() if not k.startswith(("AWS_", "WEED_")) and k not in FOREIGN_VARS}


class Executor:
    name = "executor"

    def start(self) -> None:
        """Check what the executor needs; raise LocalRunError (or a ConveyorError) when it cannot work."""

    def run(self, task: Task, started: Callable[[str], None]) -> Outcome:
        """Process the task's event; call `started(<who runs it>)` just before the work begins."""
        raise NotImplementedError

    def interrupt(self, force: bool = False) -> None:
        """Stop whatever runs: SIGTERM and the grace period, or at once with `force`."""

    def close(self) -> None:
        """Release what start() took."""


# -- oscar / batch: one process per event ---------------------------------------------------------


def conveyor_argv() -> list[str]:
    """`conveyor` next to this interpreter (what the images run), else `python -m runtime`."""
    script = Path(sys.executable).parent / "conveyor"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "conveyor"]


class ProcessExecutor(Executor):
    def __init__(self, deployment: Deployment) -> None:
        self.dep = deployment
        self.name = deployment.platform
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stop_at: float | None = None  # monotonic time of interrupt(): SIGKILL after the grace
        self._force = False

    def run(self, task: Task, started: Callable[[str], None]) -> Outcome:
        dep = self.dep
        scratch = dep.scratch / task.id
        scratch.mkdir(parents=True, exist_ok=True)
        env = dict(dep.environ)
        env.update(dep.job_environment(task))
        env["TMPDIR"] = str(scratch)
        env[JOB_MARK] = task.id  # inherited by the model: found again once the job is gone
        log_path = dep.logs / f"{task.id}.log"
        task.log_path = log_path
        argv = [*conveyor_argv(), "run", "--platform", dep.platform]
        try:
            with self._lock:
                if self._stop_at is not None:
                    return Outcome(error="not started: conveyor local is stopping")
                started(f"{dep.platform} job {task.id[:8]}")
                with open(log_path, "wb") as out:
                    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=dep.cwd, env=env, start_new_session=True)
                self._running[task.id] = proc
            try:
                assert proc.stdin is not None
                proc.stdin.write(env["EVENT"].encode())
                proc.stdin.close()
            except OSError:
                pass  # it exited already; its log says why
            rc, error = self._wait(proc)
            if orphans := kill_marked(task.id):
                log.warning("job %s left %d process(es) behind (pids %s): killed", task.id[:8], len(orphans),
                            ", ".join(map(str, orphans[:10])))
        finally:
            with self._lock:
                self._running.pop(task.id, None)
            shutil.rmtree(scratch, ignore_errors=True)
        return Outcome(exit_code=rc, error=error, facts={"pid": proc.pid, "job_id": task.id, "command": argv})

    def _wait(self, proc: subprocess.Popen[bytes]) -> tuple[int, str | None]:
        limit = time.monotonic() + self.dep.timeout + self.dep.grace + MARGIN
        error = None
        termed = False
        with ExitWatch(proc.pid) as exit_watch:
            while not _exited(proc.pid):
                now = time.monotonic()
                if not termed and now > limit:
                    error = f"the job outlived its deadline ({self.dep.timeout:.0f} s + {MARGIN:.0f} s) and was killed"
                    signal_group(proc.pid, signal.SIGTERM)
                    termed, limit = True, now + self.dep.grace
                elif termed and now > limit:
                    kill_tree(proc.pid)
                if self._stop_at is not None and not termed:
                    signal_group(proc.pid, signal.SIGTERM)  # interrupt() sent it already; again is harmless
                    termed, limit = True, self._stop_at + self.dep.grace + 5
                if self._force:
                    kill_tree(proc.pid)
                exit_watch.wait(0.05)
        signal_group(proc.pid, signal.SIGKILL)  # the leader is gone but unreaped: sweep what it left
        return proc.wait(), error

    def interrupt(self, force: bool = False) -> None:
        with self._lock:
            if self._stop_at is None:
                self._stop_at = time.monotonic()
            self._force = self._force or force
            running = list(self._running.values())
        for proc in running:
            if force:
                kill_tree(proc.pid)
            else:
                signal_group(proc.pid, signal.SIGTERM)


class ExitWatch:
    """Wait for a child's exit, woken the moment it exits (a pidfd) rather than at the next poll:
    a job's worker takes its next event 25 ms sooner on average. Where there is no pidfd (Linux
    before 5.3), wait() sleeps its timeout."""

    def __init__(self, pid: int) -> None:
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._fd = None

    def wait(self, timeout: float) -> None:
        """Return when the process has exited, or after `timeout` seconds."""
        if self._fd is None:
            time.sleep(timeout)
            return
        try:
            select.select([self._fd], [], [], timeout)
        except (OSError, ValueError):
            time.sleep(timeout)

    def __enter__(self) -> ExitWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _exited(pid: int) -> bool:
    """Has `pid` exited? Without reaping it, so its process group id stays ours to signal."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc), parents before their children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


JOB_MARK = "CONVEYOR_LOCAL_JOB"


def kill_marked(job_id: str) -> list[int]:
    """SIGKILL every process whose environment carries this job's mark; return their pids.

    A job killed hard (SIGKILL, OOM) cannot stop its model, which runs in a session of its own
    and is re-parented to init the moment the job dies: out of reach of kill_tree. Its
    environment, inherited from the job, still names the job.
    """
    mark = f"{JOB_MARK}={job_id}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if mark in environ.split(b"\0"):
            _kill(int(entry.name))
            killed.append(int(entry.name))
    return killed


def kill_tree(pid: int, spare: Collection[int] = ()) -> None:
    """SIGKILL the process group of `pid` and of each of its descendants (but `spare` and theirs).

    A job's model runs in a session of its own (conveyor.child), out of reach of a signal to the
    job's group: killing the job alone would orphan it. Never signals our own group.
    """
    ours = os.getpgrp()
    spared = set(spare)
    for kept in list(spared):
        spared.update(descendants(kept))
    for child in reversed(descendants(pid)):
        if child in spared:
            continue
        try:
            group = os.getpgid(child)
        except ProcessLookupError:
            continue
        if group == ours:
            _kill(child)
        else:
            signal_group(group, signal.SIGKILL)
    if pid != os.getpid():
        signal_group(pid, signal.SIGKILL)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- lambda: warm environments in this process ----------------------------------------------------


MEMORY_MB = 1024  # what a local Lambda environment reports as its memory size


@dataclass
class LocalContext:
    """The context object Lambda hands its handler, for one local invocation."""

    aws_request_id: str
    function_name: str
    log_stream_name: str
    timeout: float  # the function's timeout, seconds: get_remaining_time_in_millis counts it down
    memory_limit_in_mb: str = str(MEMORY_MB)
    function_version: str = "$LATEST"
    started: float = field(default_factory=time.monotonic)

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started + self.timeout - time.monotonic()) * 1000))


def _no_batch() -> Any:
    raise LocalRunError("a local run has no AWS Batch to hand events to")


class LambdaEnvironment:
    """One warm execution environment: the Lambda handler (LambdaApp) of one process, whose
    model handler's setup (the model load) runs once."""

    def __init__(self, name: str, dep: Deployment, shutdown: threading.Event) -> None:
        from conveyor.handler import load_handler
        from conveyor.lambda_runtime import LambdaApp

        self.name = name
        self.dep = dep
        self.setups = 0
        handler = load_handler(dep.config)
        setup = handler.setup

        def counted_setup() -> None:
            self.setups += 1
            setup()

        handler.setup = counted_setup  # type: ignore[method-assign]
        scratch = dep.scratch / name  # this environment's /tmp
        scratch.mkdir(parents=True, exist_ok=True)
        base_env = dict(dep.environ)
        base_env.update(
            AWS_LAMBDA_FUNCTION_NAME=dep.config.name,
            AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(MEMORY_MB),
            AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
            LAMBDA_TASK_ROOT=str(dep.cwd),
            TMPDIR=str(scratch),
        )
        self.app = LambdaApp(dep.config, base_env, handler=handler, batch_client_factory=_no_batch,
                             scratch=scratch, shutdown=shutdown)
        # The function's timeout is --timeout, but the model gets at least a second after timeout_threshold.
        self.function_timeout = max(dep.timeout, dep.config.timeout_threshold + 1.0)

    @property
    def handler(self) -> Handler:
        return self.app.handler

    @property
    def invocations(self) -> int:
        return self.app.invocations

    def init(self) -> None:
        """Lambda's init phase: load the model before the first event."""
        self.handler.ensure_setup()

    def invoke(self, task: Task) -> Outcome:
        context = LocalContext(aws_request_id=task.id, function_name=self.dep.config.name,
                               log_stream_name=f"local/[$LATEST]{self.name}", timeout=self.function_timeout)
        try:
            invoked = self.app.invoke(task.event, context)
        except ConveyorError as exc:
            return Outcome(exit_code=exc.exit_code, error=f"{exc.kind}: {exc.message}", facts=self._facts())
        records = [r.to_dict() for r in invoked.records]
        failed = [r for r in records if r.get("status") == "FAILED"]
        code = exit_code_for((failed[0].get("error") or {}).get("kind")) if failed else 0
        return Outcome(exit_code=code, records=records, facts=self._facts())

    def _facts(self) -> dict[str, Any]:
        facts = {"environment": self.name, "invocation": self.invocations, "pid": os.getpid(), "setups": self.setups}
        loads = getattr(self.handler, "loads", None)
        if isinstance(loads, int):
            facts["model_loads"] = loads
        return facts

    def close(self) -> None:
        try:
            self.handler.close()
        except Exception:
            log.exception("closing the %s handler failed", self.name)


class WarmExecutor(Executor):
    name = "lambda"

    def __init__(self, deployment: Deployment, workers: int) -> None:
        self.dep = deployment
        self.workers = workers
        self.shutdown = threading.Event()
        self._all: list[LambdaEnvironment] = []
        self._idle: list[LambdaEnvironment] = []
        self._lock = threading.Lock()
        self.spare: set[int] = set()  # processes of ours that are not the models' (the S3 server)

    def start(self) -> None:
        env = LambdaEnvironment("env-1", self.dep, self.shutdown)
        self._all.append(env)
        env.init()  # fail fast: a model that cannot load is a start-up error, not N failed files
        self._idle.append(env)

    def _acquire(self) -> LambdaEnvironment:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # the most recently used: warm
            env = LambdaEnvironment(f"env-{len(self._all) + 1}", self.dep, self.shutdown)
            self._all.append(env)
            return env

    def run(self, task: Task, started: Callable[[str], None]) -> Outcome:
        env = self._acquire()
        task.log_path = self.dep.logs / "conveyor.log"
        state = "warm" if env.setups else "cold"
        started(f"lambda {env.name} ({state}, invocation {env.invocations + 1}) request {task.id[:8]}")
        try:
            return env.invoke(task)
        finally:
            with self._lock:
                self._idle.append(env)

    def interrupt(self, force: bool = False) -> None:
        self.shutdown.set()  # every handler's children get SIGTERM and the grace period
        if force:  # the models' processes are our descendants: kill them now (not the S3 server)
            kill_tree(os.getpid(), spare=self.spare)

    def close(self) -> None:
        for env in self._all:
            env.close()


# -- --docker: the model image per event ----------------------------------------------------------


def docker_client(image: str, environ: Mapping[str, str]) -> Any:
    """A client for the Docker engine `environ` names (DOCKER_HOST, DOCKER_TLS_VERIFY ...) that answers
    and holds `image`; LocalRunError (with the fix) if not."""
    try:
        import docker
        from docker.errors import DockerException, ImageNotFound
    except ImportError:
        raise LocalRunError("--docker needs the Docker SDK: pip install 'conveyor-runtime[docker]'") from None
    where = environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=30, environment=dict(environ))
        client.ping()
    except DockerException as exc:
        raise LocalRunError(f"--docker: no Docker engine answers at {where} ({_short(exc)}); start one, "
                            "set DOCKER_HOST, or run without --docker") from None
    try:
        client.images.get(image)
    except ImageNotFound:
        client.close()
        raise LocalRunError(f"--docker: the engine at {where} has no image {image!r}: build it with "
                            "`make images`, or name another with --image") from None
    except DockerException as exc:
        client.close()
        raise LocalRunError(f"--docker: cannot inspect the image {image!r}: {_short(exc)}") from None
    return client


class DockerExecutor(Executor):
    def __init__(self, deployment: Deployment, image: str, client: Any = None) -> None:
        self.dep = deployment
        self.image = image
        self.name = f"docker {deployment.platform}"
        self.client: Any = client
        self._running: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        if self.client is None:
            self.client = docker_client(self.image, self.dep.environ)

    def run(self, task: Task, started: Callable[[str], None]) -> Outcome:
        from docker.errors import DockerException

        env = {"CONVEYOR_PLATFORM": self.dep.platform, **self.dep.job_environment(task)}
        log_path = self.dep.logs / f"{task.id}.log"
        task.log_path = log_path
        with self._lock:
            if self._stopping:
                return Outcome(error="not started: conveyor local is stopping")
            started(f"docker {self.image} job {task.id[:8]}")
            try:
                container = self.client.containers.run(
                    self.image,
                    detach=True,
                    network_mode="host",  # the embedded S3 server listens on the host's 127.0.0.1
                    environment=env,
                    name=f"conveyor-local-{task.id[:12]}",
                    labels={"conveyor.local.root": str(self.dep.root), "conveyor.local.job": task.id},
                )
            except DockerException as exc:
                return Outcome(error=f"docker run {self.image} failed: {_short(exc)}")
            self._running[task.id] = container
        error = None
        try:
            try:
                result = container.wait(timeout=self.dep.timeout + self.dep.grace + MARGIN)
                code = int(result.get("StatusCode", 1))
            except Exception:  # the wait timed out (requests' ReadTimeout) or the engine went away
                error = f"the container outlived its deadline ({self.dep.timeout:.0f} s) and was killed"
                _quietly(container.kill)
                code = 124
            with open(log_path, "wb") as out:
                out.write(_quietly(lambda: container.logs(stdout=True, stderr=True)) or b"")
        finally:
            with self._lock:
                self._running.pop(task.id, None)
            _quietly(lambda: container.remove(force=True))
        return Outcome(exit_code=code, error=error, facts={"container": container.id[:12], "image": self.image})

    def interrupt(self, force: bool = False) -> None:
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        for container in running:
            if force:
                _quietly(container.kill)
            else:
                threading.Thread(target=_quietly, args=(lambda c=container: c.stop(timeout=int(self.dep.grace)),),
                                 daemon=True).start()

    def close(self) -> None:
        if self.client is not None:
            _quietly(self.client.close)


def _quietly(call: Any) -> Any:
    try:
        return call()
    except Exception:
        return None


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
