"""The model's own error, read out of a child's log: its traceback's last line or deepaas's ERROR line."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

from conveyor.handler import Invocation

ERROR_BYTES = 16384  # how much of the end of the log is searched

_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[0m|\[00m")
_OSLO_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \d+ [A-Z]+ \S+ (?:\[[^\]]*\] )?")
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt): \S")
_DEEPAAS_ERROR = re.compile(r"^\[?ERROR\]?: \S")


def last_error(inv: Invocation, offset: int) -> str:
    """The model's own error in what its child logged after `offset`."""
    if not inv.log_file.is_file():
        return "(no log)"
    lines = [_OSLO_PREFIX.sub("", _ANSI.sub("", line)).strip()
             for line in inv.log_since(offset, ERROR_BYTES).splitlines()]
    lines = [line for line in lines if line]
    for pattern in (_EXC_LINE, _DEEPAAS_ERROR):
        for line in reversed(lines):
            if pattern.match(line):
                return line
    return lines[-1] if lines else "(no output)"


def describe_exc(exc: BaseException) -> str:
    """"Type: message" of an exception (its type alone when it has no message)."""
    message = str(exc) or str(getattr(exc, "reason", "") or "")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def append_traceback(log_file: Path, exc: BaseException) -> None:
    """Add an in-process model's traceback to the model's log, as a child's would be."""
    try:
        with open(log_file, "a", encoding="utf-8") as fh:
            fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        pass
