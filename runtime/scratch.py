"""The scratch folder: where records get their work directories, each marked with its owner
(pid, start time, pid namespace), so that a Conveyor process starting there removes those whose
owner died (SIGKILL leaves them) and never one of a live process."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)


def scratch_dir(environ: Mapping[str, str]) -> Path:
    """Where records get their work directories: CONVEYOR_SCRATCH, else TMPDIR, else the system's
    temporary directory (/tmp under Lambda, where TMPDIR is unset). Created when missing; the work
    directories that dead Conveyor processes left there are removed (sweep_scratch)."""
    scratch = Path(environ.get("CONVEYOR_SCRATCH") or environ.get("TMPDIR") or tempfile.gettempdir())
    scratch.mkdir(parents=True, exist_ok=True)
    removed = sweep_scratch(scratch)
    if removed:
        log.warning("removed %d work director%s left in %s by Conveyor processes that died: %s", len(removed),
                    "y" if len(removed) == 1 else "ies", scratch, ", ".join(removed[:5]))
    return scratch


WORK_PREFIX = "conveyor-"  # a record's work directory: <scratch>/conveyor-XXXXXXXX
OWNER_MARK = ".conveyor-owner"  # in it: the owning process, "<pid> <start time> <pid namespace>"


def start_time(pid: int) -> str | None:
    """When a process started (clock ticks after boot, /proc/<pid>/stat field 22): with its pid,
    what tells a live process from a recycled pid. None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return stat[stat.rfind(b")") + 2 :].split()[19].decode()
    except (OSError, IndexError, ValueError):
        return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "-"


def mark_owner(work: Path) -> None:
    """Mark a work directory as this process's (sweep_scratch leaves it alone while we live)."""
    pid = os.getpid()
    (work / OWNER_MARK).write_text(f"{pid} {start_time(pid) or '-'} {_pid_namespace()}")


def sweep_scratch(scratch: Path) -> list[str]:
    """Remove the work directories in `scratch` whose owner (their OWNER_MARK) is dead: its pid
    gone, or taken by a process that started at another time. A directory without a mark (being
    created, or an older Conveyor's) or marked by another pid namespace (a container sharing the
    folder: its pids mean nothing here) is left alone. Returns the names removed."""
    namespace = _pid_namespace()
    removed: list[str] = []
    try:
        entries = list(os.scandir(scratch))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(WORK_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            mark = (Path(entry.path) / OWNER_MARK).read_text().split()
        except (OSError, UnicodeDecodeError):
            continue
        if len(mark) != 3 or not mark[0].isdigit() or namespace == "-" or mark[2] != namespace:
            continue
        if start_time(int(mark[0])) == mark[1]:
            continue  # its owner is alive
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    return sorted(removed)
