"""The warm daemon behind `conveyor run` on an OSCAR sync service (`conveyor: warm: true`).

The classic watchdog forks `conveyor run` for every request. With `warm: true` that process
first looks for this pod's daemon, a `conveyor serve --socket PATH` keeping the model loaded:

- a daemon answers: the request (the body, the Http_* variables as a header) is forwarded and its
  answer written exactly as `conveyor run` would write it: the response on stdout, the failure lines
  on stderr, the same exit code;
- none answers (no socket, connection refused, its health probe times out, it is draining or every
  slot is busy): `conveyor run` starts one, detached (its own session, stdio on /dev/null, so the
  watchdog does not wait for it), and processes this request itself, in-process, as without `warm`.

A request is never run twice nor answered twice: `conveyor run` falls back to running it itself
only when the daemon surely did not start it (it refused the connection, never got the whole
body, or answered 429/503). A daemon that dies or stops answering once it has the request fails
that request with a clear error (exit 1); the next request starts a new daemon.

The socket is `<scratch dir>/conveyor-warm-<hash>.sock` (the scratch dir: CONVEYOR_SCRATCH, else
TMPDIR, else /tmp; /tmp when that path is too long for a unix socket), `<hash>` of the function
definition and the user, so two services (or definitions) never share a daemon; only its user may
connect (mode 0600). The daemon exits after `warm_idle_timeout` seconds without a request (600 by
default) and on SIGTERM (the pod ends).

Only the standard library here: this module is on the path of every `conveyor run` with `warm`.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from conveyor.config import FunctionConfig
from conveyor.errors import ConveyorError
from conveyor.platform import Platform
from conveyor.serve import EXIT_CODE_HEADER, HTTP_VARS_HEADER, REQUEST_ID_HEADER, RUN_HEADER

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0  # connect and the health probe: a daemon that does not answer is hung
ANSWER_MARGIN = 30.0  # beyond the model's deadline and grace periods, per input
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


class WarmDaemonLost(ConveyorError):
    """The daemon took the request and then died or stopped answering: the request is not re-run."""

    kind = "warm_daemon"


@dataclass
class Forwarded:
    """The daemon's answer, as `conveyor run` would have written it."""

    exit_code: int
    stdout: bytes
    stderr: bytes


def socket_path(config: FunctionConfig, environ: Mapping[str, str]) -> Path:
    """This definition's daemon socket (see the module docstring)."""
    digest = hashlib.sha256(f"{os.getuid()}\0{config!r}".encode()).hexdigest()[:16]
    name = f"conveyor-warm-{digest}.sock"
    base = Path(environ.get("CONVEYOR_SCRATCH") or environ.get("TMPDIR") or "/tmp")
    path = base / name
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else Path("/tmp") / name


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        sock.settimeout(self.timeout)
        self.sock = sock

    def peer_pid(self) -> int | None:
        try:
            creds = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except (OSError, AttributeError):
            return None
        pid, _uid, _gid = struct.unpack("3i", creds)
        return pid or None


def forward(
    config: FunctionConfig,
    platform: Platform,
    environ: Mapping[str, str],
    body: bytes,
    inputs: int,
    request_id: str,
    config_path: str | None = None,
) -> Forwarded | None:
    """The daemon's answer to this request; None when `conveyor run` must process it itself (then a
    daemon is started for the next requests, unless one is starting or draining)."""
    path = socket_path(config, environ)
    conn = _UnixConnection(path, CONNECT_TIMEOUT)
    try:
        state = _health(conn)
    except FileNotFoundError:
        state = "absent"
    except OSError as exc:  # refused (a dead daemon's socket), or no answer in time (hung)
        state = "hung" if isinstance(exc, TimeoutError) else "absent"
        if state == "hung":
            _kill(conn.peer_pid(), path)
    except http.client.HTTPException:
        state = "absent"
    if state != "ready" and state != "loading":
        conn.close()
        if state in ("absent", "hung"):
            start_daemon(path, config, platform, environ, config_path)
        log.info("no warm daemon answered (%s): processing this request here", state)
        return None
    try:
        return _post(conn, config, environ, body, inputs, request_id)
    finally:
        conn.close()


def _health(conn: _UnixConnection) -> str:
    """'ready', 'loading', 'failed' or 'draining': the daemon's /_/health."""
    conn.request("GET", "/_/health")
    response = conn.getresponse()
    data = response.read()
    try:
        return str(json.loads(data).get("status", "unknown"))
    except (ValueError, AttributeError):
        return "unknown"


def _post(
    conn: _UnixConnection, config: FunctionConfig, environ: Mapping[str, str], body: bytes, inputs: int, request_id: str
) -> Forwarded | None:
    http_vars = {k: v for k, v in environ.items() if k.startswith("Http_")}
    headers = {
        RUN_HEADER: "1",
        HTTP_VARS_HEADER: json.dumps(http_vars),
        REQUEST_ID_HEADER: request_id,
        "Content-Type": environ.get("Http_Content_Type") or "application/octet-stream",
    }
    try:
        conn.request("POST", environ.get("Http_Path") or "/", body=body, headers=headers)
    except OSError as exc:  # it never had the whole body: it cannot have started the work
        log.warning("the warm daemon did not take the request (%s): processing it here", exc)
        return None
    conn.sock.settimeout(_answer_bound(config, inputs))
    try:
        response = conn.getresponse()
        data = response.read()
    except TimeoutError as exc:
        raise WarmDaemonLost(f"the warm daemon took this request and gave no answer within "
                             f"{_answer_bound(config, inputs):.0f} s; it is not run again") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise WarmDaemonLost(f"the warm daemon stopped while processing this request ({exc.__class__.__name__}); "
                             "it is not run again") from exc
    if response.status in (429, 503):  # busy or stopping: it did not start this one
        log.info("the warm daemon is busy (%d): processing this request here", response.status)
        return None
    try:
        code = int(response.getheader(EXIT_CODE_HEADER) or "")
    except ValueError:
        raise WarmDaemonLost(f"the warm daemon answered {response.status} without an exit code") from None
    return Forwarded(code, data, b"") if code == 0 else Forwarded(code, b"", data)


def _answer_bound(config: FunctionConfig, inputs: int) -> float | None:
    """How long an answer may take: None (as long as the watchdog lets it) without conveyor.timeout."""
    settings = config.conveyor
    if settings.timeout is None:
        return None
    return (settings.timeout + 2 * settings.grace_period + ANSWER_MARGIN) * max(1, inputs)


def _kill(pid: int | None, path: Path) -> None:
    """A daemon that does not answer its health probe is hung: it goes, so that a new one can start."""
    if pid is None or pid == os.getpid():
        return
    log.warning("the warm daemon (pid %d) on %s does not answer: killing it", pid, path)
    try:
        os.killpg(pid, signal.SIGKILL)  # its own session: its model's children too
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            log.warning("could not kill the warm daemon: %s", exc)


def start_daemon(
    path: Path, config: FunctionConfig, platform: Platform, environ: Mapping[str, str], config_path: str | None
) -> None:
    """`conveyor serve --socket PATH`, detached: its own session, stdio on /dev/null."""
    argv = [sys.executable, "-m", "conveyor", "serve", "--socket", str(path), "--platform", platform.value,
            "--idle-timeout", str(config.conveyor.warm.idle_timeout)]
    if config_path:
        argv += ["--config", os.path.abspath(config_path)]
    env = {k: v for k, v in environ.items() if k != "EVENT" and not k.startswith("Http_")}
    try:
        subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError as exc:
        log.warning("could not start the warm daemon: %s", exc)
        return
    log.info("started a warm daemon on %s for the next requests", path)
