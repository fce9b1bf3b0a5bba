"""The drop folder: files that appear in DIR/inbox are uploaded to the input bucket.

A watchdog observer reports new, modified, moved-in and closed files; a file is uploaded once it
has stopped changing (same size and mtime for `settle` seconds, or closed after writing), so a
half-copied file is never sent. Its key is its path relative to the folder ("sub/cat.jpg").
Hidden files and the usual partial-download names (.part, .tmp, .crdownload, .swp, ~) are left
alone, and so are symbolic links. Files stay where they are: the folder is the input set, and
`scan()` (run at start) uploads what it already holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".swp", ".swx", "~")


def wanted(path: Path, root: Path) -> bool:
    """Is `path` (under root) a file to upload?"""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    if any(part.startswith(".") for part in rel.parts):
        return False
    if path.name.lower().endswith(PARTIAL_SUFFIXES):
        return False
    return path.is_file() and not path.is_symlink()


def object_key(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


class DropFolder:
    """Watch `root` and call `upload(path, key)` for every complete file (from a worker thread)."""

    def __init__(self, root: Path, upload: Callable[[Path, str], None], settle: float = 0.5) -> None:
        self.root = root.resolve()
        self.upload = upload
        self.settle = settle
        self._pending: dict[Path, tuple[float, tuple[int, int] | None]] = {}  # path -> (last event, stat)
        self._done: dict[Path, tuple[int, int]] = {}  # path -> the (size, mtime_ns) last uploaded
        self._uploading = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer: Any = None  # a watchdog Observer once started
        self._thread: threading.Thread | None = None

    def start(self) -> DropFolder:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        folder = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.is_directory or event.event_type in ("deleted", "opened", "closed_no_write"):
                    return
                target = getattr(event, "dest_path", "") or event.src_path
                folder.touch(Path(os.fsdecode(target)))

        self.root.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(Handler(), str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._thread = threading.Thread(target=self._loop, name="dropfolder", daemon=True)
        self._thread.start()
        return self

    def scan(self) -> list[str]:
        """Queue every file already in the folder; returns their keys, sorted."""
        found = sorted(p for p in self.root.rglob("*") if wanted(p, self.root))
        for path in found:
            self.touch(path, at=0.0)
        return [object_key(p, self.root) for p in found]

    def touch(self, path: Path, at: float | None = None) -> None:
        """Note activity on `path`; it is uploaded once it has settled."""
        with self._lock:
            self._pending[path] = (time.monotonic() if at is None else at, None)

    def busy(self) -> bool:
        """Files noticed and not yet uploaded (or being uploaded)?"""
        with self._lock:
            return bool(self._pending) or self._uploading > 0

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            ready = self._ready()
            for n, path in enumerate(ready):
                try:
                    if not self._stop.is_set():
                        self.upload(path, object_key(path, self.root))
                except Exception:
                    log.exception("drop folder: could not upload %s", path)
                finally:
                    with self._lock:
                        self._uploading -= 1
                if self._stop.is_set():
                    with self._lock:
                        self._uploading -= len(ready) - n - 1
                    return

    def _ready(self) -> list[Path]:
        """Paths whose size and mtime have not changed for `settle` seconds (and not uploaded as is)."""
        now = time.monotonic()
        ready = []
        with self._lock:
            for path, (seen, last) in list(self._pending.items()):
                if not wanted(path, self.root):
                    del self._pending[path]
                    continue
                try:
                    stat = path.stat()
                except OSError:
                    del self._pending[path]
                    continue
                current = (stat.st_size, stat.st_mtime_ns)
                if current != last:
                    self._pending[path] = (seen, current)  # changed since the last look: wait again
                    continue
                if now - seen < self.settle:
                    continue
                del self._pending[path]
                if self._done.get(path) == current:
                    continue  # an event for a file already uploaded with this content
                self._done[path] = current
                ready.append(path)
            self._uploading += len(ready)
        return sorted(ready)
