"""Figure 1: the cost of one event in a fresh process (how OSCAR and AWS Batch run a worker).

Three peers process the same 100 KiB object with the same `cp` script, on the same server, each
in a new process per event, fed the way OSCAR's binary mode feeds faas-supervisor: the event on
stdin, the definition base64 in FUNCTION_CONFIG, the script base64 in SCRIPT.

    conveyor          `conveyor run --platform oscar` (the console script an image runs)
    faas-supervisor   `python -m faassupervisor.supervisor` 1.5.8, from its own venv
    bare boto3        bench/bare_worker.py: GET, the same cp through /bin/sh, PUT (the floor)

Per run: wall (fork to reap), CPU (user+sys of the process tree, wait4) and peak RSS (ru_maxrss).

`breakdown()` then times what a fresh Conveyor process pays before any work, one import set per
process, interleaved the same way: the interpreter alone, Conveyor's own modules on the `run`
path, the minio SDK (what a `minio.*` provider imports), the minio SDK without its package
__init__ (which pulls in minio.minioadmin -> minio.crypto -> pycryptodome, unused by Conveyor),
and a boto3 S3 client (what an `s3.*` provider builds).
Each peer writes to its own output prefix, deleted before the run and checked after it (outside
the timing), so a figure only counts when the output really arrived with the right size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench import faas
from bench.measure import Samples, interleave, ratio, run_process
from bench.server import BUCKET, CP_SCRIPT, Bench, b64, b64_yaml
from tests.support.pipeline import minio_event

KiB = 1024
OBJECT_SIZE = 100 * KiB
KEY = "in/cold-100k.bin"
VENV_BIN = Path(sys.executable).parent
BARE = Path(__file__).with_name("bare_worker.py")
TARGET_RATIO = 0.35  # Conveyor's wall / faas-supervisor's


class Peer:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], out_prefix: str) -> None:
        self.name, self.argv, self.env, self.out_prefix = name, argv, env, out_prefix
        self.wall = Samples("s")
        self.cpu = Samples("s")
        self.rss = Samples("MiB")


def peers(bench: Bench, log) -> tuple[list[Peer], dict[str, str]]:
    skipped: dict[str, str] = {}
    script = b64(CP_SCRIPT)
    made = [
        Peer(
            "conveyor",
            [str(VENV_BIN / "conveyor"), "run", "--platform", "oscar"],
            bench.child_env(FUNCTION_CONFIG=b64_yaml(bench.definition("out-conveyor")), SCRIPT=script),
            "out-conveyor",
        )
    ]
    try:
        python = faas.ensure_faas_venv(log=log)
        made.append(
            Peer(
                "faas-supervisor",
                faas.command(python),
                faas.env_for(bench.child_env(), b64_yaml(bench.definition("out-faas")), script),
                "out-faas",
            )
        )
    except faas.FaasUnavailable as exc:
        skipped["faas-supervisor"] = str(exc)
        log(f"bench: faas-supervisor skipped: {exc}")
    made.append(
        Peer(
            "bare boto3",
            [sys.executable, str(BARE)],
            bench.child_env(
                BENCH_ENDPOINT=bench.server.endpoint,
                BENCH_ACCESS_KEY=bench.provider()["access_key"],
                BENCH_SECRET_KEY=bench.provider()["secret_key"],
                BENCH_OUT=f"{BUCKET}/out-bare",
            ),
            "out-bare",
        )
    )
    return made, skipped


# One import set per process: what a cold Conveyor pays before it does any work.
_MINIO_WITHOUT_INIT = (
    "import importlib.util, os, sys, types; "
    "pkg = types.ModuleType('minio'); "
    "pkg.__path__ = [os.path.dirname(importlib.util.find_spec('minio').origin)]; "
    "pkg.__title__, pkg.__version__ = 'minio-py', '0'; sys.modules['minio'] = pkg; import minio.api"
)
BREAKDOWN = {
    "interpreter (python -c pass)": "pass",
    "Conveyor modules (conveyor.cli, conveyor.process, conveyor.handlers.script)":
        "import conveyor.cli, conveyor.process, conveyor.handlers.script",
    "minio SDK (import minio)": "import minio",
    "minio SDK without minio/__init__ (minio.api only)": _MINIO_WITHOUT_INIT,
    "boto3 S3 client": "import boto3; boto3.session.Session().client('s3', region_name='us-east-1', "
                       "aws_access_key_id='a', aws_secret_access_key='b', endpoint_url='http://127.0.0.1:9')",
}


def breakdown(rounds: int, log=print) -> dict[str, Any]:
    """Wall and peak RSS of a fresh interpreter doing one set of imports, interleaved (median)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
    walls = {name: Samples("s") for name in BREAKDOWN}
    rss = {name: Samples("MiB") for name in BREAKDOWN}
    for code in BREAKDOWN.values():  # warm-up
        run_process([sys.executable, "-c", code], env=env, timeout=120)
    for _, name in interleave(list(BREAKDOWN), rounds):
        run = run_process([sys.executable, "-c", BREAKDOWN[name]], env=env, timeout=120)
        if not run.ok:
            raise RuntimeError(f"breakdown {name}: {run.describe_failure()}")
        walls[name].add(run.wall)
        rss[name].add(run.maxrss_mib)
    log("  cold  breakdown: " + ", ".join(f"{n.split(' (')[0]} {walls[n].median:.3f} s" for n in BREAKDOWN))
    return {name: {"wall": walls[name].summary(), "rss": rss[name].summary(1)} for name in BREAKDOWN}


def run_once(bench: Bench, peer: Peer, event: bytes) -> Any:
    out_key = f"{peer.out_prefix}/{Path(KEY).name}"
    bench.delete(out_key)
    run = run_process(peer.argv, env=peer.env, stdin=event, timeout=120)
    if not run.ok:
        raise RuntimeError(f"{peer.name}: {run.describe_failure()}")
    size = bench.size_of(out_key)
    if size != OBJECT_SIZE:
        raise RuntimeError(f"{peer.name} exited 0 but {BUCKET}/{out_key} is {size} bytes, not {OBJECT_SIZE}:\n"
                           + run.stderr.decode(errors="replace")[-1500:])
    return run


def measure(bench: Bench, rounds: int, log=print) -> dict[str, Any]:
    bench.put_random(KEY, OBJECT_SIZE)
    event = json.dumps(minio_event(BUCKET, KEY, OBJECT_SIZE)).encode()
    made, skipped = peers(bench, log)
    by_name = {p.name: p for p in made}
    for peer in made:  # warm-up: .pyc files written, page cache filled, server connections warm
        run_once(bench, peer, event)
    for r, name in interleave(list(by_name), rounds):
        peer = by_name[name]
        run = run_once(bench, peer, event)
        peer.wall.add(run.wall)
        peer.cpu.add(run.cpu)
        peer.rss.add(run.maxrss_mib)
        log(f"  cold  round {r + 1}/{rounds}  {name:<16} wall {run.wall:6.3f} s  cpu {run.cpu:6.3f} s  "
            f"rss {run.maxrss_mib:6.1f} MiB")
    result: dict[str, Any] = {
        "object_bytes": OBJECT_SIZE,
        "rounds": rounds,
        "target_ratio": TARGET_RATIO,
        "peers": {p.name: {"wall": p.wall.summary(), "cpu": p.cpu.summary(), "rss": p.rss.summary(1)} for p in made},
        "skipped": skipped,
    }
    try:
        result["breakdown"] = breakdown(max(3, rounds // 2), log=log)
    except RuntimeError as exc:  # the breakdown explains the figure; it must not cost it
        result["breakdown_error"] = str(exc)
        log(f"  cold  breakdown failed: {exc}")
    conveyor = by_name["conveyor"]
    for other in ("faas-supervisor", "bare boto3"):
        if other in by_name:
            peer = by_name[other]
            result.setdefault("ratios", {})[f"conveyor/{other}"] = {
                "wall": ratio(conveyor.wall.median, peer.wall.median),
                "cpu": ratio(conveyor.cpu.median, peer.cpu.median),
                "rss": ratio(conveyor.rss.median, peer.rss.median),
            }
    return result
