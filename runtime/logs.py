"""Logging to stderr with the request/job id on every line; stdout stays for responses."""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("conveyor_request_id", default="-")

LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def setup_logging(level: str | int = "INFO", stream=None) -> None:
    """Configure the root logger once: one stderr handler, request id on every line."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_conveyor", False):
            root.removeHandler(existing)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._conveyor = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_RequestIdFilter())
    root.addHandler(handler)
    try:
        root.setLevel(level if isinstance(level, int) else level.upper())
    except ValueError:
        root.setLevel(logging.INFO)
    # Quieten chatty libraries unless asked for DEBUG.
    if root.level > logging.DEBUG:
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def bound_request_id(value: str) -> Iterator[None]:
    token = request_id.set(value or "-")
    try:
        yield
    finally:
        request_id.reset(token)
