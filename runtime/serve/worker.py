"""One request through the pipeline, the way `conveyor run` processes its stdin, with the model kept warm.

The Worker holds what every request shares: the handler (set up once, in the background, at start),
the stores, the scratch dir and the model slots. Each request gets its own Job (request id, the
Http_* variables in the model's environment, a fresh work directory per record) and an Answer:

- 200: what `conveyor run` writes to stdout (the base64 of the one output, of a zip of several, or
  the model's own stdout); for a storage event (a bucket notification) the result records as JSON;
- 500 when a record failed, 408 when it ran out of time (conveyor.timeout): the failure lines
  `conveyor run` prints on stderr;
- 400 for a body that is no event at all (conveyor run exits 65).

`run_mode` (the warm daemon's forwarded requests): the body is exactly `conveyor run`'s stdout on
success (empty for a storage event), its stderr failure lines otherwise, and the exit code rides
along (conveyor.serve.EXIT_CODE_HEADER).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from conveyor.config import FunctionConfig
from conveyor.errors import ConveyorError, EventError, exit_code_for
from conveyor.events import Event, load_event
from conveyor.handler import Handler, load_handler
from conveyor.job import Job, Stores
from conveyor.logs import bound_request_id
from conveyor.platform import Platform
from conveyor.process import responds_inline, run_event
from conveyor.records import ResultRecord, failure_lines
from conveyor.response import RESPONSE_END
from conveyor.scratch import scratch_dir
from conveyor.storage import TransferOptions

log = logging.getLogger(__name__)

@dataclass
class Answer:
    """What one request gets back."""

    status: int
    body: bytes
    exit_code: int
    json_body: bool = False  # the records JSON (else: the request's Content-Type is echoed)
    records: list[ResultRecord] = field(default_factory=list)


def parse_body(body: bytes) -> Event:
    """The request body as `conveyor run` parses its stdin (no EVENT fallback: the body is the event)."""
    if not body.strip():
        raise EventError("no event: the request body is empty")
    return load_event(body)


def refused(exc: ConveyorError) -> Answer:
    """The answer to a body that is not an event (or another error before any record)."""
    line = f"conveyor: {exc.kind} error: {exc.message}\n"
    return Answer(400 if exc.kind in ("event", "outside_inputs") else 500, line.encode(), exc.exit_code)


class Worker:
    """The warm model and what every request shares. Thread-safe: requests run in worker threads."""

    def __init__(
        self,
        config: FunctionConfig,
        environ: Mapping[str, str],
        platform: Platform,
        *,
        slots: int = 1,
        transfer: TransferOptions | None = None,
        handler: Handler | None = None,
    ) -> None:
        self.config = config
        self.environ = {k: v for k, v in environ.items() if not k.startswith("Http_")}
        self.platform = platform
        self.handler = handler or load_handler(config)
        self.stores = Stores(config, options=transfer)
        self.scratch = scratch_dir(environ)
        self.shutdown = threading.Event()  # set when a drain's grace period is over: children are stopped
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.setups = 0  # model loads this server asked for (a supervised host counts its own)
        self.setup_error: str | None = None
        self.last_active = time.monotonic()

    # -- the model ----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self.handler.ready)

    def start_setup(self) -> threading.Thread:
        """Load the model in the background; /health answers 200 once it is loaded."""
        thread = threading.Thread(target=self._setup, name="conveyor-serve-setup", daemon=True)
        thread.start()
        return thread

    def _setup(self) -> None:
        started = time.monotonic()
        try:
            self.handler.ensure_setup()
        except ConveyorError as exc:  # the first request fails with it (run_input sets up again)
            self.setup_error = exc.message
            log.error("the model did not load: %s", exc.message)
            return
        except Exception as exc:
            self.setup_error = f"{type(exc).__name__}: {exc}"
            log.exception("the model did not load")
            return
        with self._lock:
            self.setups += 1
        log.info("the model is loaded (%.2f s): ready", time.monotonic() - started)

    def loads(self) -> int:
        """Model loads: the handler's own count when it keeps one (a supervised host), else ours."""
        count = getattr(self.handler, "loads", None)
        return int(count) if isinstance(count, int) else self.setups

    def restarts(self) -> int:
        count = getattr(self.handler, "restarts", None)
        return int(count) if isinstance(count, int) else 0

    def close(self) -> None:
        self.handler.close()

    # -- slots --------------------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take a model slot without waiting; False when all are busy (429, or 503 for a storage event)."""
        if not self._free.acquire(blocking=False):
            return False
        with self._lock:
            self.in_flight += 1
            self.last_active = time.monotonic()
        return True

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.last_active = time.monotonic()
        self._free.release()

    def idle_for(self) -> float:
        """Seconds since the last request ended (0 while one runs)."""
        with self._lock:
            return 0.0 if self.in_flight else time.monotonic() - self.last_active

    # -- one request --------------------------------------------------------------------------------

    def process(self, event: Event, request_id: str, http_vars: Mapping[str, str], run_mode: bool = False) -> Answer:
        """Run the event's records (in this thread; the caller holds a slot) and answer."""
        job = Job(
            config=self.config,
            platform=self.platform,
            handler=self.handler,
            stores=self.stores,
            base_env={**self.environ, **{k: v for k, v in http_vars.items() if k.startswith("Http_")}},
            scratch_dir=self.scratch,
            request_id=request_id,
            shutdown=self.shutdown,
        )
        body = io.BytesIO() if responds_inline(event) else None
        with bound_request_id(request_id):
            records = run_event(job, event, response=body)
        return answer(event, records, body, run_mode)


def answer(event: Event, records: list[ResultRecord], body: io.BytesIO | None, run_mode: bool) -> Answer:
    failed = [r for r in records if not r.ok]
    if failed:
        kinds = {(r.error or {}).get("kind") for r in failed}
        lines = "".join(line + "\n" for line in failure_lines(failed))
        code = exit_code_for((failed[0].error or {}).get("kind"))
        return Answer(408 if "timeout" in kinds else 500, lines.encode(), code, records=records)
    stdout = b""
    if body is not None and any("response" in r.extra for r in records):
        stdout = body.getvalue() + RESPONSE_END
    if run_mode or responds_inline(event):
        return Answer(200, stdout, 0, records=records)
    payload = json.dumps([r.to_dict() for r in records], default=str).encode()
    return Answer(200, payload, 0, json_body=True, records=records)
