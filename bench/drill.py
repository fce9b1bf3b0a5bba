"""The fault drill (`make drill`): many events through `conveyor local`, with faults injected at random.

    python -m bench.drill                      # 1,000 events (about 10 minutes on 2 cores)
    python -m bench.drill --events 40          # the short form CI runs
    python -m bench.drill --faults model,worker-kill,s3-pause --seed 7 --keep

What it does
  1. Writes N files into a fresh DIR/inbox, each of a kind drawn at random (seeded):
        normal   4 KiB, the model copies it and writes its sha256           -> must SUCCEED
        slow     the model sleeps 1.5 s first (a window for the faults)     -> must SUCCEED
        big      8 MiB (transfers long enough to be hit mid-way)            -> must SUCCEED
        crash    the model exits 3                                          -> must FAIL (model)
        partial  the model writes one output, then exits 4                  -> must FAIL, nothing published
        hang     the model sleeps an hour; the deadline (--timeout) kills it -> must FAIL (timeout)
     ("model" in --faults enables the last three kinds.)
  2. Runs `conveyor local --dir DIR --once --platform oscar --workers 2 --config drill.yaml --json`
     with a marker variable (CONVEYOR_DRILL=<id>) in its environment, which every process it
     starts inherits (the definition also gives it to the model).
  3. Meanwhile injects, every 2-6 s at random, one of the infrastructure faults enabled:
        worker-kill  SIGKILL to a running `conveyor run` job (found by the marker in /proc; half the
                     time one running a slow or hung model, if any); the loop may redeliver the
                     event or record it FAILED, never lose or double it, nor leave the model running
        s3-pause     SIGSTOP to the loop's S3 server (weed) for 1-3 s, then SIGCONT: transfers stall
        s3-restart   SIGTERM to the loop's S3 server; `conveyor local` is expected to restart it
                     (same ports and data) and carry on
  4. When the loop exits (or after --deadline seconds, when it is stopped), checks:
        - every input has exactly one record (DIR/status/<key>.json) and appears once in the summary;
        - model-fault kinds FAILED with the right kind of error; the other kinds SUCCEEDED, or
          FAILED only when an infrastructure fault hit them;
        - SUCCEEDED: its outputs are exactly <name> and <name>.sha256, with the right bytes;
          FAILED: nothing of it in the output bucket (the drill reopens the loop's S3 data
          after the run to list it) and no results folder;
        - no output in the bucket that no SUCCEEDED record claims (nothing partial, nothing doubled);
        - no process left with the marker (orphans are listed, then killed).
     and prints the counts: faults injected by kind, outcomes by file kind, violations.
Exit status 0 only when the loop finished and nothing was violated; the report goes to stdout
and to DIR/drill-report.json (DIR is removed afterwards unless --keep or something failed).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

VENV_BIN = Path(sys.executable).parent
MARKER = "CONVEYOR_DRILL"
KINDS = {  # kind: (weight, size, expected status or None for "it depends")
    "normal": (0.80, 4096, "SUCCEEDED"),
    "slow": (0.06, 4096, "SUCCEEDED"),
    "big": (0.04, 8 * 1024 * 1024, "SUCCEEDED"),
    "crash": (0.04, 4096, "FAILED"),
    "partial": (0.03, 4096, "FAILED"),
    "hang": (0.03, 4096, "FAILED"),
}
MODEL_FAULTS = ("crash", "partial", "hang")
INFRA_FAULTS = ("worker-kill", "s3-pause", "s3-restart")
ALL_FAULTS = ("model", *INFRA_FAULTS)

SCRIPT = r"""#!/bin/sh
# The drill's model: what it does depends on the input's name (d0042-<kind>.bin).
set -eu
name=$(basename "$INPUT_FILE_PATH")
case "$name" in
  *-crash.*)   echo "drill: crashing on purpose" >&2; exit 3 ;;
  *-partial.*) cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/$name"; echo "drill: dying after one output" >&2; exit 4 ;;
  *-hang.*)    sleep 3600 ;;
  *-slow.*)    sleep 1.5 ;;
esac
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/$name"
sha256sum "$INPUT_FILE_PATH" | cut -d ' ' -f 1 > "$TMP_OUTPUT_DIR/$name.sha256"
"""


# -- /proc ---------------------------------------------------------------------------------------
def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def marked_processes(marker: str) -> dict[int, dict[str, Any]]:
    """Every process whose environment holds MARKER=marker: pid -> {argv, env}."""
    needle = f"{MARKER}={marker}".encode()
    found = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        environ = _read(f"/proc/{entry}/environ")
        if needle not in environ.split(b"\0"):
            continue
        argv = [a.decode(errors="replace") for a in _read(f"/proc/{entry}/cmdline").split(b"\0") if a]
        stat = _read(f"/proc/{entry}/stat").decode(errors="replace")
        state = stat.rsplit(")", 1)[1].split()[0] if ")" in stat else "?"
        if state == "Z":
            continue  # already dead, waiting for its parent to reap it
        env = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
        found[int(entry)] = {"argv": argv, "env": env}
    return found


def _is_job(argv: list[str]) -> bool:
    return "run" in argv and "--platform" in argv and "local" not in argv


def _is_weed(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "weed" and "mini" in argv


def _job_key(env: dict[bytes, bytes]) -> str | None:
    """The input key a `conveyor run` job is processing, from its EVENT variable."""
    try:
        event = json.loads(env.get(b"EVENT", b"{}"))
        inner = event.get("event", event)
        if isinstance(inner, str):
            inner = json.loads(inner)
        return inner.get("Key", "").split("/", 1)[1]
    except (ValueError, AttributeError, IndexError, TypeError):
        return None


# -- the faults ------------------------------------------------------------------------------------
class Injector(threading.Thread):
    """Injects infrastructure faults into the running loop until stopped."""

    def __init__(self, marker: str, faults: list[str], rng: random.Random, log, loop_log: Path) -> None:
        super().__init__(name="drill-faults", daemon=True)
        self.marker, self.faults, self.rng, self.log = marker, faults, rng, log
        self.loop_log = loop_log  # the loop's conveyor.log: it says when a restarted S3 server is back
        self.stop_event = threading.Event()
        self.counts: collections.Counter[str] = collections.Counter()
        self.missed: collections.Counter[str] = collections.Counter()  # no target at that moment
        self.hit_keys: dict[str, list[str]] = collections.defaultdict(list)  # input key -> faults it saw
        self.in_flight_at: dict[str, list[str]] = {}  # fault id -> keys being processed then
        self.events: list[dict[str, Any]] = []

    def run(self) -> None:
        if not self.faults:
            return
        while not self.stop_event.wait(self.rng.uniform(2.0, 6.0)):
            fault = self.rng.choice(self.faults)
            try:
                getattr(self, "_" + fault.replace("-", "_"))()
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                self.events.append({"fault": fault, "error": f"{type(exc).__name__}: {exc}"})

    def _jobs(self) -> dict[int, dict[str, Any]]:
        return {pid: p for pid, p in marked_processes(self.marker).items() if _is_job(p["argv"])}

    def _note(self, fault: str, **facts: Any) -> None:
        jobs = self._jobs()
        keys = sorted(k for k in (_job_key(p["env"]) for p in jobs.values()) if k)
        for key in keys:
            self.hit_keys[key].append(fault)
        self.counts[fault] += 1
        self.events.append({"fault": fault, "t": round(time.monotonic(), 2), "in_flight": keys, **facts})
        self.log(f"drill: {fault} {facts or ''} (in flight: {', '.join(keys) or 'nothing'})")

    def _worker_kill(self) -> None:
        jobs = self._jobs()
        if not jobs:
            self.missed["worker-kill"] += 1
            return
        # Half the time, aim at a job whose model is slow or hung: a kill mid-model is the one
        # that can leave the model's own session behind as an orphan.
        busy = [pid for pid, p in jobs.items() if (_job_key(p["env"]) or "").endswith(("-hang.bin", "-slow.bin"))]
        pid = self.rng.choice(sorted(busy) if busy and self.rng.random() < 0.5 else sorted(jobs))
        key = _job_key(jobs[pid]["env"])
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.missed["worker-kill"] += 1
            return
        if key:
            self.hit_keys[key].append("worker-kill")
        self.counts["worker-kill"] += 1
        self.events.append({"fault": "worker-kill", "pid": pid, "key": key})
        self.log(f"drill: worker-kill pid {pid} ({key})")

    def _weed(self) -> int | None:
        pids = [pid for pid, p in marked_processes(self.marker).items() if _is_weed(p["argv"])]
        return pids[0] if pids else None

    def _s3_pause(self) -> None:
        pid = self._weed()
        if pid is None:
            self.missed["s3-pause"] += 1
            return
        seconds = round(self.rng.uniform(1.0, 3.0), 1)
        self._note("s3-pause", seconds=seconds)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def _s3_restart(self) -> None:
        pid = self._weed()
        if pid is None:
            self.missed["s3-restart"] += 1
            return
        restarts = self._restarts()
        self._note("s3-restart", pid=pid)
        os.kill(pid, signal.SIGTERM)
        # Jobs that start while the server is down meet the outage too: until the loop says its new
        # server serves (a restart on existing data can take several seconds), and a moment more,
        # every job seen is counted as hit.
        until = time.monotonic() + 60
        back_at: float | None = None
        while time.monotonic() < until and not self.stop_event.is_set():
            for job in self._jobs().values():
                key = _job_key(job["env"])
                if key and "s3-restart" not in self.hit_keys[key]:
                    self.hit_keys[key].append("s3-restart")
            if back_at is None and self._restarts() > restarts:
                back_at = time.monotonic()
            if back_at is not None and time.monotonic() - back_at > 2.0:
                break
            time.sleep(0.1)

    def _restarts(self) -> int:
        """How many S3 server restarts the loop has completed (its log's 'S3 server restarted' lines)."""
        try:
            return self.loop_log.read_text(errors="replace").count("S3 server restarted")
        except OSError:
            return 0


# -- the run ---------------------------------------------------------------------------------------
def make_inputs(inbox: Path, events: int, kinds: dict[str, tuple[float, int, str]], rng: random.Random) -> dict:
    inbox.mkdir(parents=True, exist_ok=True)
    names, weights = list(kinds), [w for w, _, _ in kinds.values()]
    inputs = {}
    for i in range(events):
        kind = rng.choices(names, weights)[0]
        name = f"d{i:05d}-{kind}.bin"
        data = rng.randbytes(kinds[kind][1])
        (inbox / name).write_bytes(data)
        inputs[name] = {"kind": kind, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return inputs


def list_outputs(root: Path) -> tuple[dict[str, bytes] | None, str | None]:
    """The loop's output bucket after the run: its S3 data reopened with its own keys."""
    from conveyor.local.s3server import SeaweedServer

    creds_path = root / ".conveyor" / "credentials.json"
    if not (root / ".s3" / "data").is_dir() or not creds_path.is_file():
        return None, f"no S3 data or credentials under {root} (layout of conveyor local changed?)"
    creds = json.loads(creds_path.read_text())
    server = SeaweedServer(
        root / ".s3", environ=os.environ, access_key=creds["access_key"], secret_key=creds["secret_key"]
    )
    try:
        server.start()
        client = server.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="output"):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(".sha256"):
                    found[obj["Key"]] = client.get_object(Bucket="output", Key=obj["Key"])["Body"].read()
                else:
                    found[obj["Key"]] = b""
        return found, None
    except Exception as exc:
        return None, f"could not list the output bucket: {type(exc).__name__}: {exc}"
    finally:
        server.stop()


def check(root: Path, inputs: dict[str, dict], summary: dict | None, hit: dict[str, list[str]],
          bucket: dict[str, bytes] | None) -> tuple[dict, list[str]]:
    violations: list[str] = []
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    listed = collections.Counter(f.get("key") for f in (summary or {}).get("files", []))
    claimed: set[str] = set()
    for name, facts in sorted(inputs.items()):
        kind = facts["kind"]
        record_path = root / "status" / f"{name}.json"
        if listed.get(name, 0) > 1:
            violations.append(f"{name}: listed {listed[name]} times in the summary")
        if not record_path.is_file():
            outcomes[kind]["no record"] += 1
            violations.append(f"{name} ({kind}): no result record")
            continue
        record = json.loads(record_path.read_text())
        status = record.get("status")
        faulted = bool(hit.get(name))
        outcomes[kind][f"{status}{' after an infra fault' if faulted else ''}"] += 1
        expected = KINDS[kind][2]
        outputs = sorted(o.split("/", 1)[1] for o in record.get("outputs") or [])
        results = root / "results" / name
        if status == "SUCCEEDED":
            if expected == "FAILED":
                violations.append(f"{name} ({kind}): SUCCEEDED, but its model fails")
            if outputs != [name, f"{name}.sha256"]:
                violations.append(f"{name}: SUCCEEDED with outputs {outputs}")
            claimed.update(outputs)
            copy, digest = results / name, results / f"{name}.sha256"
            if not copy.is_file() or hashlib.sha256(copy.read_bytes()).hexdigest() != facts["sha256"]:
                violations.append(f"{name}: SUCCEEDED but results/{name}/{name} is missing or wrong")
            if not digest.is_file() or digest.read_text().strip() != facts["sha256"]:
                violations.append(f"{name}: SUCCEEDED but its .sha256 output is missing or wrong")
            if bucket is not None and bucket.get(f"{name}.sha256", b"").strip() != facts["sha256"].encode():
                violations.append(f"{name}: SUCCEEDED but output/{name}.sha256 in the bucket is missing or wrong")
        elif status == "FAILED":
            if expected == "SUCCEEDED" and not faulted:
                message = (record.get("error") or {}).get("message", "")
                violations.append(f"{name} ({kind}): FAILED without any fault: {message[:200]}")
            error_kind = (record.get("error") or {}).get("kind")
            if kind == "hang" and not faulted and error_kind != "timeout":
                violations.append(f"{name}: a hung model should fail with kind timeout, got {error_kind}")
            if kind in ("crash", "partial") and not faulted and error_kind not in ("handler", "model"):
                violations.append(f"{name}: a crashing model should fail as a model error, got {error_kind}")
            if results.exists() and any(results.iterdir()):
                violations.append(f"{name}: FAILED but results/{name}/ holds files")
            if bucket is not None:
                stray = sorted(k for k in bucket if k in (name, f"{name}.sha256"))
                if stray:
                    violations.append(f"{name}: FAILED but the output bucket holds {stray}")
        else:
            violations.append(f"{name}: status {status!r}")
    if bucket is not None:  # anything no SUCCEEDED record claims: partial, doubled or foreign outputs
        reported = {v.split(": ", 1)[0] for v in violations}
        for key in sorted(set(bucket) - claimed):
            owner = key[: -len(".sha256")] if key.endswith(".sha256") else key
            if owner not in reported:
                violations.append(f"output/{key}: in the bucket, but no SUCCEEDED record claims it")
    return {kind: dict(counter) for kind, counter in sorted(outcomes.items())}, violations


def run(args: argparse.Namespace, log) -> dict[str, Any]:
    rng = random.Random(args.seed)
    marker = uuid.uuid4().hex[:12]
    root = Path(args.dir or tempfile.mkdtemp(prefix="conveyor-drill-")).resolve()
    if root.exists() and any(root.iterdir()) and args.dir:
        raise SystemExit(f"drill: {root} is not empty; give a fresh --dir")
    root.mkdir(parents=True, exist_ok=True)
    kinds = {k: v for k, v in KINDS.items() if "model" in args.faults or k not in MODEL_FAULTS}
    inputs = make_inputs(root / "inbox", args.events, kinds, rng)
    script = root / "drill-model.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    definition = {
        "name": "drill",
        "log_level": "INFO",
        "init_script": str(script),
        "environment": {"variables": {MARKER: marker}},
        "conveyor": {"timeout": args.timeout, "grace_period": 1},
    }
    config = root / "drill.yaml"
    config.write_text(yaml.safe_dump(definition))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONVEYOR_"))}
    env[MARKER] = marker
    argv = [str(VENV_BIN / "conveyor"), "local", "--dir", str(root / "loop"), "--once", "--no-samples", "--json",
            "--platform", args.platform, "--workers", str(args.workers), "--config", str(config),
            "--timeout", str(args.timeout)]
    loop_root = root / "loop"
    loop_root.mkdir()
    shutil.move(str(root / "inbox"), str(loop_root / "inbox"))
    infra = [f for f in args.faults if f in INFRA_FAULTS]
    injector = Injector(marker, infra, rng, log, loop_root / "logs" / "conveyor.log")
    mix = collections.Counter(i["kind"] for i in inputs.values())
    log(f"drill: {args.events} events ({', '.join(f'{k} {n}' for k, n in mix.items())}); "
        f"faults {', '.join(args.faults) or 'none'}; platform {args.platform}, {args.workers} workers; dir {root}")
    started = time.monotonic()
    with open(root / "loop.out", "wb") as out, open(root / "loop.err", "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
        injector.start()
        deadline = started + args.deadline
        stopped_by_drill = False
        while proc.poll() is None:
            if time.monotonic() > deadline:
                log(f"drill: the loop passed --deadline {args.deadline:.0f} s: SIGTERM")
                stopped_by_drill = True
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                break
            time.sleep(0.5)
        injector.stop_event.set()
        injector.join(timeout=10)
    seconds = time.monotonic() - started
    # Whatever still carries the marker a few seconds after the loop has gone is an orphan.
    orphans: dict[int, dict[str, Any]] = {}
    for _ in range(20):
        orphans = marked_processes(marker)
        if not orphans:
            break
        time.sleep(0.25)
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        summary = json.loads((root / "loop.out").read_text())
    except ValueError:
        summary = None
    bucket, bucket_note = list_outputs(loop_root)
    outcomes, violations = check(loop_root, inputs, summary, injector.hit_keys, bucket)
    if summary is None:
        violations.insert(0, "conveyor local printed no JSON summary")
    if stopped_by_drill:
        violations.insert(0, f"the loop did not finish within --deadline {args.deadline:.0f} s")
    for pid, p in orphans.items():
        violations.append(f"orphan process {pid} left running: {' '.join(p['argv'])[:160]}")
    err_tail = (root / "loop.err").read_text(errors="replace").strip().splitlines()[-6:]
    report = {
        "events": args.events,
        "seed": args.seed,
        "platform": args.platform,
        "workers": args.workers,
        "faults_enabled": args.faults,
        "seconds": round(seconds, 1),
        "loop_exit_code": proc.returncode,
        "loop_stderr_tail": err_tail,
        "faults_injected": dict(injector.counts),
        "faults_without_target": dict(injector.missed),
        "fault_errors": [e for e in injector.events if "error" in e],
        "inputs_hit_by_faults": len(injector.hit_keys),
        "outcomes": outcomes,
        "bucket_checked": bucket is not None,
        "bucket_note": bucket_note,
        "orphans": len(orphans),
        "violations": violations,
        "dir": str(root),
    }
    (root / "drill-report.json").write_text(json.dumps({**report, "fault_log": injector.events}, indent=2))
    if not violations and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
        report["dir"] = None
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"drill: {report['events']} events, platform {report['platform']}, {report['workers']} workers, "
        f"seed {report['seed']}, {report['seconds']:.0f} s; loop exit code {report['loop_exit_code']}",
        "faults injected: " + (", ".join(f"{k} {v}" for k, v in sorted(report["faults_injected"].items())) or "none")
        + (f" (no target at the time: {report['faults_without_target']})" if report["faults_without_target"] else ""),
        f"inputs in flight when an infrastructure fault struck: {report['inputs_hit_by_faults']}",
        "outcomes by kind:",
    ]
    for kind, counts in report["outcomes"].items():
        lines.append(f"  {kind:<8} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if report["bucket_note"]:
        lines.append(f"output bucket not checked: {report['bucket_note']}")
    lines.append(f"orphan processes: {report['orphans']}")
    if report["violations"]:
        lines.append(f"VIOLATIONS ({len(report['violations'])}):")
        lines += [f"  - {v}" for v in report["violations"][:40]]
        if len(report["violations"]) > 40:
            lines.append(f"  ... and {len(report['violations']) - 40} more (see drill-report.json)")
        lines.append("loop's last lines: " + " | ".join(report["loop_stderr_tail"]))
        lines.append(f"kept for inspection: {report['dir']}")
    else:
        lines.append("no violation: every input has exactly one SUCCEEDED output set or one FAILED record")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drill", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--platform", choices=("oscar", "batch", "lambda"), default="oscar")
    parser.add_argument("--faults", default=",".join(ALL_FAULTS),
                        help=f"comma-separated, from {', '.join(ALL_FAULTS)} (default: all)")
    parser.add_argument("--timeout", type=float, default=3.0, help="the model's deadline (hang files hit it)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="stop the loop after this many seconds (default: 120 + 2 s per event)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    parser.add_argument("--dir", default=None, help="a fresh folder for the run (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the folder even when all is well")
    args = parser.parse_args(argv)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(args.faults) - set(ALL_FAULTS))
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)} (known: {', '.join(ALL_FAULTS)})")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    if args.deadline is None:
        args.deadline = 120 + 2.0 * args.events

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from bench.throughput import local_missing

    missing = local_missing()
    if missing:
        print(f"drill: cannot run: {missing}")
        return 2
    report = run(args, log)
    print(render(report))
    return 0 if not report["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
