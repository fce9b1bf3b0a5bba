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
TARGET_RATIO = 0.15  # Conveyor's wall and CPU / faas-supervisor's (issue 16; it was 0.35)


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


# -- one cold event, phase by phase --------------------------------------------------------------------
#
# `python -c PHASES run --platform oscar` is `conveyor run` (the console script's own code,
# conveyor.entrypoints.container.conveyor) with wall-clock stamps: the first process notes when its
# code starts and passes it on through the sealing re-exec (BENCH_T1 stays in the environment); the
# second notes when it starts, wraps the edge's config loading and event processing, the opening of
# a store (its SDK imported and its client built on first use) and the storing of the record, and
# at exit writes one `@bench-phases {...}` line to stderr; the record's own timings give the GET,
# the model and the PUT. The launcher's wall minus everything stamped is the interpreter's first
# start and its exit. A run under `-X importtime` then says which imports the time went to.
PHASES = r"""
import os, sys, time
if "BENCH_T1" not in os.environ:
    os.environ["BENCH_T1"] = repr(time.time())
else:
    _t2 = time.time()
    _spent = {}
    def _timed(name, func):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                _spent[name] = _spent.get(name, 0.0) + time.perf_counter() - t
        return wrapper
    import conveyor.cli as _cli
    _t_cli = time.time()
    _process = _cli._process
    def _wrapped_process(*args, **kwargs):
        import conveyor.job, conveyor.process
        conveyor.job.Stores.get = _timed("store", conveyor.job.Stores.get)
        conveyor.process.run_event = _timed("run_event", conveyor.process.run_event)
        conveyor.process.store_record = _timed("store_record", conveyor.process.store_record)
        return _process(*args, **kwargs)
    _cli._process = _timed("process", _wrapped_process)
    _load = _cli._load
    def _stamped_load(*args, **kwargs):
        try:
            return _load(*args, **kwargs)
        finally:
            _spent["config_end"] = time.time()
    _cli._load = _stamped_load
    import atexit, json
    def _report():
        _spent.update(t1=float(os.environ["BENCH_T1"]), t2=_t2, cli=_t_cli - _t2, end=time.time())
        sys.stderr.write("@bench-phases " + json.dumps(_spent) + "\n")
        sys.stderr.flush()
    atexit.register(_report)
from conveyor.entrypoints.container import conveyor
conveyor()
"""
PHASE_NAMES = {
    "start": "interpreter start and exit (first process)",
    "seal": "sealing re-exec (a second interpreter start)",
    "cli": "CLI imports (conveyor.cli, logging)",
    "config": "logging set up, config modules imported, definition parsed",
    "setup": "event parsed, pipeline modules imported, handler and job built",
    "store": "store opened (its SDK imported, client built)",
    "fetch": "fetch (GET 100 KiB)",
    "model": "model (the cp script)",
    "upload": "upload (PUT 100 KiB)",
    "record": "record (work dir, environment, the record and its log line)",
    "other": "the rest (exit code, atexit)",
}
# Imported by the cold event although it does not need them (the import budget; tests/test_startup.py
# checks the same for an event on the local folder store).
BUDGET = ("click", "boto3", "botocore", "s3transfer", "requests", "PIL", "numpy", "cv2",
          "starlette", "uvicorn", "prometheus_client", "kubernetes", "awslambdaric")
# yaml: the definition is YAML; a store's SDK and what it imports (urllib3 imports importlib.metadata)
WATCHED = (*BUDGET, "yaml", "minio", "urllib3", "importlib.metadata", "obstore")


def phases_of(run: Any) -> dict[str, float]:
    """The phases of one PHASES run (seconds), from its stamps, its record and the launcher's wall."""
    stamps: dict[str, float] | None = None
    record: dict[str, Any] | None = None
    for line in run.stderr.decode(errors="replace").splitlines():
        if line.startswith("@bench-phases "):
            stamps = json.loads(line.partition(" ")[2])
        elif "@conveyor-record result " in line:
            record = json.loads(line.partition("@conveyor-record result ")[2])
    if stamps is None or record is None:
        raise RuntimeError("the phases run wrote no @bench-phases line or no record:\n"
                           + run.stderr.decode(errors="replace")[-1500:])
    timings = record["timings"]
    fetch, model, upload = (timings.get(k, 0.0) for k in ("download", "handler", "upload"))
    store = stamps.get("store", 0.0)
    process, run_event = stamps.get("process", 0.0), stamps.get("run_event", 0.0)
    stamped = stamps["end"] - stamps["t1"]
    phases = {
        "start": run.wall - stamped,
        "seal": stamps["t2"] - stamps["t1"],
        "cli": stamps["cli"],
        "config": stamps["config_end"] - stamps["t2"] - stamps["cli"],
        "setup": process - run_event,
        "store": store,
        "fetch": fetch,
        "model": model,
        "upload": upload,
        "record": run_event - store - fetch - model - upload,
    }
    phases["other"] = run.wall - sum(phases.values())
    return phases


def import_times(stderr: bytes) -> dict[str, Any]:
    """`-X importtime` of both processes: per process, the top-level imports' cumulative times (s),
    site's own (the interpreter's start) told apart from what the code imported."""
    processes: list[dict[str, float]] = []
    for line in stderr.decode(errors="replace").splitlines():
        if not line.startswith("import time:"):
            continue
        fields = line[len("import time:"):].split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            processes.append({})  # the header line: a new process
            continue
        name = fields[2]
        if name.startswith(" ") and not name.startswith("  "):  # depth 0: one space of indent
            top = name.strip()
            processes[-1][top] = processes[-1].get(top, 0.0) + int(fields[1]) / 1e6
    out = []
    for found in processes:
        names = list(found)
        first_ours = next((i for i, n in enumerate(names) if n.startswith("conveyor")), len(names))
        interpreter = sum(found[n] for n in names[:first_ours])
        code = {n: found[n] for n in names[first_ours:]}
        out.append({
            "interpreter": round(interpreter, 5),
            "conveyor": round(sum(v for n, v in code.items() if n.startswith("conveyor")), 5),
            "other": round(sum(v for n, v in code.items() if not n.startswith("conveyor")), 5),
            "top": {n: round(v, 5) for n, v in sorted(code.items(), key=lambda kv: -kv[1])[:8]},
        })
    return {"processes": out}


def event_breakdown(bench: Bench, peer: Peer, event: bytes, rounds: int, log=print) -> dict[str, Any]:
    """One cold event phase by phase (medians over `rounds` runs of PHASES), its imports under
    `-X importtime` (one run) and which watched modules it imported (the import budget)."""
    argv = [sys.executable, "-c", PHASES, *peer.argv[1:]]
    samples = {name: Samples("s") for name in PHASE_NAMES}
    walls = Samples("s")
    run_once(bench, peer, event, argv=argv)  # warm-up
    for _ in range(rounds):
        run = run_once(bench, peer, event, argv=argv)
        walls.add(run.wall)
        for name, value in phases_of(run).items():
            samples[name].add(value)
    timed = run_once(bench, peer, event, argv=[sys.executable, "-X", "importtime", *argv[1:]])
    imports = import_times(timed.stderr)
    probe = ("import atexit, sys\natexit.register(lambda: sys.stderr.write('@bench-modules ' + "
             "' '.join(sorted(sys.modules)) + '\\n'))\n")
    budget_run = run_once(bench, peer, event, argv=[sys.executable, "-c", probe + PHASES, *peer.argv[1:]])
    modules: set[str] = set()
    for line in budget_run.stderr.decode(errors="replace").splitlines():
        if line.startswith("@bench-modules "):
            modules = set(line.split()[1:])
    result = {
        "rounds": rounds,
        "wall": walls.summary(),
        "phases": {name: samples[name].summary() for name in PHASE_NAMES},
        "imports": imports,
        "watched_imported": sorted(m for m in WATCHED if m in modules),
        "budget": list(BUDGET),
        "budget_broken": sorted(m for m in BUDGET if m in modules),
    }
    log("  cold  event phases: " + ", ".join(f"{n} {samples[n].median * 1000:.1f} ms" for n in PHASE_NAMES))
    log("  cold  imports (-X importtime): " + "; ".join(
        f"process {i + 1}: interpreter {p['interpreter'] * 1000:.1f} ms, conveyor {p['conveyor'] * 1000:.1f} ms, "
        f"other {p['other'] * 1000:.1f} ms" for i, p in enumerate(imports["processes"])))
    log(f"  cold  watched modules imported: {', '.join(result['watched_imported']) or 'none'}; "
        f"budget broken by: {', '.join(result['budget_broken']) or 'nothing'}")
    return result


def run_once(bench: Bench, peer: Peer, event: bytes, argv: list[str] | None = None) -> Any:
    out_key = f"{peer.out_prefix}/{Path(KEY).name}"
    bench.delete(out_key)
    run = run_process(argv or peer.argv, env=peer.env, stdin=event, timeout=120)
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
    try:
        result["event"] = event_breakdown(bench, by_name["conveyor"], event, max(3, rounds // 2), log=log)
    except RuntimeError as exc:
        result["event_error"] = str(exc)
        log(f"  cold  event breakdown failed: {exc}")
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
