"""Large events (issue 14, item 3): a record's cost must not grow with its event's size, and a
shutdown must end the run at once however many inputs are left.

    python -m bench.events                      # 100,000 records (a few minutes on 2 cores)
    python -m bench.events --records 5000       # a quick look
    python -m bench.events --json out.json      # the figures as JSON too

One event of N storage records (objects `in/obj/NNNNNN.txt` of one byte in the local folder store)
runs in-process through `run_event` with a trivial handler (it writes nothing; `require_output:
false`), so what is measured is the pipeline's own work per record: work directory, download,
EVENT and the environment, handler call, record. Logging goes to /dev/null at INFO (formatted,
not shown). Reported:

- time per record (median) over the first 1,000 records and over the last 1,000 (flat: about equal);
- peak RSS (ru_maxrss) once the event is parsed and after the run (what the run adds: the records);
- a second run of the same event stopped (as SIGTERM does: the shutdown event) after 1,000
  records: seconds from the signal to run_event's return, and that every input still has a record.

Not part of `python -m bench` (it takes minutes and needs no server); see bench/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from conveyor.deadline import Deadline
from conveyor.events import Event, load_event
from conveyor.handler import Handler, HandlerResult, Invocation
from conveyor.records import Status
from tests.support.inprocess import Pipeline

WINDOW = 1000  # records in the first and last windows
STOP_AFTER = 1000  # records before the shutdown of the second run


class Trivial(Handler):
    """Does nothing but note when each record reached it (and set `stop` at the STOP_AFTER-th)."""

    name = "trivial"
    stop: threading.Event | None = None

    def __init__(self, config: Any, options: Any = None) -> None:
        super().__init__(config, options or {})
        self.times: list[float] = []
        self.stopped_at: float | None = None

    def handle(self, inv: Invocation) -> HandlerResult:
        self.times.append(time.monotonic())
        if self.stop is not None and len(self.times) == STOP_AFTER:
            self.stopped_at = time.monotonic()
            self.stop.set()
        return HandlerResult()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_record(times: list[float]) -> tuple[float, float]:
    """Median milliseconds between consecutive records over the first and the last WINDOW (the median:
    a pause of the machine, another process's burst, is not the pipeline's cost)."""
    gaps = [b - a for a, b in itertools.pairwise(times)]
    window = min(WINDOW, max(1, len(gaps) // 2))
    return statistics.median(gaps[:window]) * 1000, statistics.median(gaps[-window:]) * 1000


def build(tmp: Path, records: int) -> tuple[Pipeline, Event, int]:
    pipe = Pipeline(tmp)
    pipe.definition["output"] = []
    pipe.definition["conveyor"]["require_output"] = False
    keys = [f"obj/{i:06d}.txt" for i in range(records)]
    for key in keys:
        pipe.put("in", key, b"x")
    raw = pipe.storage_event("in", keys)
    size = len(json.dumps(raw))
    return pipe, load_event(raw), size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"), force=True)

    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        print(f"building an event of {args.records:,} records ...", file=sys.stderr, flush=True)
        pipe, event, size = build(Path(tmp), args.records)
        rss_event = peak_rss_mib()

        handler = Trivial(pipe.config)
        print("running it ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        records = pipe.run(event, handler=handler, deadline=Deadline.never())
        total = time.monotonic() - started
        rss_run = peak_rss_mib()
        ok = sum(r.status is Status.SUCCEEDED for r in records)
        first, last = per_record(handler.times)
        del records

        print("running it again, stopped after 1,000 records ...", file=sys.stderr, flush=True)
        stopper = Trivial(pipe.config)
        stopper.stop = threading.Event()
        stopped = pipe.run(event, handler=stopper, deadline=Deadline.never(), shutdown=stopper.stop)
        stop_seconds = time.monotonic() - (stopper.stopped_at or time.monotonic())
        not_started = sum(bool(r.extra.get("not_started")) for r in stopped)

    figures = {
        "records": args.records,
        "event_bytes": size,
        "seconds": round(total, 2),
        "succeeded": ok,
        "ms_per_record_first_1k": round(first, 3),
        "ms_per_record_last_1k": round(last, 3),
        "peak_rss_mib_event_parsed": round(rss_event, 1),
        "peak_rss_mib_after_run": round(rss_run, 1),
        "shutdown_to_return_seconds": round(stop_seconds, 3),
        "records_after_shutdown": len(stopped),
        "not_started": not_started,
    }
    print(f"""
| large event ({args.records:,} records, {size / 2**20:.1f} MiB of JSON) | |
|---|---|
| run, {ok:,} SUCCEEDED | {total:.1f} s |
| per record (median), first 1k / last 1k | {first:.3f} ms / {last:.3f} ms |
| peak RSS, event parsed / after the run | {rss_event:.0f} MiB / {rss_run:.0f} MiB |
| shutdown after 1k records -> run_event returns | {stop_seconds:.2f} s |
| records after the shutdown (of them not started) | {len(stopped):,} ({not_started:,}) |
""")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    healthy = ok == args.records and len(stopped) == args.records
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
