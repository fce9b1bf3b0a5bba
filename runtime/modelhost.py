"""The supervised model host: an in-process handler (DEEPaaS warm, Darknet's OpenCV backend, any
handler that keeps its model in memory) lives in a long-lived child process that Conveyor starts,
feeds and watches, so a model that hangs or crashes costs one record, never the worker.

    handler = load_handler(config)      # a HostedHandler where the handler asks for it (Handler.hosted)
    handler.ensure_setup()              # starts the host; returns once the model's setup() is done
    handler.handle(inv)                 # one record, under inv's deadline and shutdown
    handler.close()                     # the host runs the model's close() and exits

The host is `python -m conveyor.modelhost <fd>`: its own session (process group), the process mark
(conveyor.procgroup.PROCESS_MARK) in its environment, which is built explicitly: Conveyor's own
minus the private variables (FUNCTION_CONFIG ...), plus the definition's `environment`, as a model
child gets it. Under `conveyor: isolate_model` it runs as the model's user, like every model process.
It gets the definition with the storage providers' keys, tokens and passwords removed. Its stdout
and stderr are Conveyor's stderr (never the response), its log lines carry each record's request id.

Over a unix socket pair (multiprocessing.connection framing, one pickled message each way per call)
the host receives what rebuilds the record's Invocation: paths, environment, the deadline (a
CLOCK_MONOTONIC instant, the same in both processes), request id, log file, grace period, log cap,
user, input and event, lightened so a call costs the same whatever the payload: an inline input
without its bytes (they are the input file), the event without `raw` and its other inputs (its
script, cmd_args, query, kind and storage_provider kept). It answers the HandlerResult, or the
error the handler raised: a ConveyorError comes back as the same kind with the same message and
context; any other exception as a HandlerError naming its type. The host never stops a call
itself: it has the record's deadline, and a handler may raise its own HandlerTimeout (the host
lives on), but the parent kills it when the deadline passes. A host whose Conveyor is gone reads
EOF and exits after the call in hand.

Supervision (the parent waits on the socket with the record's deadline and shutdown event):
- deadline passed: the host's process group and every process of the host (conveyor.child's
  SIGTERM, grace, SIGKILL, escaped descendants included) are stopped, HandlerTimeout is raised;
- shutdown set, or close() called from another thread: the same, Interrupted;
- the host dies (EOF): HandlerError naming its exit code or signal (exit_code 128+N in the context);
- the handler's error says `needs_restart` (DEEPaaS warm gave up a call it could not stop): the
  host is stopped, then the error raised.
The next record then starts a fresh host (setup() runs again). `ready` is True once the host has
finished setup(). Counters for metrics, attributes of the HostedHandler: `loads` (setups finished),
`restarts` (hosts stopped by a timeout, crash, shutdown or needs_restart), `calls`; each record's
HandlerResult.details["model_host"] holds {pid, loads, restarts}.

Calls are serial: one host runs one record at a time (a server wanting N model slots loads N handlers).
"""

from __future__ import annotations

import copyreg
import io
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from conveyor.child import POLL_INTERVAL, SCAN_SHARE, stop_all
from conveyor.config.model import PRIVATE_VARS, frozen_mapping
from conveyor.deadline import Deadline
from conveyor.errors import ConfigError, ConveyorError, HandlerError, HandlerTimeout, Interrupted, error_for
from conveyor.events import InlineInput
from conveyor.handler import Handler, HandlerResult, Invocation, handler_class
from conveyor.isolation import can_read, model_user
from conveyor.logs import MODEL_OUTPUT, bound_request_id, setup_logging
from conveyor.procgroup import PROCESS_MARK, ProcessSet, become_subreaper

if TYPE_CHECKING:
    from conveyor.config import FunctionConfig

log = logging.getLogger(__name__)

EXIT_WAIT = 5.0  # how long a host that closed its end (or was asked to close) gets to exit on its own


class HostedHandler(Handler):
    """A Handler whose model runs in a supervised child process (see the module's docstring)."""

    name = "hosted"

    def __init__(self, config: "FunctionConfig", options: Mapping[str, Any], target: type[Handler]) -> None:
        super().__init__(config, options)
        self.target = target
        self.loads = 0
        self.restarts = 0
        self.calls = 0
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._procs: ProcessSet | None = None
        self._call_lock = threading.Lock()
        self._closing = threading.Event()

    @property
    def pid(self) -> int | None:
        """The running host's pid (None when none runs)."""
        return self._proc.pid if self._proc is not None else None

    # -- life cycle ---------------------------------------------------------------------------------

    def setup(self) -> None:
        """Start the host and wait until the model's setup() has run there (no deadline, as in-process;
        close() from another thread stops the wait)."""
        self._stop(reason=None)  # a host left by a failed setup
        self._start()
        started = time.monotonic()
        reply = self._receive(Deadline.never(), None, "setting the model up")
        if reply[0] != "ready":
            self._stop(reason=None)
            raise _rebuild(reply[1])
        self.loads += 1
        log.info("model host %d: %s set up in %.3f s (load %d)",
                 self.pid, self.target.name, time.monotonic() - started, self.loads)

    def handle(self, inv: Invocation) -> HandlerResult:
        with self._call_lock:
            self.ensure_setup()  # a fresh host after a timeout or a crash
            inv.check(f"handing the input to the model host ({self.target.name})")
            self.calls += 1
            pid = self.pid
            self._send(("handle", _invocation_message(inv)))
            reply = self._receive(inv.deadline, inv, "handling the input")
            if reply[0] == "result":
                result: HandlerResult = reply[1]
                result.details["model_host"] = {"pid": pid, "loads": self.loads, "restarts": self.restarts}
                return result
            error = _rebuild(reply[1])
            if error.context.get("needs_restart"):
                inv.log.warning("model host %s: the handler asks for a restart: stopping it", pid)
                self._stop(reason="needs_restart", grace=inv.grace_period, logger=inv.log)
                error.message = f"{error.message}; the model host was stopped and starts again for the next input"
                error.args = (error.message,)
            raise error

    def close(self) -> None:
        """Stop the host: the model's close() runs there; a call in flight (another thread) is
        stopped with Interrupted."""
        self._closing.set()
        try:
            with self._call_lock, self._lock:
                self._stop(reason=None, polite=True)
        finally:
            self._closing.clear()

    # -- the child --------------------------------------------------------------------------------

    def _start(self) -> None:
        user = model_user(self.config)  # conveyor.isolate_model: ConfigError when it cannot hold
        if user is not None and not can_read(Path(sys.executable), user):
            raise ConfigError(
                f"the model host runs {sys.executable} as the model's user {user.uid}:{user.gid}, who cannot "
                "reach it (a folder on its way, or the file, is closed to that user): install Conveyor where "
                "every user may read it, or set model_host: inline", key="conveyor.isolate_model",
            )
        become_subreaper()
        mark = uuid.uuid4().hex
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_VARS}
        env.update(self.config.environment)
        env[PROCESS_MARK] = mark
        identity: dict[str, Any] = {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor.modelhost", str(theirs.fileno())],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=2,  # Conveyor's stderr: the model's prints never reach a response
                stderr=2,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                close_fds=True,
                **identity,
            )
        except (OSError, ValueError) as exc:
            ours.close()
            raise HandlerError(f"cannot start the model host for {self.target.name}: {exc}") from exc
        finally:
            theirs.close()
        self._proc, self._procs = proc, ProcessSet(proc.pid, mark)
        self._conn = Connection(ours.detach())
        log.info("model host %d started for the %s handler%s", proc.pid, self.target.name,
                 "" if user is None else f" as {user.uid}:{user.gid}")
        boot = {
            "sys_path": list(sys.path),
            "target": f"{self.target.__module__}:{self.target.__qualname__}",
            "config": _host_config(self.config),
            "options": dict(self.options),
            "log_level": logging.getLogger().level,
            "model_output_level": logging.getLogger(MODEL_OUTPUT).level,
        }
        self._send(("boot", boot))

    def _send(self, message: tuple) -> None:
        """One message to the host; a host already gone is noticed by the _receive that follows."""
        assert self._conn is not None
        try:
            self._conn.send_bytes(dumps(message))
        except OSError:
            pass

    def _receive(self, deadline: Deadline, inv: Invocation | None, doing: str) -> tuple:
        """The host's next message, waiting until `deadline`, inv's shutdown, or close(); on those
        the host is stopped and HandlerTimeout / Interrupted raised; when it dies, HandlerError."""
        assert self._conn is not None and self._proc is not None and self._procs is not None
        conn, procs = self._conn, self._procs
        started = time.monotonic()
        next_scan = started + POLL_INTERVAL
        while True:
            remaining = deadline.remaining()
            step = POLL_INTERVAL if remaining is None else min(POLL_INTERVAL, remaining)
            try:
                if conn.poll(step):
                    return loads(conn.recv_bytes())
            except (EOFError, OSError):
                raise self._died(doing, inv) from None
            if self._closing.is_set() or (inv is not None and inv.shutdown.is_set()):
                why = "the worker is closing" if self._closing.is_set() else "shutdown requested"
                sig = self._stop(reason="shutdown", grace=_grace(inv), logger=_logger(inv))
                raise Interrupted(
                    f"{why} after {time.monotonic() - started:.1f} s while {doing}: the model host of "
                    f"{self.target.name} was stopped with {sig}", signal=sig,
                )
            if deadline.expired():
                elapsed = time.monotonic() - started
                sig = self._stop(reason="deadline", grace=_grace(inv), logger=_logger(inv))
                raise HandlerTimeout(
                    f"the model ({self.target.name}) ran {elapsed:.1f} s and passed its deadline; its model host "
                    f"was stopped ({sig} to its process group) and starts again for the next input",
                    elapsed=round(elapsed, 3), signal=sig,
                )
            now = time.monotonic()
            if now >= next_scan:  # a long call: keep track of processes that leave the host's group
                procs.scan()
                next_scan = now + max(POLL_INTERVAL, (time.monotonic() - now) / SCAN_SHARE)

    def _died(self, doing: str, inv: Invocation | None) -> HandlerError:
        assert self._proc is not None
        proc = self._proc
        try:
            proc.wait(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:
            pass
        rc = proc.returncode
        self._stop(reason="crash", grace=_grace(inv), logger=_logger(inv))
        if rc is None:
            how, code = "closed its connection", None
        elif rc < 0:
            how, code = f"was killed by {_signal_name(-rc)}", 128 - rc
        else:
            how, code = f"exited with code {rc}", rc
        return HandlerError(
            f"the model host of {self.target.name} (pid {proc.pid}) {how} while {doing}; "
            "it starts again for the next input", exit_code=code,
        )

    def _stop(self, reason: str | None, grace: float = 10.0, logger: logging.Logger | logging.LoggerAdapter = log,
              polite: bool = False) -> str:
        """Stop the host (if one runs) and everything it started; the last signal sent. `reason`
        None: an orderly stop, not counted as a restart; `polite`: ask it to close first."""
        proc, conn, procs = self._proc, self._conn, self._procs
        self._proc = self._conn = self._procs = None
        self._ready = False  # (callers hold the call lock or the setup lock: not taken here)
        if proc is None:
            return "none"
        assert procs is not None
        if polite and conn is not None and proc.poll() is None:
            try:
                conn.send_bytes(dumps(("close",)))
                proc.wait(timeout=min(grace, EXIT_WAIT))
            except (OSError, subprocess.TimeoutExpired):
                pass
        if conn is not None:
            conn.close()
        sig = stop_all(proc, proc.pid, procs, grace, logger)
        if reason is not None:
            self.restarts += 1
            logger.warning("model host %d of %s stopped (%s, %s): the next input starts a fresh one",
                           proc.pid, self.target.name, reason, sig)
        return sig


# -- what crosses the socket --------------------------------------------------------------------


class _Pickler(pickle.Pickler):
    # FunctionConfig holds read-only mappings (MappingProxyType), which pickle cannot take by itself
    dispatch_table = {**copyreg.dispatch_table, MappingProxyType: lambda m: (frozen_mapping, (dict(m),))}


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def _host_config(config: "FunctionConfig") -> "FunctionConfig":
    """The definition without the storage providers' keys, tokens and passwords: the model needs none."""
    providers = {
        name: replace(p, access_key=None, secret_key=None, token=None, password=None)
        for name, p in config.providers.items()
    }
    return replace(config, providers=frozen_mapping(providers))


def _invocation_message(inv: Invocation) -> dict[str, Any]:
    return {
        "input": replace(inv.input, data=b"") if isinstance(inv.input, InlineInput) else inv.input,
        "event": None if inv.event is None else replace(inv.event, raw=None, inputs=()),
        "input_path": inv.input_path,
        "input_dir": inv.input_dir,
        "output_dir": inv.output_dir,
        "work_dir": inv.work_dir,
        "env": dict(inv.env),
        "deadline": inv.deadline.at,  # CLOCK_MONOTONIC: the same clock in the host
        "log_file": inv.log_file,
        "request_id": inv.request_id,
        "grace_period": inv.grace_period,
        "log_max_bytes": inv.log_max_bytes,
        "user": inv.user,
    }


def _error_message(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ConveyorError):
        kind, message, context = exc.kind, exc.message, dict(exc.context)
    else:
        kind, message, context = HandlerError.kind, f"{type(exc).__name__}: {exc}", {}
    try:
        pickle.dumps(context)
    except Exception:
        context = {k: str(v) for k, v in context.items()}
    return {"kind": kind, "message": message, "context": context}


def _rebuild(error: Mapping[str, Any]) -> ConveyorError:
    """The host's error as the same kind of ConveyorError, message and context kept."""
    exc = error_for(error.get("kind"), str(error.get("message")))
    exc.context = dict(error.get("context") or {})
    return exc


def _grace(inv: Invocation | None) -> float:
    return 10.0 if inv is None else inv.grace_period


def _logger(inv: Invocation | None) -> logging.Logger | logging.LoggerAdapter:
    return log if inv is None else inv.log


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- the host process ---------------------------------------------------------------------------


def host_main(argv: list[str]) -> int:
    """`python -m conveyor.modelhost <fd>`: build the handler, set it up, serve calls until EOF or close."""
    conn = Connection(int(argv[0]))
    try:
        first = loads(conn.recv_bytes())
    except EOFError:
        return 0
    boot = first[1]
    sys.path[:] = boot["sys_path"]
    config = boot["config"]
    setup_logging(boot["log_level"], secrets=config.secret_values(os.environ))
    logging.getLogger(MODEL_OUTPUT).setLevel(boot["model_output_level"])
    host_log = logging.getLogger("conveyor.modelhost.host")
    try:
        handler = handler_class(boot["target"])(config, boot["options"])
        handler.ensure_setup()
    except Exception as exc:
        host_log.debug("setup failed", exc_info=True)
        conn.send_bytes(dumps(("error", _error_message(exc))))
        return 0
    conn.send_bytes(dumps(("ready", {"pid": os.getpid()})))
    shutdown = threading.Event()  # never set: the parent stops this process instead
    try:
        while True:
            try:
                message = loads(conn.recv_bytes())
            except EOFError:
                return 0
            if message[0] != "handle":
                return 0
            call = message[1]
            with bound_request_id(call["request_id"]):
                reply = _serve_one(handler, call, shutdown, host_log)
            try:
                data = dumps(reply)
            except Exception as exc:  # a result the handler filled with something unpicklable
                data = dumps(("error", _error_message(HandlerError(f"the handler's result cannot be sent: {exc}"))))
            conn.send_bytes(data)
    finally:
        handler.close()


def _serve_one(handler: Handler, call: dict[str, Any], shutdown: threading.Event, host_log: logging.Logger) -> tuple:
    user = call["user"]
    if user is not None and user.uid == os.geteuid():  # already the model's user: nothing to switch
        user = None
    inv = Invocation(
        input=call["input"],
        event=call["event"],
        input_path=call["input_path"],
        input_dir=call["input_dir"],
        output_dir=call["output_dir"],
        work_dir=call["work_dir"],
        env=call["env"],
        deadline=Deadline(call["deadline"]),
        log=host_log,
        log_file=call["log_file"],
        shutdown=shutdown,
        request_id=call["request_id"],
        grace_period=call["grace_period"],
        log_max_bytes=call["log_max_bytes"],
        user=user,
    )
    try:
        return ("result", handler.handle(inv))
    except ConveyorError as exc:
        return ("error", _error_message(exc))
    except Exception as exc:
        host_log.error("the %s handler failed: %s", handler.name,
                       "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
        return ("error", _error_message(exc))


if __name__ == "__main__":
    sys.exit(host_main(sys.argv[1:]))
