"""Figure 5: files per second through the whole local loop, against what the model alone allows.

    conveyor local --dir D --once --workers 2 --model script --platform P --no-samples --json

200 small files (4 KiB, random) are put in D/inbox before the start; the run uploads them to its
own embedded S3 server, turns each upload notification into an event, processes it the way the
platform would (oscar: a fresh `conveyor run` per file; lambda: warm in-process environments)
and exits when every file has a record. Every file must SUCCEED, or the figure is not reported.

    files/s            files / processing span; the span runs from the first file starting to
                       the last one finishing, read from the run's progress lines (start-up of
                       the server and the model check excluded); `end_to_end` counts the whole
                       command instead
    model-bound ideal  workers / the median model time per file (the record's handler time):
                       the rate if nothing but the model ran, on `workers` model slots
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.measure import Samples, interleave, run_process
from bench.server import Bench

FILES = 200
FILE_SIZE = 4096
WORKERS = 2
PLATFORMS = ("lambda", "oscar")
VENV_BIN = Path(sys.executable).parent
PROGRESS = re.compile(r"^\[\s*([0-9.]+)s\]\s+(running|done|failed)\s")


def local_missing() -> str | None:
    try:
        done = subprocess.run([str(VENV_BIN / "conveyor"), "local", "--help"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`conveyor local --help` could not run: {exc}"
    if done.returncode != 0:
        return "`conveyor local` does not exist yet: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    for flag in ("--once", "--workers", "--model", "--platform", "--json", "--no-samples"):
        if flag not in done.stdout:
            return f"`conveyor local` has no {flag} option"
    return None


def processing_span(stderr: str) -> float | None:
    """Seconds from the first file starting to the last one ending, from the progress lines."""
    starts, ends = [], []
    for line in stderr.splitlines():
        match = PROGRESS.match(line.strip())
        if match:
            (starts if match.group(2) == "running" else ends).append(float(match.group(1)))
    if not starts or not ends:
        return None
    return max(ends) - min(starts)


def fill_inbox(inbox: Path, files: int, size: int) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (inbox / f"f{i:04d}.bin").write_bytes(os.urandom(size))


def run_local(root: Path, platform: str, files: int, env: dict[str, str], timeout: float) -> dict[str, Any]:
    shutil.rmtree(root, ignore_errors=True)
    fill_inbox(root / "inbox", files, FILE_SIZE)
    argv = [str(VENV_BIN / "conveyor"), "local", "--dir", str(root), "--once", "--workers", str(WORKERS),
            "--model", "script", "--platform", platform, "--no-samples", "--json", "--timeout", "60"]
    run = run_process(argv, env=env, timeout=timeout)
    stderr = run.stderr.decode(errors="replace")
    try:
        summary = json.loads(run.stdout)
    except ValueError:
        raise RuntimeError(f"conveyor local ({platform}) printed no JSON summary; {run.describe_failure()}") from None
    succeeded = summary.get("succeeded")
    if run.returncode != 0 or succeeded != files:
        raise RuntimeError(f"conveyor local ({platform}): {succeeded} of {files} succeeded, exit {run.returncode}:\n"
                           + stderr[-2000:])
    model = [f["model_seconds"] for f in summary.get("files", []) if f.get("model_seconds") is not None]
    span = processing_span(stderr)
    per_file = where_a_file_goes(root, summary.get("files", []))
    shutil.rmtree(root, ignore_errors=True)
    return {
        "wall": run.wall,
        "span": span if span else summary.get("wall_seconds", run.wall),
        "span_from": "progress lines" if span else "summary wall_seconds",
        "model_median": statistics.median(model) if model else None,
        "cpu": run.cpu,
        "per_file": per_file,
    }


def where_a_file_goes(root: Path, files: list[dict[str, Any]]) -> dict[str, float]:
    """Medians (s) over the files: the job as the loop saw it (`run`: started to done, the loop's
    own completion work included), the record's part of it (`record`: the pipeline in the job, its
    fetch, model and upload) and what lies outside the record (`outside`: the job's interpreter
    start-up, imports, config and exit, and the loop's completion)."""
    parts: dict[str, list[float]] = {k: [] for k in ("run", "record", "fetch", "model", "upload", "outside")}
    for entry in files:
        run_seconds = entry.get("run_seconds")
        try:
            timings = json.loads((root / entry["record"]).read_text()).get("timings") or {}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if run_seconds is None or "total" not in timings:
            continue
        parts["run"].append(run_seconds)
        parts["record"].append(timings["total"])
        parts["fetch"].append(timings.get("download", 0.0))
        parts["model"].append(timings.get("handler", 0.0))
        parts["upload"].append(timings.get("upload", 0.0))
        parts["outside"].append(run_seconds - timings["total"])
    return {k: round(statistics.median(v), 4) for k, v in parts.items() if v}


def measure(bench: Bench, rounds: int, log=print, files: int = FILES) -> dict[str, Any]:
    missing = local_missing()
    if missing:
        return {"rounds": 0, "skipped": missing}
    env = bench.child_env()
    rate = {p: Samples("files/s") for p in PLATFORMS}
    end_to_end = {p: Samples("files/s") for p in PLATFORMS}
    model = {p: Samples("s") for p in PLATFORMS}
    cpu = {p: Samples("s") for p in PLATFORMS}
    breakdown: dict[str, dict[str, Samples]] = {p: {} for p in PLATFORMS}
    for r, platform in interleave(list(PLATFORMS), rounds):
        root = bench.dir("throughput") / f"{platform}-{r}"
        got = run_local(root, platform, files, env, timeout=60 + files * 5)
        rate[platform].add(files / got["span"])
        end_to_end[platform].add(files / got["wall"])
        if got["model_median"]:
            model[platform].add(got["model_median"])
        cpu[platform].add(got["cpu"] / files)
        for part, value in got["per_file"].items():
            breakdown[platform].setdefault(part, Samples("s")).add(value)
        log(f"  throughput round {r + 1}/{rounds}  {platform:<6} {files / got['span']:6.1f} files/s "
            f"(span {got['span']:.1f} s, command {got['wall']:.1f} s, model {got['model_median'] or 0:.3f} s/file, "
            f"CPU {got['cpu'] / files * 1000:.0f} ms/file; per file: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in got["per_file"].items()) + ")")
    runs = {}
    for platform in PLATFORMS:
        per_file = model[platform].median
        ideal = WORKERS / per_file if per_file else None
        achieved = rate[platform].median
        runs[f"--platform {platform}"] = {
            "files_per_s": rate[platform].summary(2),
            "end_to_end_files_per_s": end_to_end[platform].summary(2),
            "model_seconds_per_file": model[platform].summary(4),
            "ideal_files_per_s": ideal,
            "cpu_seconds_per_file": cpu[platform].summary(4),  # the whole tree: loop, S3 server, jobs
            "per_file": {part: samples.summary(4) for part, samples in breakdown[platform].items()},
            "efficiency": (achieved / ideal) if ideal and achieved else None,
        }
    return {"rounds": rounds, "files": files, "file_bytes": FILE_SIZE, "workers": WORKERS, "model": "script",
            "runs": runs}
