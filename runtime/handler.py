"""The handler port: the interface every model handler implements, and the registry that finds them.

A handler turns one local input file into files under an output directory. The pipeline
(conveyor.process) does everything around it: fetch, work directories, environment, deadline,
upload, result record. A handler instance lives as long as the process, so it may keep a
loaded model across records and across warm Lambda invocations: `setup()` runs once, before
the first record; `handle()` runs per record; `close()` at shutdown. Two class-level hooks serve
the tools around a run: `prepare()` (a local run readies the model's files before it starts) and
`fetch_weights()` (`conveyor weights`). A third, `hosted(options)`, says whether the handler keeps its
model in Conveyor's process: load_handler then returns a conveyor.modelhost.HostedHandler, which runs
it in a supervised child process instead (a hang or a crash is killed and set up again), unless
`conveyor: model_host` says otherwise (auto: as the handler says; process: always; inline: never).

Handlers are found by name: the built-ins below, a direct `package.module:Class` reference, then
the `conveyor.handlers` entry-point group, so a third-party package can add one with
    [options.entry_points]
    conveyor.handlers =
        mymodel = mypkg.handler:MyHandler
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from conveyor.child import run_child
from conveyor.deadline import Deadline
from conveyor.errors import ConfigError, HandlerTimeout, Interrupted

if TYPE_CHECKING:
    from conveyor.config import FunctionConfig
    from conveyor.events import Event, Input
    from conveyor.isolation import ModelUser

ENTRY_POINT_GROUP = "conveyor.handlers"
HOST = "conveyor.modelhost:HostedHandler"  # found by name as handlers are: the host depends on this port
BUILTIN = {
    "script": "conveyor.handlers.script:ScriptHandler",
    "deepaas": "conveyor.handlers.deepaas:DeepaasHandler",
    "darknet": "conveyor.handlers.darknet:DarknetHandler",
}


@dataclass
class Invocation:
    """Everything a handler may use for one record. Built fresh by the pipeline per record."""

    input: "Input | None"  # the ObjectRef or InlineInput being processed; None: a run without input
    input_path: Path | None  # the local copy, original name kept; None with file_stage_in
    input_dir: Path  # TMP_INPUT_DIR
    output_dir: Path  # TMP_OUTPUT_DIR: everything written here is offered to the outputs
    work_dir: Path  # private scratch for the handler (removed afterwards)
    env: Mapping[str, str]  # the complete environment for a child process (contract section 4)
    deadline: Deadline  # when the handler must be done
    log: logging.Logger | logging.LoggerAdapter  # already tagged with the request id
    log_file: Path  # capped log of the model's own output (its tail goes to the result record)
    shutdown: threading.Event  # set when SIGTERM/SIGINT arrives: stop and raise Interrupted
    event: "Event | None" = None
    request_id: str = ""
    grace_period: float = 10.0  # SIGTERM -> SIGKILL grace for children
    log_max_bytes: int = 10 * 1024 * 1024  # cap of log_file
    user: "ModelUser | None" = None  # conveyor.isolate_model: who the model's processes run as

    def run_child(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None = None,
        stdout_file: Path | None = None,
        prefix: str = "model",
    ) -> int:
        """Run a model process under this record's deadline, shutdown, log and environment
        (conveyor.child.run_child); returns its exit code."""
        return run_child(
            argv,
            env=self.env if env is None else env,
            cwd=cwd,
            deadline=self.deadline,
            shutdown=self.shutdown,
            log=self.log,
            log_file=self.log_file,
            stdout_file=stdout_file,
            grace=self.grace_period,
            log_max_bytes=self.log_max_bytes,
            prefix=prefix,
            user=self.user,
        )

    def check(self, step: str) -> None:
        """Raise Interrupted when a shutdown was asked for, HandlerTimeout when the deadline has passed;
        `step` names what was about to happen ("inference")."""
        if self.shutdown.is_set():
            raise Interrupted(f"shutdown requested before {step}")
        if self.deadline.expired():
            raise HandlerTimeout(f"the deadline passed before {step}")

    def log_offset(self) -> int:
        """Where the model's log ends now: pass it to log_since() after running a child."""
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int, limit: int | None = None) -> str:
        """The model's log written after `offset` (at most its last `limit` bytes); "" when unreadable."""
        try:
            with open(self.log_file, "rb") as fh:
                end = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, offset) if limit is None else max(0, offset, end - limit))
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


@dataclass
class HandlerResult:
    exit_code: int = 0
    stdout_path: Path | None = None  # the model's stdout, if kept (sync response when no output file)
    details: dict[str, Any] = field(default_factory=dict)  # handler-specific facts for the result record


class Handler(ABC):
    """Base class for handlers. Raise conveyor.errors.HandlerError (or a subclass) on failure."""

    name: ClassVar[str] = "handler"

    def __init__(self, config: "FunctionConfig", options: Mapping[str, Any]) -> None:
        self.config = config
        self.options = dict(options)
        self._ready = False
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """True once setup() has run: the next record is a warm start."""
        return self._ready

    def ensure_setup(self) -> None:
        """Run setup() exactly once per instance (thread-safe)."""
        with self._lock:
            if not self._ready:
                self.setup()
                self._ready = True

    def setup(self) -> None:
        """Load models, check binaries. Called once, before the first record."""

    @abstractmethod
    def handle(self, inv: Invocation) -> HandlerResult:
        """Process one record: read inv.input_path, write files under inv.output_dir."""

    def close(self) -> None:
        """Release what setup() took."""

    @classmethod
    def hosted(cls, options: Mapping[str, Any]) -> bool:
        """With these options, does the model live in Conveyor's own process (loaded once, called
        in-process)? Then, under `model_host: auto`, it runs in a supervised model host. By default
        no: a handler that runs a process per record (the script handler) is supervised already."""
        return False

    @classmethod
    def prepare(
        cls,
        options: Mapping[str, Any],
        *,
        environ: Mapping[str, str],
        say: Callable[[str], None],
        samples_dir: Path | None = None,
    ) -> dict[str, Any]:
        """Ready what the model needs on this machine before a local run starts (fetch weights, find
        files) and return the handler options to run with; by default `options` unchanged.

        `environ` is the model's environment, `say` tells the user about slow steps, `samples_dir`
        is the repository's samples/ folder (files a handler may fall back on), when there is one.
        """
        return dict(options)

    @classmethod
    def fetch_weights(cls, dest: Path | None, environ: Mapping[str, str]) -> Path:
        """Fetch and verify the default model's weights into `dest` (None: the handler's own default
        place, from `environ`); their path. For handlers whose model has none: a ConfigError."""
        raise ConfigError(f"the {cls.name} handler has no weights to fetch")


def known_handlers() -> list[str]:
    """Every handler name: the built-ins and those of installed packages (entry points), sorted."""
    from importlib.metadata import entry_points  # only for third-party names: 30 ms of start-up

    return sorted(set(BUILTIN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def handler_class(name: str) -> type[Handler]:
    """The class for a handler name: a built-in, an entry point, or a direct `module:Class`."""
    target = BUILTIN.get(name) or (name if ":" in name else None)
    if target is None:
        from importlib.metadata import entry_points  # only for third-party names: 10-30 ms of start-up

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                target = ep.value
                break
    if target is None:
        raise ConfigError(f"unknown handler {name!r} (known: {', '.join(known_handlers())})",
                          key="conveyor.handler.name")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"handler {name!r} cannot be loaded from {target}: {exc}", key="conveyor.handler.name"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise ConfigError(f"handler {name!r} ({target}) is not a conveyor.handler.Handler", key="conveyor.handler.name")
    return cls


def load_handler(config: "FunctionConfig") -> Handler:
    """The handler the function definition names, built with its options (not yet set up); in a
    model host (conveyor.modelhost) when `conveyor.model_host` is process, or auto and the handler
    says its model lives in-process (Handler.hosted)."""
    spec = config.conveyor.handler
    cls = handler_class(spec.name)
    handler = cls(config, spec.options)  # hosted too: its options are checked here, before any record
    where = config.conveyor.model_host
    if where == "process" or (where == "auto" and cls.hosted(spec.options)):
        module_name, _, attr = HOST.partition(":")
        host: Any = getattr(importlib.import_module(module_name), attr)
        return host(config, spec.options, target=cls)
    return handler
