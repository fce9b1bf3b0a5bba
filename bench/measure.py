"""How one figure is measured: a child process timed and weighed by the kernel, medians over rounds.

    run = run_process(argv, env=env, stdin=b"...", timeout=120)
    run.wall, run.cpu, run.maxrss_mib, run.returncode

A child is started by a small launcher (bench/launch.py: why, there) in its own session with
stdin, stdout and stderr on files (no pipe can fill up and stall it), then reaped with os.wait4,
whose rusage is the kernel's own account of it: `cpu` is user + system time of the child and of
every descendant it waited for, `maxrss` the largest resident set among them (ru_maxrss, the
high-water mark, not a sampled value). `wall` is perf_counter from just before the fork to just
after the reap, taken in the launcher (its own start-up is not counted). On timeout the whole
process group is killed (SIGKILL) and the run is marked timed out.

`interleave(peers, rounds)` yields (round, peer) in rotated order: A,B,C then B,C,A then C,A,B,
so every peer runs in every round, no peer always runs first after a quiet moment, and load
that comes and goes on the machine is shared out evenly instead of landing on one peer.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
LAUNCHER = Path(__file__).with_name("launch.py")


@dataclass
class ProcessRun:
    argv: list[str]
    returncode: int
    wall: float  # seconds
    cpu: float  # seconds, user + system, the child and its reaped descendants
    maxrss_kib: int  # peak resident set (KiB), the largest process of the tree
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def maxrss_mib(self) -> float:
        return self.maxrss_kib / 1024

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe_failure(self, tail: int = 1500) -> str:
        what = "timed out" if self.timed_out else f"exited {self.returncode}"
        err = self.stderr.decode(errors="replace")[-tail:]
        return f"{' '.join(self.argv[:4])} {what}:\n{err}"


def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: bytes = b"",
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 300.0,
) -> ProcessRun:
    """Run argv to completion through bench/launch.py; measure it with wait4 (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        files = [Path(tmp, name) for name in ("stdin", "stdout", "stderr", "report")]
        files[0].write_bytes(stdin)
        for path in files[1:]:
            path.touch()
        launcher = [sys.executable, "-I", "-S", str(LAUNCHER), str(timeout), *map(str, files[:3]), *argv]
        with open(files[3], "wb") as report:
            done = subprocess.run(launcher, stdout=report, env=dict(env), cwd=cwd, timeout=timeout + 60)
        fields = files[3].read_text().split()
        if done.returncode != 0 or len(fields) != 6:
            raise RuntimeError(f"the launcher failed ({done.returncode}) for {' '.join(argv[:4])}: {fields}")
        rc, wall, utime, stime, maxrss, timed_out = fields
        return ProcessRun(
            argv=list(argv),
            returncode=int(rc),
            wall=float(wall),
            cpu=float(utime) + float(stime),
            maxrss_kib=int(maxrss),
            stdout=files[1].read_bytes(),
            stderr=files[2].read_bytes(),
            timed_out=timed_out == "1",
        )


def interleave(peers: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, peer) for every peer in every round, the order rotated by one each round."""
    n = len(peers)
    for r in range(rounds):
        for i in range(n):
            yield r, peers[(r + i) % n]


@dataclass
class Samples:
    """Repeated measurements of one figure (seconds, MiB ...)."""

    unit: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def summary(self, digits: int = 4) -> dict[str, Any]:
        vals = sorted(self.values)
        if not vals:
            return {"unit": self.unit, "n": 0, "median": None}
        q = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) >= 2 else [vals[0]] * 3
        return {
            "unit": self.unit,
            "n": len(vals),
            "median": round(statistics.median(vals), digits),
            "min": round(vals[0], digits),
            "max": round(vals[-1], digits),
            "p25": round(q[0], digits),
            "p75": round(q[2], digits),
            "samples": [round(v, digits) for v in self.values],
        }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def free_disk(path: str | os.PathLike[str]) -> int:
    st = os.statvfs(Path(path))
    return st.f_bavail * st.f_frsize
