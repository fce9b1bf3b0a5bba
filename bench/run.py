"""`python -m bench` (`make bench`): every figure, one run, one table, one JSON file.

    python -m bench                        # all sections, default repeats (about 10 minutes on 2 cores)
    python -m bench --only cold,warm       # some sections
    python -m bench --repeat 5             # scale every section's repeat count (1 = the defaults)
    python -m bench --cold-rounds 30       # or set one section's

Sections: cold (1), warm (2), models (3), memory (4), throughput (5; needs `conveyor local`), host (6),
large (4b: 1 GiB GET and PUT, Conveyor's store vs boto3's transfer manager; bench/large.py), serve (7),
sweep (8; its rounds are the number of inputs).
Progress goes to stderr, the markdown table to stdout, everything measured (every sample, the
machine, the load average before and after) to bench/results/latest.json and a dated copy.
One SeaweedFS server on 127.0.0.1 serves the whole run and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import machine, report
from bench.server import Bench

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SECTIONS = ("cold", "warm", "models", "memory", "throughput", "host", "large", "serve", "sweep")
DEFAULT_ROUNDS = {"cold": 12, "warm": 60, "models": 8, "memory": 2, "throughput": 2, "host": 5, "large": 2,
                  "serve": 10, "sweep": 200}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Conveyor's benchmarks (see bench/README.md).")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: all of {', '.join(SECTIONS)})")
    parser.add_argument("--repeat", type=float, default=1.0,
                        help="multiply every section's default repeat count "
                        "(e.g. 0.3 for a quick look, 3 for less noise)")
    for name, rounds in DEFAULT_ROUNDS.items():
        parser.add_argument(f"--{name}-rounds", type=int, default=None, metavar="N",
                            help=f"repeats of section {name} (default {rounds} x --repeat)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="where the JSON goes")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where the server's data and the workers' scratch live (default: a new temp dir)")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    args.rounds = {}
    for name, default in DEFAULT_ROUNDS.items():
        explicit = getattr(args, f"{name}_rounds")
        args.rounds[name] = explicit if explicit is not None else max(1, round(default * args.repeat))
    return args


def run_section(name: str, bench: Bench, rounds: int) -> dict[str, Any]:
    if name == "cold":
        from bench import cold

        return cold.measure(bench, rounds, log=log)
    if name == "warm":
        from bench import warm

        return warm.measure(bench, rounds, log=log)
    if name == "models":
        from bench import models

        return {
            "rounds": rounds,
            "target_speedup": models.TARGET_SPEEDUP,
            "results": {
                "deepaas": models.measure_deepaas(bench, rounds, log=log),
                "darknet": models.measure_darknet(bench, rounds, log=log),
            },
        }
    if name == "memory":
        from bench import memory

        return memory.measure(bench, rounds, log=log)
    if name == "throughput":
        from bench import throughput

        return throughput.measure(bench, rounds, log=log)
    if name == "host":
        from bench import host

        return host.measure(bench, rounds, log=log)
    if name == "large":
        from bench import large

        return large.measure(bench, rounds, log=log)
    if name == "serve":
        from bench import serve

        return serve.measure(bench, rounds, log=log)
    if name == "sweep":  # rounds: the number of inputs
        from bench import sweep

        return sweep.measure(bench, rounds, log=log)
    raise ValueError(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)  # tests.support.emulator and bench.* import from the repository
    results: dict[str, Any] = {
        "machine": machine.describe(REPO),
        "rounds": args.rounds,
        "sections": {},
        "errors": {},
        "seconds": {},
    }
    log(f"bench: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"load {results['machine']['load_average_at_start']}; sections {', '.join(args.sections)}")
    started = time.monotonic()
    with Bench.start(args.scratch) as bench:
        log(f"bench: SeaweedFS at {bench.server.endpoint}, scratch {bench.root}")
        for name in args.sections:
            log(f"bench: section {name} ({args.rounds[name]} rounds)")
            t0 = time.monotonic()
            try:
                results["sections"][name] = run_section(name, bench, args.rounds[name])
            except Exception as exc:  # one broken section must not cost the others' numbers
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
                log(f"bench: section {name} failed: {results['errors'][name]}")
            results["seconds"][name] = round(time.monotonic() - t0, 1)
    results["machine"]["load_average_at_end"] = machine.load_average()
    results["seconds"]["total"] = round(time.monotonic() - started, 1)
    table = report.render(results)
    for name, error in results["errors"].items():
        table += f"\nSection {name} failed: {error}\n"
    results["table_markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    args.out.write_text(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.out == RESULTS / "latest.json":
        (RESULTS / f"run-{stamp}.json").write_text(text)
    print(table)
    log(f"bench: done in {results['seconds']['total']:.0f} s; results in {args.out}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
