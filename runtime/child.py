"""Run one model process the way of-watchdog does: own session, explicit environment, output
streamed (never accumulated), a deadline and a shutdown event that kill the whole process group.

    rc = run_child(argv, env=..., cwd=..., deadline=..., shutdown=..., log=..., log_file=...)

- The child starts in a new session (its own process group), stdin from /dev/null, with exactly
  `env` as its environment.
- stdout and stderr are each read in 64 KiB chunks by a thread, logged line by line as
  "<prefix>: <line>" at INFO (shown whatever the level when the job's output is kept: see
  conveyor.logs.log_model_line), and appended to `log_file` up to `log_max_bytes` (after that the
  file gets one note and the pipes are still drained, so the child never blocks on a full pipe).
  When `stdout_file` is given, stdout is also copied there whole (the sync response may be it).
- Deadline passed or shutdown set: SIGTERM to every process of the run, up to `grace` seconds,
  SIGKILL, then HandlerTimeout / Interrupted. A normal exit also stops whatever the child left
  running, the same way, before run_child returns: no process of the model outlives it, so none
  can touch the outputs once they are collected. The exit code is returned (128+N for a signal
  death); the caller judges it.

"Every process of the run" is its process group and, for those that leave it (their own setsid(),
a double-forked daemon), what conveyor.procgroup.ProcessSet finds: this process is the subreaper
of its orphans, and each child is started with its own PROCESS_MARK in its environment.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.deadline import Deadline
from conveyor.errors import HandlerError, HandlerTimeout, Interrupted
from conveyor.logs import log_model_line
from conveyor.procgroup import PROCESS_MARK, ProcessSet, become_subreaper, signal_group

if TYPE_CHECKING:
    from conveyor.isolation import ModelUser

CHUNK = 64 * 1024  # read size, and the longest line logged as one record
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
POLL_INTERVAL = 0.1  # how often the wait loop looks at the shutdown event
DRAIN_TIMEOUT = 2.0  # how long to keep reading after the group is gone
SCAN_SHARE = 0.05  # the most of its time the wait loop spends looking at the child's process tree

LogLike = logging.Logger | logging.LoggerAdapter


def run_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
    deadline: Deadline,
    shutdown: threading.Event,
    log: LogLike,
    log_file: Path,
    stdout_file: Path | None = None,
    grace: float = 10.0,
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
    prefix: str = "model",
    user: ModelUser | None = None,
) -> int:
    """Run argv to completion and return its exit code (128+N when killed by signal N).

    `user`: the uid and gid the child runs as, with no supplementary groups (conveyor.isolation);
    None keeps Conveyor's own.

    Raises HandlerError when it cannot be started, HandlerTimeout when the deadline passes,
    Interrupted when `shutdown` is set; in both of the latter the process group is gone.
    `cwd=None` keeps the worker's own working directory.
    """
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise HandlerError("nothing to run: empty command")
    budget = deadline.remaining()
    if shutdown.is_set():
        raise Interrupted(f"shutdown requested before {argv[0]!r} started", command=argv[0])
    if deadline.expired():
        raise HandlerTimeout(f"no time left to start {argv[0]!r}: the deadline has already passed", command=argv[0])

    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    capped = _CappedLog(open(log_file, "ab", buffering=0), log, prefix, log_max_bytes)
    try:
        copy_fh = open(stdout_file, "wb") if stdout_file is not None else None
    except BaseException:
        capped.close()
        raise
    become_subreaper()
    mark = os.urandom(16).hex()  # as random as uuid4().hex, without importing uuid (and platform)
    try:
        proc = _spawn(argv, env={**env, PROCESS_MARK: mark}, cwd=cwd, separate_stdout=copy_fh is not None, user=user)
    except BaseException:
        capped.close()
        if copy_fh is not None:
            copy_fh.close()
        raise
    started = time.monotonic()
    pgid = proc.pid  # start_new_session: the child leads its own group
    procs = ProcessSet(proc.pid, mark)
    pumps = [_LogPump(proc.stdout, capped, log, prefix, copy_fh)]  # each pump owns its pipe (and copy)
    if proc.stderr is not None:
        pumps.append(_LogPump(proc.stderr, capped, log, prefix))
    for pump in pumps:
        pump.start()
    log.debug("started %s (pid %d)", argv[0], proc.pid)

    stopped = False
    try:
        outcome = _wait(proc, deadline, shutdown, procs)
        if outcome is None:
            rc = proc.returncode
            leftovers = sorted(set(_live_members(pgid)) | set(procs.scan()))
            if leftovers:
                log.warning(
                    "%s exited but left %d process(es) running (pids %s): stopping them",
                    argv[0], len(leftovers), ", ".join(map(str, leftovers[:10])),
                )
                stop_all(proc, pgid, procs, grace, log)
            else:
                procs.reap()
            stopped = True
            return 128 - rc if rc < 0 else rc
        elapsed = time.monotonic() - started  # until the deadline or shutdown, not counting the grace
        sig = stop_all(proc, pgid, procs, grace, log)
        stopped = True
    finally:
        if not stopped:  # an unexpected error (KeyboardInterrupt ...): leave nothing behind
            stop_all(proc, pgid, procs, min(grace, 1.0), log)
        for pump in pumps:
            pump.finish(DRAIN_TIMEOUT)
        capped.close()

    if outcome == "deadline":
        allowed = f"{budget:.1f} s" if budget is not None else "none"
        raise HandlerTimeout(
            f"{argv[0]!r} ran {elapsed:.1f} s and passed its deadline ({allowed}); "
            f"its process group was stopped with {sig}",
            command=argv[0],
            elapsed=round(elapsed, 3),
            deadline=None if budget is None else round(budget, 3),
            signal=sig,
        )
    raise Interrupted(
        f"shutdown requested after {elapsed:.1f} s: {argv[0]!r} and its process group were stopped with {sig}",
        command=argv[0],
        elapsed=round(elapsed, 3),
        signal=sig,
    )


def tail(path: str | os.PathLike[str], n_bytes: int) -> str:
    """The last n_bytes of a file as text ("" when absent or unreadable), starting on a whole character."""
    if n_bytes <= 0:
        return ""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - n_bytes))
            data = fh.read(n_bytes)
    except OSError:
        return ""
    if size > n_bytes:  # cut in the middle: skip UTF-8 continuation bytes at the start
        skip = 0
        while skip < min(3, len(data)) and 0x80 <= data[skip] <= 0xBF:
            skip += 1
        data = data[skip:]
    return data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------

_SPAWN_REASONS = {
    errno.ENOENT: "not found (no such file, not on PATH, or its #! interpreter is missing)",
    errno.EACCES: "permission denied (not executable, or on a noexec mount)",
    errno.ENOEXEC: "exec format error (neither a binary nor a script with a #! line)",
    errno.ETXTBSY: "text file busy (still open for writing)",
}


def _spawn(
    argv: list[str], *, env: Mapping[str, str], cwd, separate_stdout: bool, user: ModelUser | None = None
) -> subprocess.Popen:
    # Another user: set in the child between fork and exec (setgroups([]), setregid, setreuid), so
    # the model never runs a moment with Conveyor's identity.
    identity: dict[str, Any] = {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}
    try:
        return subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if separate_stdout else subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            **identity,
        )
    except OSError as exc:
        if cwd is not None and exc.filename is not None and os.fspath(exc.filename) == os.fspath(cwd):
            message = f"cannot start {argv[0]!r}: working directory {os.fspath(cwd)!r}: {exc.strerror}"
        else:
            message = f"cannot start {argv[0]!r}: {_SPAWN_REASONS.get(exc.errno or 0, exc.strerror or str(exc))}"
        raise HandlerError(message, command=argv[0], errno=exc.errno) from exc
    except (ValueError, TypeError) as exc:  # NUL bytes, non-str values in env or argv
        message = f"cannot start {argv[0]!r}: invalid argument or environment ({exc})"
        raise HandlerError(message, command=argv[0]) from exc


def _wait(proc: subprocess.Popen, deadline: Deadline, shutdown: threading.Event, procs: ProcessSet) -> str | None:
    """Wait for the child; None when it exited, else "deadline" or "shutdown". The steps also look
    at the child's process tree, so a process that detaches later is still known (at most
    SCAN_SHARE of the time goes to that: a big tree is looked at less often)."""
    next_scan = 0.0
    while True:
        remaining = deadline.remaining()
        step = POLL_INTERVAL if remaining is None else min(POLL_INTERVAL, remaining)
        try:
            proc.wait(timeout=step)
            return None
        except subprocess.TimeoutExpired:
            now = time.monotonic()
            if now >= next_scan:
                procs.scan()
                next_scan = now + (time.monotonic() - now) / SCAN_SHARE
        if shutdown.is_set():
            return "shutdown"
        if deadline.expired():
            return "deadline"


def stop_all(proc: subprocess.Popen, pgid: int, procs: ProcessSet, grace: float, log: LogLike) -> str:
    """SIGTERM the group and every process of the run, wait up to `grace` for them to end (SIGTERM
    to any that appears meanwhile), SIGKILL what is left, reap.

    Returns the last signal sent: "SIGTERM", "SIGKILL", or "none" when nothing was left.
    """
    termed = signal_group(pgid, signal.SIGTERM)
    termed = procs.terminate() > 0 or termed
    sent = "SIGTERM" if termed else "none"
    end = time.monotonic() + max(0.0, grace)
    delay = 0.005
    while True:
        if proc.poll() is not None:
            _reap_group(pgid)
        procs.reap()
        if proc.returncode is not None and not _live_members(pgid) and not procs.scan():
            break
        left = end - time.monotonic()
        if left <= 0:
            log.warning("process group %d still running %.1f s after SIGTERM: sending SIGKILL", pgid, grace)
            signal_group(pgid, signal.SIGKILL)
            if procs.kill():
                log.error("processes of %d still running after repeated SIGKILL", pgid)
            sent = "SIGKILL"
            break
        if procs.terminate():
            sent = "SIGTERM"
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.1)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # uninterruptible sleep, or a setuid child we may not signal
        log.error("pid %d is still running after %s", proc.pid, sent)
        return sent
    _reap_group(pgid)
    procs.reap()
    return sent


def _reap_group(pgid: int) -> None:
    """Collect the group's zombies that are our own children (we may be PID 1 or a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _live_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies (zombies only wait for their reaper)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: trust kill(0)
        return [pgid]
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return sorted(members)


class _CappedLog:
    """The per-record log file, shared by the stdout and stderr pumps, capped at max_bytes."""

    def __init__(self, fh, log: LogLike, prefix: str, max_bytes: int) -> None:
        self._fh = fh
        self._log = log
        self._prefix = prefix
        self._max = max(0, int(max_bytes))
        self._written = os.fstat(fh.fileno()).st_size
        self._open = True
        self._lock = threading.Lock()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            if not self._open:
                return
            room = self._max - self._written
            try:
                if room > 0:
                    self._fh.write(chunk[:room])
                    self._written += min(room, len(chunk))
                if len(chunk) > room:
                    self._open = False
                    note = (
                        f"\n[conveyor: log file capped at {self._max} bytes; the rest is only in the container log]\n"
                    )
                    self._fh.write(note.encode())
                    self._log.warning(
                        "%s: log file reached its cap of %d bytes; further output only goes to the log",
                        self._prefix, self._max,
                    )
            except OSError as exc:  # disk full ...: keep logging, stop writing the file
                self._open = False
                self._log.warning("%s: cannot write the log file (%s); output only goes to the log", self._prefix, exc)

    def close(self) -> None:
        with self._lock:
            self._open = False
            self._fh.close()


class _LogPump:
    """Drains one pipe in a thread: each line to the log, the raw bytes to the capped log file
    (and, for stdout with a stdout_file, to that file whole).

    Owns the pipe and the copy file handle and closes both when it ends.
    """

    def __init__(self, stream, capped: _CappedLog, log: LogLike, prefix: str, copy_fh=None) -> None:
        self._stream = stream
        self._fd = stream.fileno()
        self._capped = capped
        self._copy = copy_fh
        self._log = log
        self._prefix = prefix
        self._stop_at: float | None = None
        context = contextvars.copy_context()  # keep the request id on the lines logged from the thread
        self._thread = threading.Thread(target=context.run, args=(self._run,), name=f"{prefix}-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float) -> None:
        """Wait for end of output; after a short while read only what is buffered, for at most `timeout`.

        Something outside the group (or an escaped setsid() process) may keep the pipe open.
        """
        self._thread.join(timeout=0.2)
        if self._thread.is_alive():
            self._stop_at = time.monotonic() + timeout
            self._thread.join(timeout=timeout + 1.0)
            if self._thread.is_alive():
                self._log.warning("%s: output reader still busy; the log file may be incomplete", self._prefix)

    def _run(self) -> None:
        pending = b""
        try:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            while True:
                stop_at = self._stop_at
                if stop_at is not None and time.monotonic() >= stop_at:
                    break
                if not poller.poll(0 if stop_at is not None else 100):
                    if stop_at is not None:
                        break  # nothing buffered and the group is gone
                    continue
                chunk = os.read(self._fd, CHUNK)
                if not chunk:
                    break
                if self._copy is not None:
                    self._copy.write(chunk)
                self._capped.write(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._emit(line)
                while len(pending) >= CHUNK:  # a very long line: log it in pieces
                    self._emit(pending[:CHUNK])
                    pending = pending[CHUNK:]
            if pending:
                self._emit(pending)
        except Exception:  # never let a logging problem leave the child blocked on a full pipe
            self._log.exception("%s: output reader failed; the rest of the output is discarded", self._prefix)
            self._discard()
        finally:
            self._stream.close()
            if self._copy is not None:
                self._copy.close()

    def _emit(self, line: bytes) -> None:
        log_model_line(self._log, "%s: %s", self._prefix, line.rstrip(b"\r").decode("utf-8", errors="replace"))

    def _discard(self) -> None:
        while self._stop_at is None or time.monotonic() < self._stop_at:
            try:
                if not os.read(self._fd, CHUNK):
                    return
            except OSError:
                return
