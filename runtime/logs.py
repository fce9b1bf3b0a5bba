"""Logging to stderr with the request/job id on every line; stdout stays for responses.

Two channels are the job's log rather than Conveyor's, so `log_level` does not decide alone
whether they are shown:

- the model's own output (MODEL_OUTPUT gates it: see log_model_line), and
- the record protocol lines (conveyor.records: `conveyor local` reads them back from job logs).

keep_job_output(True), what setup_logging sets, shows both whatever the level. A run that
answers on stdout (a sync invocation) calls keep_job_output(False): both then follow log_level,
because OSCAR's watchdog puts the process's stderr into the response body, and OSCAR's docs
advise `log_level: CRITICAL` to keep that body clean.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from conveyor.config.redaction import mask_fields_in_text, mask_values

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("conveyor_request_id", default="-")

LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
MODEL_OUTPUT = "conveyor.model"  # its level decides whether the model's own output lines are shown
PROTOCOL = "conveyor.records"  # the logger of the record protocol lines (conveyor.records)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class _RedactingFormatter(logging.Formatter):
    """Every formatted line (message, traceback and all) with credentials masked, at every level:
    the values of credential headers and parameters (botocore's DEBUG lines show X-Amz-Security-Token
    and the request signature), and any occurrence of a known secret value."""

    def __init__(self, fmt: str, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        return mask_values(mask_fields_in_text(super().format(record)), self.secrets)


def setup_logging(level: str | int = "INFO", stream=None, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once: one stderr handler, request id on every line, credentials
    masked (`secrets`: values never to show, such as the configured keys and the environment's tokens)."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_conveyor", False):
            root.removeHandler(existing)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._conveyor = True  # type: ignore[attr-defined]
    handler.setFormatter(_RedactingFormatter(LOG_FORMAT, secrets))
    handler.addFilter(_RequestIdFilter())
    root.addHandler(handler)
    try:
        root.setLevel(level if isinstance(level, int) else level.upper())
    except ValueError:
        root.setLevel(logging.INFO)
    # Quieten chatty libraries unless asked for DEBUG (and let them speak again when a later call
    # asks for it: `conveyor run` sets the level twice, from LOG_LEVEL and then from the definition).
    quiet = logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(quiet)
    keep_job_output(True)


def keep_job_output(always: bool) -> None:
    """always: the model's output and the record protocol lines are shown whatever the level;
    False: they follow the level like any other line (a run whose stderr may join a response)."""
    level = logging.INFO if always else logging.NOTSET
    logging.getLogger(MODEL_OUTPUT).setLevel(level)
    logging.getLogger(PROTOCOL).setLevel(level)


def log_model_line(log: logging.Logger | logging.LoggerAdapter, msg: str, *args: object) -> None:
    """Log one line of a model's own output at INFO through `log` (its name, its request id,
    the usual format), shown when `log` is enabled for INFO or when the MODEL_OUTPUT channel is."""
    if log.isEnabledFor(logging.INFO):
        log.info(msg, *args)
        return
    if not logging.getLogger(MODEL_OUTPUT).isEnabledFor(logging.INFO):
        return
    if isinstance(log, logging.LoggerAdapter):
        msg, kwargs = log.process(msg, {})
        logger, extra = log.logger, kwargs.get("extra")
    else:
        logger, extra = log, None
    while isinstance(logger, logging.LoggerAdapter):  # an adapter of an adapter
        logger = logger.logger
    # Logger.handle skips the logger's own level (that is the point) but keeps its filters,
    # `disabled` and the handlers' locks: thread-safe as logger.info is.
    logger.handle(logger.makeRecord(logger.name, logging.INFO, "(model output)", 0, msg, args, None, extra=extra))


@contextmanager
def bound_request_id(value: str) -> Iterator[None]:
    token = request_id.set(value or "-")
    try:
        yield
    finally:
        request_id.reset(token)
