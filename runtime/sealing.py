"""The sealed variables (FUNCTION_CONFIG, FDL, SCRIPT, EVENT) out of Conveyor's environment block.

Linux keeps the environment a process was started with in that process's memory for its whole
life, and shows it in /proc/<pid>/environ to every process of the same uid (the model's, by
default): what Python does to its own copy (os.environ.pop) never clears that block. The
definition in FUNCTION_CONFIG may hold storage keys inline, so the edge calls `sealed_environ()`
before it reads anything:

- the block holds none of SEALED_VARS: the environment as it is, at no cost;
- it holds some: their values go into a memfd, and the process re-executes itself (os.execv:
  same pid, same arguments, same stdin) with them removed and CONVEYOR_SEALED_FD=<fd> added.
  The cost is one more interpreter start (about 20 ms from conveyor-entrypoint, which seals
  before it imports the CLI; about 80 ms from `conveyor run`: measured on 2 shared cores);
- started with CONVEYOR_SEALED_FD: the values are read back, the memfd is emptied (ftruncate,
  so any other holder of it reads nothing) and closed, and the environment as it was before the
  re-exec is returned. Later calls return the same mapping.

Only Conveyor's own block is sealed. Whatever started Conveyor keeps its own copy: under AWS
Lambda the runtime's init process, a `/bin/sh -c 'echo $EVENT | supervisor'` wrapper (SCAR's
Batch jobs), or `docker run --init`'s init. A model under the same uid can read those, and
Conveyor's memory wherever ptrace is allowed: `conveyor: isolate_model: true` (conveyor.isolation)
is the boundary that holds against a hostile model.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# The private variables (conveyor.config.model.PRIVATE_VARS) that may hold a secret. Kept here, not
# in conveyor.config, so that sealing imports nothing heavy before the re-exec.
SEALED_VARS = ("FDL", "FUNCTION_CONFIG", "SCRIPT", "EVENT")
SEALED_FD_VAR = "CONVEYOR_SEALED_FD"

_restored: dict[str, str] | None = None


def sealed_environ(init: Sequence[str] = ()) -> dict[str, str]:
    """The process's environment, sealed variables included, once none of them is in its block.

    Re-executes the process when its block holds a sealed variable (see the module docstring);
    with `init` (an init's argv, `tini --`), always, as that init's child, so the init's own
    block holds no sealed variable either.
    """
    global _restored
    if _restored is not None:
        return dict(_restored)
    environ = dict(os.environ)
    if SEALED_FD_VAR in environ:
        fd_text = environ.pop(SEALED_FD_VAR)
        os.environ.pop(SEALED_FD_VAR, None)
        environ.update(_read_sealed(fd_text))
        _restored = environ
        return dict(environ)
    present = {name: environ[name] for name in SEALED_VARS if name in environ}
    if not present and not init:
        _restored = environ
        return dict(environ)
    argv = list(getattr(sys, "orig_argv", None) or [])
    if not sys.executable or not argv:
        _warn("cannot re-execute this interpreter: %s stay in the process environment", ", ".join(present))
        _restored = environ
        return dict(environ)
    import json  # here and not above: a process that re-executes imports no more than it needs

    fd = _memfd(json.dumps(present).encode("utf-8", "surrogatepass")) if present else None
    kept = {k: v for k, v in environ.items() if k not in present}
    if fd is not None:
        kept[SEALED_FD_VAR] = str(fd)
    program, argv = (init[0], [*init, sys.executable, *argv[1:]]) if init else (sys.executable, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(program, argv, kept)
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        _warn("cannot re-execute %s (%s): %s stay in the process environment",
                    program, exc.strerror, ", ".join(present) or "nothing")
    _restored = environ
    return dict(environ)


def _memfd(data: bytes) -> int:
    """An inheritable memory file holding `data`, positioned at its start."""
    fd = os.memfd_create("conveyor-sealed", 0)  # no MFD_CLOEXEC: the re-executed process gets it
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_sealed(fd_text: str) -> dict[str, str]:
    """The values behind CONVEYOR_SEALED_FD; the fd is emptied and closed. {} when unusable (logged)."""
    try:
        fd = int(fd_text)
    except ValueError:
        _warn("%s=%r is not a file descriptor: ignored", SEALED_FD_VAR, fd_text)
        return {}
    chunks = []
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        os.ftruncate(fd, 0)
    except OSError as exc:
        _warn("cannot read the sealed variables from fd %d: %s", fd, exc.strerror)
        return {}
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    import json

    try:
        values = json.loads(b"".join(chunks).decode("utf-8", "surrogatepass"))
    except ValueError:
        _warn("the sealed variables in fd %d are not JSON: ignored", fd)
        return {}
    return {str(k): str(v) for k, v in values.items() if k in SEALED_VARS} if isinstance(values, dict) else {}


def _warn(msg: str, *args: object) -> None:
    """log.warning, with logging imported only when there is something to say (5 ms before the re-exec)."""
    import logging

    logging.getLogger(__name__).warning(msg, *args)
