"""What a developer sees: one line per file as it moves (queued, running, done / FAILED), and a summary.

Everything goes to stderr (the `stream`), so stdout stays free for the JSON summary (--json).

    [  1.2s] queued   dog.jpg          160.0 KiB
    [  1.3s] running  dog.jpg          oscar job 3f2a9c1e (waited 0.1s)
    [  2.9s] done     dog.jpg          1.6s (model 0.08s), 2 files -> results/dog.jpg/  bicycle, dog, truck
    [  3.0s] FAILED   bad.jpg          1.2s  handler: the input bad.jpg is not an image Pillow can read
"""

from __future__ import annotations

import enum
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


@dataclass
class Task:
    """One event for one object, from the moment it is queued to its result record."""

    id: str
    bucket: str
    key: str
    size: int
    event: dict[str, Any]  # the delegated OSCAR event handed to the worker
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    state: TaskState = TaskState.QUEUED
    record: dict[str, Any] | None = None  # the result record (Conveyor's, or ours when it left none)
    results: list[Path] = field(default_factory=list)  # downloaded outputs
    record_path: Path | None = None
    log_path: Path | None = None
    worker: str = ""  # "oscar job <id>", "lambda env-1 (invocation 3)" ...

    @property
    def wait(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.queued_at

    @property
    def run_time(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def model_time(self) -> float | None:
        value = ((self.record or {}).get("timings") or {}).get("handler")
        return value if isinstance(value, (int, float)) else None

    @property
    def error(self) -> str:
        error = (self.record or {}).get("error") or {}
        if not error:
            return ""
        text = f"{error.get('kind', 'error')}: {error.get('message', '')}"
        tail = str((self.record or {}).get("log_tail") or "")
        last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
        return f"{text} ({last})" if last and last not in text else text

    @property
    def note(self) -> str:
        """Something short about the result: the classes found, when the model reports them."""
        extra = (self.record or {}).get("extra") or {}
        classes = extra.get("classes")
        if isinstance(classes, list):
            return ", ".join(map(str, classes)) if classes else "(nothing detected)"
        return ""

    def summary(self, root: Path) -> dict[str, Any]:
        return {
            "key": self.key,
            "status": self.state.value,
            "wait_seconds": _round(self.wait),
            "run_seconds": _round(self.run_time),
            "model_seconds": _round(self.model_time),
            "results": [_rel(p, root) for p in self.results],
            "record": _rel(self.record_path, root) if self.record_path else None,
            "log": _rel(self.log_path, root) if self.log_path else None,
            "worker": self.worker,
            "error": (self.record or {}).get("error"),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def seconds(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}s"


class Progress:
    """Thread-safe progress lines and the final table, on `stream` (stderr)."""

    def __init__(self, root: Path, stream: TextIO | None = None, started: float | None = None) -> None:
        self.root = root
        self.stream = stream or sys.stderr
        self.started = time.monotonic() if started is None else started
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        """A line of its own (banner, notices)."""
        with self._lock:
            print(text, file=self.stream, flush=True)

    def _line(self, state: str, task: Task, detail: str) -> None:
        stamp = f"[{time.monotonic() - self.started:6.1f}s]"
        name = task.key if len(task.key) <= 28 else "..." + task.key[-25:]
        self.say(f"{stamp} {state:<8} {name:<28} {detail}".rstrip())

    def queued(self, task: Task) -> None:
        self._line("queued", task, human_size(task.size))

    def running(self, task: Task) -> None:
        self._line("running", task, f"{task.worker} (waited {seconds(task.wait)})")

    def finished(self, task: Task) -> None:
        if task.state is TaskState.SUCCEEDED:
            where = ""
            if task.results:
                where = f" -> {_rel(task.results[0].parent, self.root)}/"
            detail = (
                f"{seconds(task.run_time)} (model {seconds(task.model_time, 2)}), "
                f"{len(task.results)} file{'s' if len(task.results) != 1 else ''}{where}"
            )
            if task.note:
                detail += f"  {task.note}"
            self._line("done", task, detail)
        elif task.state is TaskState.CANCELLED:
            self._line("cancel", task, "not run: stopped before its turn")
        else:
            self._line("FAILED", task, f"{seconds(task.run_time)}  {_one_line(task.error, 160)}")

    def table(self, tasks: list[Task], wall: float, interrupted: str | None = None, title: str = "summary") -> None:
        """The summary table: one row per file, then the counts."""
        header = ("file", "status", "wait", "run", "model", "files", "detail")
        rows = [
            (
                task.key,
                task.state.value,
                seconds(task.wait),
                seconds(task.run_time),
                seconds(task.model_time, 2),
                str(len(task.results)),
                _one_line(task.note if task.state is TaskState.SUCCEEDED else task.error, 70),
            )
            for task in tasks
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        widths[0] = min(widths[0], 40)
        lines = ["", title + (f" (stopped by {interrupted})" if interrupted else "") + ":"]
        for row in [header, *rows]:
            rest = (cell.ljust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
            cells = [row[0][-widths[0] :].ljust(widths[0]), *rest]
            lines.append("  " + "  ".join(cells).rstrip())
        counts = {state: sum(1 for t in tasks if t.state is state) for state in TaskState}
        parts = [f"{counts[TaskState.SUCCEEDED]} succeeded", f"{counts[TaskState.FAILED]} failed"]
        if counts[TaskState.CANCELLED]:
            parts.append(f"{counts[TaskState.CANCELLED]} cancelled")
        unfinished = counts[TaskState.QUEUED] + counts[TaskState.RUNNING]
        if unfinished:
            parts.append(f"{unfinished} unfinished")
        if not tasks:
            lines.append("  (no file was processed)")
        lines.append(f"{', '.join(parts)} in {wall:.1f}s; results in {self.root / 'results'}, "
                     f"records in {self.root / 'status'}")
        self.say("\n".join(lines))


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
