"""Finding and signalling a model's processes: its process group, and every process of one run
wherever it went (its own setsid(), a double fork), through the subreaper and an environment mark.

    become_subreaper()                      # once per process: orphans re-parent to us, not to init
    procs = ProcessSet(child.pid, token)    # the child was started with PROCESS_MARK=token
    procs.scan()                            # the live members now
    procs.terminate(); procs.kill(); procs.reap()

Which processes belong to the run: the child, every descendant of a member (a descendant keeps
its place in our process tree because orphans re-parent to us, the subreaper), and every child
of ours (an orphan re-parented to us) that carries the run's mark in its environment or still
belongs to the child's session. A member is remembered with its start time, so a pid reused
by an unrelated process is never signalled. What escapes: a process that clears its environment,
leaves the session, and whose parents all exit before the next scan (scans run every 0.1 s
while the model runs). Without the subreaper (prctl refused) the mark is looked for in every
process of /proc instead.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from collections.abc import Iterable
from typing import NamedTuple

log = logging.getLogger(__name__)

PROCESS_MARK = "CONVEYOR_PROCESS_MARK"  # in every model process's environment: which run it belongs to
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>

_subreaper: bool | None = None
_subreaper_lock = threading.Lock()


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to process group `pgid`. False when the group is gone or may not be signalled
    (a member runs as another user, e.g. a setuid binary): nothing more can be done about it."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux PR_SET_CHILD_SUBREAPER).
    Idempotent; False when the kernel refuses (not Linux, no libc): marks are then searched in all of /proc."""
    global _subreaper
    with _subreaper_lock:
        if _subreaper is None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
            except (OSError, AttributeError):
                _subreaper = False
            if not _subreaper:
                log.warning("cannot become the subreaper of model processes: leftovers are found by their mark only")
        return _subreaper


class ProcessSet:
    """The processes of one model run (see the module's docstring). Not thread-safe: one owner."""

    def __init__(self, root: int, mark: str) -> None:
        self.root = root
        self._mark = f"{PROCESS_MARK}={mark}".encode()
        self._members: dict[int, int] = {}  # pid -> start time (pid reuse check)
        self._foreign: set[tuple[int, int]] = set()  # children of ours already judged not ours
        self._termed: set[int] = set()
        stat = _stat(root)
        self._session = root if stat is None else stat.session
        if stat is not None:
            self._members[root] = stat.start

    def scan(self) -> list[int]:
        """Find the members now; return the live ones (zombies only wait for their reaper)."""
        me = os.getpid()
        todo = []
        for pid, start in list(self._members.items()):
            if _same(pid, start):
                todo.append(pid)
            else:  # gone (and reaped): forget it, a model may start millions of processes over a run
                del self._members[pid]
        todo += self._adopted(me)
        if not _subreaper:
            todo += self._marked_anywhere(me)
        live: list[int] = []
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen or pid == me:
                continue
            seen.add(pid)
            stat = _stat(pid)
            if stat is None:
                continue
            self._members.setdefault(pid, stat.start)
            if stat.state not in "ZX":
                live.append(pid)
            todo.extend(_children(pid))
        return sorted(live)

    def terminate(self) -> int:
        """SIGTERM every live member not yet sent one; how many were sent."""
        fresh = [pid for pid in self.scan() if pid not in self._termed]
        self._termed.update(fresh)
        return self._send(fresh, signal.SIGTERM)

    def kill(self, rounds: int = 50) -> int:
        """SIGKILL the members until none is left alive (a member that forks while being killed is
        found by the next round); how many live members remain after `rounds`."""
        live = self.scan()
        for _ in range(rounds):
            if not live:
                return 0
            self._send(live, signal.SIGKILL)
            live = self.scan()
        return len(live)

    def reap(self) -> None:
        """Collect the members that died as our children (re-parented orphans); the root is left to its Popen."""
        me = os.getpid()
        for pid, start in list(self._members.items()):
            if pid == self.root:
                continue
            stat = _stat(pid)
            if stat is None or stat.start != start:
                del self._members[pid]
                continue
            if stat.state in "ZX" and stat.ppid == me:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def _send(self, pids: Iterable[int], sig: int) -> int:
        sent = 0
        for pid in pids:
            start = self._members.get(pid)
            if start is None or not _same(pid, start):
                continue
            try:
                os.kill(pid, sig)
                sent += 1
            except (ProcessLookupError, PermissionError):
                pass
        return sent

    def _adopted(self, me: int) -> list[int]:
        """Children of ours that are this run's: re-parented orphans with its mark or in its session."""
        found = []
        for pid in _children(me):
            if pid in self._members or pid == self.root:
                continue
            stat = _stat(pid)
            if stat is None or (pid, stat.start) in self._foreign:
                continue
            if stat.session == self._session or self._marked(pid):
                found.append(pid)
            else:
                self._foreign.add((pid, stat.start))
        return found

    def _marked(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return self._mark in fh.read().split(b"\0")
        except OSError:
            return False

    def _marked_anywhere(self, me: int) -> list[int]:
        try:
            entries = os.listdir("/proc")
        except OSError:
            return []
        return [int(e) for e in entries if e.isdigit() and int(e) != me and self._marked(int(e))]


class _Stat(NamedTuple):
    state: str
    ppid: int
    session: int
    start: int  # clock ticks after boot


def _stat(pid: int) -> _Stat | None:
    """State, parent, session and start time of a process (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    #  cutime cstime priority nice threads itrealvalue starttime ...": comm may hold spaces and ")"
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return _Stat(fields[0].decode(), int(fields[1]), int(fields[3]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def _same(pid: int, start: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat.start == start


def _children(pid: int) -> list[int]:
    """The children of every thread of `pid` (Linux /proc/<pid>/task/<tid>/children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                found.extend(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            continue
    return found
