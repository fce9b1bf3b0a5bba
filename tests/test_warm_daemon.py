"""The warm daemon behind `conveyor run` (`conveyor: warm: true`), driven the way OSCAR's classic
watchdog drives a sync service: one `conveyor run` per request, the body on stdin, the Http_*
variables in its environment, stdout and stderr captured, the exit code.

The first request starts the daemon and is processed in-process; later ones are forwarded. A
killed daemon means the next request runs in-process again (and starts a new daemon); a daemon
that dies while it holds a request fails that request, which is never run a second time.
The model (tests/support/serve_models.py) writes one line per run and per load: "<pid> <input>".
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import load_config
from conveyor.platform import Platform
from conveyor.serve.daemon import socket_path
from tests.support.pipeline import CONVEYOR, Deployment, wait_exited
from tests.support.served import REPO, serve_deployment


@pytest.fixture
def short_scratch():
    """A scratch dir short enough for the socket to live in it (not /tmp, shared by every test)."""
    path = Path(tempfile.mkdtemp(prefix="cw-", dir="/tmp"))
    yield path
    for sock in path.glob("conveyor-warm-*.sock"):
        _stop_daemon(sock)
    shutil.rmtree(path, ignore_errors=True)


class Pod:
    """A sync service's pod: the definition, its scratch dir, and `conveyor run` per request."""

    def __init__(self, d: Deployment, scratch: Path, runs: Path, loads: Path) -> None:
        self.d, self.scratch, self.runs, self.loads = d, scratch, runs, loads
        self.config_path = d.write()

    def env(self, **http: str) -> dict[str, str]:
        variables = {"Http_Method": "POST", "Http_Content_Type": "text/plain", "Http_Query": "", "Http_Path": "/"}
        return self.d.env(PYTHONPATH=str(REPO), CONVEYOR_SCRATCH=str(self.scratch), **{**variables, **http})

    def request(self, body: bytes, combined: bool = False, **http: str) -> subprocess.CompletedProcess:
        """What the classic watchdog does per request (combined: stdout and stderr in one stream)."""
        return subprocess.run(
            [*CONVEYOR, "run", "--config", str(self.config_path), "--platform", "oscar"],
            input=body, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if combined else subprocess.PIPE,
            env=self.env(**http), timeout=120,
        )

    @property
    def socket(self) -> Path:
        config = load_config(self.env(), Platform.OSCAR, path=str(self.config_path))
        return socket_path(config, self.env())

    def wait_daemon(self) -> int:
        """Wait until the daemon is loaded; its pid."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, pid = _health(self.socket)
            except OSError:
                status, pid = "absent", 0
            if status == "ready":
                return pid
            time.sleep(0.05)
        raise AssertionError("the warm daemon never became ready")

    def ran(self) -> list[tuple[int, str]]:
        if not self.runs.exists():
            return []
        return [(int(pid), text) for pid, text in (line.split(" ", 1) for line in self.runs.read_text().splitlines())]


def _health(path: Path) -> tuple[str, int]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    pid = int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[:4], "little")
    conn = http.client.HTTPConnection("localhost", timeout=5)
    conn.sock = sock
    conn.request("GET", "/_/health")
    status = json.loads(conn.getresponse().read())["status"]
    conn.close()
    return status, pid


def _stop_daemon(path: Path) -> None:
    try:
        _status, pid = _health(path)
    except (OSError, ValueError):
        return
    os.kill(pid, signal.SIGTERM)
    _wait_gone(pid)


def _wait_gone(pid: int) -> None:
    if not wait_exited(pid, 30):
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"process {pid} did not exit")


@pytest.fixture
def pod(deploy, short_scratch, tmp_path):
    def make(**conveyor: Any) -> Pod:
        runs, loads = tmp_path / "runs", tmp_path / "loads"
        d = serve_deployment(deploy, conveyor={"warm": True, **conveyor}, runs=str(runs), loads=str(loads))
        return Pod(d, short_scratch, runs, loads)

    return make


def test_first_request_runs_here_and_starts_the_daemon_later_ones_are_forwarded(pod) -> None:
    p = pod()
    cold = p.request(b"first:one")
    assert cold.returncode == 0, cold.stderr.decode()
    assert base64.b64decode(cold.stdout) == b"FIRST:ONE POST"
    daemon = p.wait_daemon()
    [(first_pid, _)] = p.ran()
    assert first_pid != daemon  # processed by `conveyor run` itself

    warm = p.request(b"first:one")
    assert warm.returncode == 0, warm.stderr.decode()
    assert warm.stdout == cold.stdout  # byte for byte what `conveyor run` writes
    assert warm.stderr == b""  # the daemon's logs stay in the daemon
    p.request(b"third:one", Http_Method="PUT")
    assert p.ran() == [(first_pid, "first:one"), (daemon, "first:one"), (daemon, "third:one")]
    assert p.loads.read_text().split().count(str(daemon)) == 1  # loaded once for both


def test_a_forwarded_request_sees_the_watchdog_variables_and_answers_like_the_watchdog(pod) -> None:
    p = pod()
    p.request(b"warm:up")
    p.wait_daemon()
    answer = p.request(b"verb:check", combined=True, Http_Method="PATCH")
    assert answer.returncode == 0
    assert base64.b64decode(answer.stdout) == b"VERB:CHECK PATCH"  # combined output: no log line in it


def test_a_forwarded_failure_has_run_s_exit_code_and_failure_line(pod) -> None:
    p = pod()
    cold = p.request(b"fail:cold")
    p.wait_daemon()
    warm = p.request(b"fail:warm")
    assert cold.returncode == warm.returncode == 70
    assert warm.stdout == b""
    assert warm.stderr == b"conveyor: handler error: the test model failed on purpose (input input.txt)\n"
    assert warm.stderr in cold.stderr


def test_a_killed_daemon_means_the_next_request_runs_here_and_a_new_daemon_starts(pod) -> None:
    p = pod()
    p.request(b"one:x")
    daemon = p.wait_daemon()
    os.kill(daemon, signal.SIGKILL)
    _wait_gone(daemon)
    after = p.request(b"two:x")
    assert after.returncode == 0, after.stderr.decode()
    assert base64.b64decode(after.stdout) == b"TWO:X POST"
    new = p.wait_daemon()
    assert new != daemon
    assert [text for _pid, text in p.ran()] == ["one:x", "two:x"]  # each once
    assert p.ran()[1][0] not in (daemon, new)  # the second ran in `conveyor run` itself


def test_a_hung_daemon_is_replaced_and_the_request_runs_here(pod) -> None:
    p = pod()
    p.request(b"one:x")
    daemon = p.wait_daemon()
    os.kill(daemon, signal.SIGSTOP)  # it accepts connections (the kernel does) and answers nothing
    try:
        after = p.request(b"two:x")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGCONT)
    assert after.returncode == 0, after.stderr.decode()
    assert base64.b64decode(after.stdout) == b"TWO:X POST"
    _wait_gone(daemon)  # killed by the request that found it hung
    assert p.wait_daemon() != daemon
    assert [text for _pid, text in p.ran()] == ["one:x", "two:x"]


def test_a_daemon_that_dies_with_the_request_fails_it_and_never_runs_it_twice(pod) -> None:
    p = pod()
    p.request(b"warm:up")
    daemon = p.wait_daemon()
    crashed = p.request(b"crash:now")
    assert crashed.returncode == 1
    assert b"conveyor: warm_daemon error: the warm daemon stopped while processing this request" in crashed.stderr
    assert [(pid, text) for pid, text in p.ran() if text == "crash:now"] == [(daemon, "crash:now")]  # once


def test_a_run_that_is_no_watchdog_request_never_starts_a_daemon(pod) -> None:
    """An async job (`echo $EVENT | supervisor`, no Http_* variables) of a service with warm: true."""
    p = pod()
    env = {k: v for k, v in p.env().items() if not k.startswith("Http_")}
    run = subprocess.run([*CONVEYOR, "run", "--config", str(p.config_path), "--platform", "oscar"],
                         input=b"async:job", capture_output=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr.decode()
    assert b"warm daemon" not in run.stderr
    assert not list(p.scratch.glob("conveyor-warm-*"))


def test_the_daemon_exits_after_its_idle_time(pod) -> None:
    p = pod(warm_idle_timeout=0.5)
    p.request(b"one:x")
    daemon = p.wait_daemon()
    _wait_gone(daemon)  # nothing asks it to stop but its idle time
    assert not p.socket.exists()


def test_two_definitions_never_share_a_daemon(pod) -> None:
    p = pod()
    first = p.socket
    p.d.definition["name"] = "another-service"
    p.config_path = p.d.write()
    assert p.socket != first
    assert first.parent == p.scratch


def test_the_client_side_imports_no_web_server() -> None:
    """`conveyor run` with warm stays light: neither the CLI nor the daemon client imports the server."""
    code = ("import sys, conveyor.cli, conveyor.serve.daemon; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'prometheus_client')"
            " or m in ('conveyor.serve.app', 'conveyor.serve.worker')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


SHIM = REPO / "images" / "oscar" / "supervisor-shim.sh"


@pytest.mark.parametrize("has_conveyor", [True, False])
def test_the_oscar_shim_runs_conveyor_when_the_image_has_it_else_the_old_supervisor(tmp_path, has_conveyor) -> None:
    oscar_bin, image_bin = tmp_path / "oscar-bin", tmp_path / "image-bin"
    oscar_bin.mkdir()
    image_bin.mkdir()
    shutil.copy(SHIM, oscar_bin / "supervisor")
    (oscar_bin / "supervisor.orig").write_text('#!/bin/sh\necho "old supervisor: $(cat)"\n')
    (oscar_bin / "supervisor.orig").chmod(0o755)
    if has_conveyor:
        (image_bin / "conveyor-entrypoint").write_text('#!/bin/sh\necho "conveyor $*: $(cat)"\n')
        (image_bin / "conveyor-entrypoint").chmod(0o755)
    env = {"PATH": f"{image_bin}:/usr/bin:/bin"}
    out = subprocess.run([str(oscar_bin / "supervisor"), "--flag"], input=b"the body", capture_output=True,
                         env=env, check=True).stdout
    assert out == (b"conveyor --flag: the body\n" if has_conveyor else b"old supervisor: the body\n")


def test_the_warm_keys_parse_with_their_defaults_and_refuse_a_bad_idle_time(tmp_path) -> None:
    from conveyor.errors import ConfigError

    def load(conveyor: dict[str, Any]) -> Any:
        path = tmp_path / "fc.yaml"
        path.write_text(json.dumps({"name": "svc", "conveyor": conveyor}))
        return load_config({}, Platform.OSCAR, path=str(path))

    default = load({})
    assert (default.conveyor.warm.enabled, default.conveyor.warm.idle_timeout) == (False, 600.0)
    warm = load({"warm": True, "warm_idle_timeout": 30})
    assert (warm.conveyor.warm.enabled, warm.conveyor.warm.idle_timeout) == (True, 30.0)
    assert warm.redacted()["conveyor"]["warm"] is True
    assert warm.redacted()["conveyor"]["warm_idle_timeout"] == 30.0
    for bad in (0, -5, "soon"):
        with pytest.raises(ConfigError, match="warm_idle_timeout"):
            load({"warm": True, "warm_idle_timeout": bad})
