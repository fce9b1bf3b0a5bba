"""Figure 6: what the model host's hop costs per input (conveyor.modelhost).

Two peers run the same no-op handler (NoOp below: it touches nothing and returns at once) on the
same small Invocation (a 1 KiB input file, the environment a record gets, EVENT of 1 KiB included):

    inline    the handler in this process: handle() is a Python call
    hosted    load_handler's HostedHandler: the Invocation pickled over a unix socket to the host
              process, handle() there, the HandlerResult pickled back, waited for with the
              record's deadline and shutdown event

Each round times CALLS handle() calls of each peer (blocks interleaved, so load that comes and goes
is shared), after a warm-up. The hop is hosted minus inline per call; goal: under 1 ms. Also shown:
what starting a host costs (ensure_setup of a fresh HostedHandler, the no-op setup included), the
price a one-shot `conveyor run` pays for a hosted model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.measure import Samples, interleave
from conveyor.config import ConveyorSettings, FunctionConfig, HandlerSpec
from conveyor.deadline import Deadline
from conveyor.events import ObjectRef
from conveyor.handler import Handler, HandlerResult, Invocation, load_handler

CALLS = 300  # handle() calls per peer per round
WARMUP = 20
TARGET_MS = 1.0
STARTS = 3  # fresh hosts started per round


class NoOp(Handler):
    """A model that does nothing, in memory: hosted under model_host auto."""

    name = "noop"

    @classmethod
    def hosted(cls, options: Mapping[str, Any]) -> bool:
        return True

    def handle(self, inv: Invocation) -> HandlerResult:
        return HandlerResult(details={"noop": True})


def _config(model_host: str) -> FunctionConfig:
    return FunctionConfig(conveyor=ConveyorSettings(handler=HandlerSpec(name=f"{__name__}:NoOp"),
                                                    model_host=model_host))


def _invocation(root: Path) -> Invocation:
    for name in ("input", "output", "work"):
        (root / name).mkdir(parents=True, exist_ok=True)
    input_path = root / "input" / "small.bin"
    input_path.write_bytes(os.urandom(1024))
    env = {k: v for k, v in os.environ.items() if k.isupper()}
    env.update({"INPUT_FILE_PATH": str(input_path), "TMP_INPUT_DIR": str(root / "input"),
                "TMP_OUTPUT_DIR": str(root / "output"), "EVENT": "x" * 1024})
    return Invocation(
        input=ObjectRef(bucket="in", key="small.bin", size=1024),
        input_path=input_path,
        input_dir=root / "input",
        output_dir=root / "output",
        work_dir=root / "work",
        env=env,
        deadline=Deadline.after(3600),
        log=logging.getLogger("bench.host"),
        log_file=root / "model.log",
        shutdown=threading.Event(),
        request_id="bench-host",
    )


def measure(bench: Any, rounds: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`bench` (the shared SeaweedFS) is not used: the hop touches no store."""
    inline, hosted = load_handler(_config("inline")), load_handler(_config("auto"))
    assert not isinstance(inline, type(hosted)), "model_host auto should host NoOp"
    per_call = {"inline": Samples("s"), "hosted": Samples("s")}
    starts = Samples("s")
    with tempfile.TemporaryDirectory(prefix="bench-host-") as tmp:
        inv = _invocation(Path(tmp))
        try:
            for handler in (inline, hosted):
                handler.ensure_setup()
                for _ in range(WARMUP):
                    handler.handle(inv)
            peers = {"inline": inline, "hosted": hosted}
            for round_no, name in interleave(list(peers), rounds):
                handler = peers[name]
                for _ in range(CALLS):
                    t0 = time.perf_counter()
                    handler.handle(inv)
                    per_call[name].add(time.perf_counter() - t0)
                log(f"  host round {round_no + 1}/{rounds} {name}: median {per_call[name].median * 1e6:.0f} us")
            for _ in range(rounds * STARTS):
                fresh = load_handler(_config("auto"))
                t0 = time.perf_counter()
                fresh.ensure_setup()
                starts.add(time.perf_counter() - t0)
                fresh.close()
        finally:
            inline.close()
            hosted.close()
    hop = None
    if per_call["hosted"].median is not None and per_call["inline"].median is not None:
        hop = (per_call["hosted"].median - per_call["inline"].median) * 1000
    return {
        "rounds": rounds,
        "calls_per_round": CALLS,
        "target_ms": TARGET_MS,
        "per_call": {name: s.summary(digits=7) | {"samples": []} for name, s in per_call.items()},
        "hop_ms": None if hop is None else round(hop, 4),
        "host_start": starts.summary(),
        "met": None if hop is None else hop < TARGET_MS,
    }
