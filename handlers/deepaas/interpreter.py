"""The Python interpreter a console script (deepaas-cli) runs under, read from its #! line."""

from __future__ import annotations

import os
import re
import shlex
import shutil

_SH_EXEC = re.compile(r"""^'''exec'\s+("[^"]+"|\S+)""", re.MULTILINE)


def script_interpreter(
    script: str | os.PathLike[str], path: str | None = None, module: str | None = None
) -> str | None:
    """The Python interpreter a console script runs under, from its #! line; None when it is not one.

    Handles `#!/abs/python`, `#!/usr/bin/env python3` and pip's `#!/bin/sh` + `'''exec' "python" "$0"`
    form (used for long or spaced paths). With `module`, the script must also mention it
    (pip's console scripts import their entry point), so wrappers that do more are left alone.
    """
    try:
        with open(script, "rb") as fh:
            head = fh.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return None
    if not head.startswith("#!") or (module and module not in head):
        return None
    first = head.splitlines()[0][2:].strip()
    try:
        words = shlex.split(first)
    except ValueError:
        return None
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    elif os.path.basename(words[0]) in ("sh", "bash"):
        match = _SH_EXEC.search(head)
        words = [match.group(1).strip('"')] if match else []
    if not words or "python" not in os.path.basename(words[0]):
        return None
    found = words[0] if os.path.isabs(words[0]) else shutil.which(words[0], path=path)
    return found if found and os.access(found, os.X_OK) else None
