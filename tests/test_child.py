"""conveyor.child with real processes: exit codes, deadlines, shutdown, process groups, logs."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conveyor.child import CHUNK, run_child, tail
from conveyor.deadline import Deadline
from conveyor.errors import HandlerError, HandlerTimeout, Interrupted
from conveyor.logs import bound_request_id, request_id
from conveyor.procgroup import PROCESS_MARK, signal_group

SCRIPTS = Path(__file__).parent / "scripts"
LOGGER = "test.child"
PATH_ENV = {"PATH": os.environ.get("PATH", os.defpath)}


def alive(pid: int) -> bool:
    """True while pid runs (a zombie only waits for its reaper: it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def read_pid(path: Path, timeout: float = 5.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.01)
    raise AssertionError(f"{path} was never written")


def gone(pid: int, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def run(tmp_path):
    """run_child with test defaults; returns (exit code, log file)."""

    def _run(argv, *, env=None, deadline=5.0, shutdown=None, stdout_file=None, **kwargs):
        log_file = kwargs.pop("log_file", tmp_path / "model.log")
        rc = run_child(
            [str(a) for a in argv],
            env=PATH_ENV if env is None else env,
            cwd=kwargs.pop("cwd", tmp_path),
            deadline=Deadline.after(deadline),
            shutdown=shutdown or threading.Event(),
            log=logging.getLogger(LOGGER),
            log_file=log_file,
            stdout_file=stdout_file,
            grace=kwargs.pop("grace", 0.5),
            **kwargs,
        )
        return rc, log_file

    return _run


def model_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("model: ")]


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_returned_not_raised(run, code):
    rc, _ = run(["/bin/sh", "-c", f"exit {code}"])
    assert rc == code


def test_signal_death_is_128_plus_signal(run):
    rc, _ = run(["/bin/sh", "-c", "kill -9 $$"])
    assert rc == 137


def test_stdout_file_gets_stdout_whole_and_both_streams_reach_the_log(run, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    out = tmp_path / "stdout"
    rc, log_file = run(["/bin/sh", "-c", "echo to-stdout; sleep 0.2; echo to-stderr >&2"], stdout_file=out)
    assert rc == 0
    assert out.read_text() == "to-stdout\n"  # stderr never leaks into the response file
    assert model_lines(caplog) == ["model: to-stdout", "model: to-stderr"]
    assert log_file.read_text() == "to-stdout\nto-stderr\n"


def test_without_stdout_file_stdout_joins_the_log(run, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    rc, log_file = run(["/bin/sh", "-c", "echo one; echo two >&2; printf 'no newline'"], prefix="darknet")
    assert rc == 0
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("darknet: ")]
    assert lines == ["darknet: one", "darknet: two", "darknet: no newline"]
    assert log_file.read_text() == "one\ntwo\nno newline"


def test_log_lines_carry_the_request_id(run):
    seen: list[tuple[str, str]] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append((record.getMessage(), request_id.get()))

    collector = Collect()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(collector)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with bound_request_id("req-42"):
            run(["/bin/sh", "-c", "echo hello >&2"])
    finally:
        logger.removeHandler(collector)
        logger.setLevel(old_level)
    assert ("model: hello", "req-42") in seen


def test_hanging_child_is_killed_with_its_group_at_the_deadline(run, tmp_path):
    pid_file, grandchild_file = tmp_path / "pid", tmp_path / "grandchild"
    with pytest.raises(HandlerTimeout) as info:
        run(["/bin/sh", SCRIPTS / "hang_with_grandchild.sh", pid_file, grandchild_file], deadline=1.0)
    pid, grandchild = read_pid(pid_file), read_pid(grandchild_file)
    assert gone(pid) and gone(grandchild)
    err = info.value
    assert "deadline" in err.message and "1.0 s" in err.message
    assert err.context["signal"] == "SIGTERM"
    assert err.context["deadline"] == pytest.approx(1.0, abs=0.1)
    assert err.exit_code == 124


def test_child_ignoring_sigterm_gets_sigkill_after_the_grace(run, tmp_path, caplog):
    pid_file = tmp_path / "pid"
    with pytest.raises(HandlerTimeout) as info:
        run(["/bin/sh", SCRIPTS / "ignore_term.sh", pid_file], deadline=1.0, grace=0.5)
    assert gone(read_pid(pid_file))
    assert info.value.context["signal"] == "SIGKILL"
    assert any("SIGKILL" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_shutdown_mid_run_interrupts_and_stops_the_group(run, tmp_path):
    pid_file, grandchild_file = tmp_path / "pid", tmp_path / "grandchild"
    shutdown = threading.Event()

    def stop_when_started():
        read_pid(grandchild_file)
        shutdown.set()

    stopper = threading.Thread(target=stop_when_started)
    stopper.start()
    try:
        with pytest.raises(Interrupted) as info:
            run(["/bin/sh", SCRIPTS / "hang_with_grandchild.sh", pid_file, grandchild_file], deadline=30.0,
                shutdown=shutdown)
    finally:
        stopper.join()
    assert gone(read_pid(pid_file)) and gone(read_pid(grandchild_file))
    assert info.value.exit_code == 143
    assert "shutdown" in info.value.message


def test_shutdown_already_set_does_not_start_the_child(run, tmp_path):
    shutdown = threading.Event()
    shutdown.set()
    marker = tmp_path / "ran"
    with pytest.raises(Interrupted):
        run(["/bin/sh", "-c", f"touch {marker}"], shutdown=shutdown)
    assert not marker.exists()


def test_grandchild_left_behind_after_a_normal_exit_is_killed(run, tmp_path, caplog):
    grandchild_file = tmp_path / "grandchild"
    rc, _ = run(["/bin/sh", SCRIPTS / "fork_and_exit.sh", grandchild_file])
    assert rc == 0
    assert gone(read_pid(grandchild_file))
    assert any("left 1 process(es) running" in r.getMessage() for r in caplog.records)


def test_environment_is_exactly_what_was_passed(run, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVEYOR_TEST_LEAK", "should-not-be-seen")
    out = tmp_path / "env.txt"
    env = {"ONLY_THIS": "1", "WITH_SPACES": "two words", "EMPTY": ""}
    rc, _ = run(["/usr/bin/env"], env=env, stdout_file=out)
    assert rc == 0
    lines = sorted(out.read_text().splitlines())
    marks = [line for line in lines if line.startswith(f"{PROCESS_MARK}=")]
    assert len(marks) == 1 and re.fullmatch(r"[0-9a-f]{32}", marks[0].partition("=")[2])  # which run it belongs to
    assert [line for line in lines if line not in marks] == ["EMPTY=", "ONLY_THIS=1", "WITH_SPACES=two words"]


def test_stdin_is_dev_null(run, tmp_path):
    out = tmp_path / "stdin.txt"
    rc, _ = run(["/bin/sh", "-c", "cat; echo end"], stdout_file=out)
    assert rc == 0 and out.read_text() == "end\n"


def test_log_file_is_capped_and_the_child_is_never_blocked(run, tmp_path, caplog):
    cap = 64 * 1024
    out = tmp_path / "stdout"
    rc, log_file = run([sys.executable, SCRIPTS / "spew_stderr.py", 5 * 1024 * 1024], stdout_file=out,
                       log_max_bytes=cap, deadline=60.0)
    assert rc == 0
    assert out.read_text() == "finished\n"
    size = log_file.stat().st_size
    assert cap <= size <= cap + 200
    assert "capped at 65536 bytes" in tail(log_file, 200)
    warnings = [r for r in caplog.records if "reached its cap" in r.getMessage()]
    assert len(warnings) == 1


def test_log_cap_counts_what_the_file_already_holds(run, tmp_path):
    log_file = tmp_path / "model.log"
    log_file.write_bytes(b"a" * 100)
    rc, _ = run(["/bin/sh", "-c", "printf '%0200d' 0 >&2"], log_file=log_file, log_max_bytes=150)
    assert rc == 0
    assert log_file.read_bytes().startswith(b"a" * 100 + b"0" * 50 + b"\n[conveyor: log file capped")


def test_non_utf8_output_is_logged_with_replacement_and_kept_raw(run, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    rc, log_file = run([sys.executable, "-c", "import sys; sys.stderr.buffer.write(b'bad \\xff\\xfe bytes\\r\\n')"])
    assert rc == 0
    assert model_lines(caplog) == ["model: bad \ufffd\ufffd bytes"]
    assert log_file.read_bytes() == b"bad \xff\xfe bytes\r\n"


def test_a_long_line_without_newline_is_logged_in_bounded_pieces(run, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    size = 1024 * 1024 + 10
    rc, log_file = run([sys.executable, "-c", f"import sys; sys.stderr.write('y' * {size})"])
    assert rc == 0
    lines = model_lines(caplog)
    assert sum(len(line) - len("model: ") for line in lines) == size
    assert max(len(line) for line in lines) <= CHUNK + len("model: ")
    assert log_file.stat().st_size == size


def test_missing_executable_is_a_handler_error(run, tmp_path):
    with pytest.raises(HandlerError) as info:
        run([tmp_path / "no-such-model"])
    assert "not found" in info.value.message and "no-such-model" in info.value.message
    assert type(info.value) is HandlerError


def test_command_not_on_path_is_a_handler_error(run):
    with pytest.raises(HandlerError, match="not found"):
        run(["conveyor-no-such-command"], env={"PATH": "/nonexistent"})


def test_not_executable_is_a_handler_error(run, tmp_path):
    script = tmp_path / "model.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(HandlerError, match="permission denied"):
        run([script])


def test_missing_working_directory_is_named(run, tmp_path):
    with pytest.raises(HandlerError, match="working directory"):
        run(["/bin/true"], cwd=tmp_path / "absent")


def test_expired_deadline_does_not_start_the_child(run, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(HandlerTimeout):
        run(["/bin/sh", "-c", f"touch {marker}"], deadline=0.0)
    assert not marker.exists()


def test_cwd_none_keeps_the_workers_directory(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pwd.txt"
    rc, _ = run(["/bin/sh", "-c", "pwd -P"], cwd=None, stdout_file=out)
    assert rc == 0 and out.read_text().strip() == str(tmp_path.resolve())


def test_tail(tmp_path):
    path = tmp_path / "log"
    assert tail(path, 10) == ""
    path.write_bytes("abc\u00e9\u00e9\n".encode())  # 'é' is two bytes
    assert tail(path, 100) == "abc\u00e9\u00e9\n"
    assert tail(path, 4) == "\u00e9\n"  # the cut half character is skipped
    assert tail(path, 0) == ""


def test_signal_group_says_whether_a_group_was_there(tmp_path):
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert signal_group(proc.pid, signal.SIGTERM) is True
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert signal_group(proc.pid, signal.SIGTERM) is False  # gone (and reaped): nothing to signal
    assert tail(tmp_path, 10) == ""  # a directory is no log: nothing to show
