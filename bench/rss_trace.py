"""Where does a `conveyor run` process's memory go? An RSS timeline against its own log.

    python -m bench.rss_trace --size 1GiB --provider minio [--engine obstore|sdk] [--every 0.02]

Starts a SeaweedFS server, uploads one object of that size, runs `conveyor run` on its MinIO
(or S3) event with the `cp` script, samples the process's VmRSS from /proc every `--every`
seconds, and prints the peak RSS of each phase. Each sample is tagged with the phase the
process is in at that moment: download (a `.conveyor-part` staging file exists in its scratch
dir), handler (it has a child: the model), upload (after the model, before its "uploaded"
log line), start-up (before all of these) and finish (after). Used to find which transfer holds the memory
when figure 4 misses its target; `--env NAME=VALUE` (repeatable) passes extra variables.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.server import BUCKET, CP_SCRIPT, Bench, b64, b64_yaml, s3_event
from conveyor.records import MARKER
from tests.support.pipeline import minio_event

UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "k": 2**10, "m": 2**20, "g": 2**30, "": 1}
PHASES = ("start-up", "download", "handler", "upload", "finish")


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 100MiB, 1GiB)")
    return int(match.group(1)) * UNITS[match.group(2).lower()]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def has_children(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().strip())
    except OSError:
        return False


def downloading(scratch: Path) -> bool:
    return any(scratch.glob("conveyor-*/input/*.conveyor-part*"))


def trace(bench: Bench, size: int, provider: str, every: float, extra_env: dict[str, str],
          engine: str = "obstore") -> dict:
    key = f"in/trace-{size}.bin"
    bench.put_random(key, size)
    event = (minio_event if provider == "minio" else s3_event)(BUCKET, key, size)
    env = bench.child_env(
        FUNCTION_CONFIG=b64_yaml(bench.definition("out-trace", provider_type=provider,
                                                  conveyor={"transfer_engine": engine})),
        SCRIPT=b64(CP_SCRIPT),
        PYTHONUNBUFFERED="1",
        **extra_env,
    )
    conveyor = str(Path(sys.executable).parent / "conveyor")
    started = time.monotonic()
    proc = subprocess.Popen([conveyor, "run", "--platform", "oscar"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    samples: list[tuple[float, int, str]] = []
    marks: list[tuple[float, str]] = []
    scratch = Path(env["TMPDIR"])

    def read_log() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            marks.append((time.monotonic() - started, raw.decode(errors="replace").rstrip()))

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(event).encode())
    proc.stdin.close()
    phase = "start-up"
    while proc.poll() is None:
        lines = [line for _, line in marks]
        if any(MARKER in line for line in lines):  # an upload or the result record (conveyor.records)
            phase = "finish"
        elif has_children(proc.pid):
            phase = "handler"
        elif phase in ("start-up", "download") and downloading(scratch):
            phase = "download"
        elif phase == "handler":
            phase = "upload"
        value = rss_kib(proc.pid)
        if value is not None:
            samples.append((time.monotonic() - started, value, phase))
        time.sleep(every)
    reader.join(timeout=10)
    phases = {}
    for name in PHASES:
        inside = [kib for _, kib, tag in samples if tag == name]
        phases[name] = {"peak_mib": round(max(inside) / 1024, 1), "samples": len(inside)} if inside else None
    bench.delete(key)
    return {
        "size": size,
        "provider": provider,
        "returncode": proc.returncode,
        "peak_mib": round(max((k for _, k, _ in samples), default=0) / 1024, 1),
        "phases": phases,
        "seconds": round(time.monotonic() - started, 2),
        "log": [line for _, line in marks if " conveyor." in line][-8:],  # Conveyor's own loggers
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss_trace", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--provider", choices=("minio", "s3"), default="minio")
    parser.add_argument("--engine", choices=("obstore", "sdk"), default="obstore",
                        help="the providers' transfer engine (conveyor: transfer_engine)")
    parser.add_argument("--every", type=float, default=0.02, help="seconds between samples")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    with Bench.start() as bench:
        print(json.dumps(trace(bench, args.size, args.provider, args.every, extra, args.engine), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
