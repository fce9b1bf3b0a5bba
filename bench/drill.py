"""The fault drill (`make drill`): many events through `conveyor local`, with faults injected at random.

    python -m bench.drill                      # 1,000 events (about 10 minutes on 2 cores)
    python -m bench.drill --events 40          # the short form CI runs
    python -m bench.drill --faults model,worker-kill,s3-pause --seed 7 --keep
    python -m bench.drill --faults all         # every kind below, those still failing included

What it does
  1. Writes N files into a fresh DIR/inbox, each of a kind drawn at random (seeded):
        normal   4 KiB, the model copies it and writes its sha256           -> must SUCCEED
        slow     the model sleeps 1.5 s first (a window for the faults)     -> must SUCCEED
        big      8 MiB (transfers long enough to be hit mid-way)            -> must SUCCEED
        crash    the model exits 3                                          -> must FAIL (model)
        partial  the model writes one output, then exits 4                  -> must FAIL, nothing published
        hang     the model sleeps an hour; the deadline (--timeout) kills it -> must FAIL (timeout)
        overlap  2 MiB, in pairs: both write the same extra output <pair>.shared -> must SUCCEED
        escape   the model leaves a sleeper in a session of its own, without the loop's job mark
                 (setsid, env -u CONVEYOR_LOCAL_JOB), then succeeds                    -> must SUCCEED
     ("model" in --faults enables crash, partial and hang; "overlap" and "escape" their kinds.)
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
        term-upload  SIGTERM to a `conveyor run` (the loop's job or a duplicate) while it uploads (an
        kill-upload  output file open in /proc/<pid>/fd); SIGKILL likewise
        duplicate    a second delivery of an event already delivered (a big or overlap input when
                     there is one): the drill runs `conveyor run` itself with the loop's definition
                     (without its status location), one at a time; half the time it is sent
                     SIGTERM while it uploads (a duplicate that fails must not withdraw what the
                     other delivery published)
  4. When the loop exits (or after --deadline seconds, when it is stopped), checks:
        - every input has exactly one record (DIR/status/<key>.json) and appears once in the summary;
        - model-fault kinds FAILED with the right kind of error; the other kinds SUCCEEDED, or
          FAILED only when an infrastructure fault hit them;
        - SUCCEEDED: its outputs are exactly <name> and <name>.sha256, with the right bytes;
          FAILED: nothing of it in the output bucket (the drill reopens the loop's S3 data
          after the run to list it) and no results folder;
        - no output in the bucket that no SUCCEEDED record claims (nothing partial, nothing doubled);
        - no process left with the marker (orphans are listed, then killed), and no escaped
          sleeper of an escape input alive once the run is over (no process outlives its record);
        - every output a SUCCEEDED record names (the loop's and the duplicates') is in the bucket
          at the end: no SUCCEEDED output was ever deleted;
        - a duplicate that ended by itself (not SIGKILL) left nothing in its scratch folder, and
          a later duplicate removed what a killed one left (no scratch left by a finished run).
     and prints the counts: faults injected by kind, outcomes by file kind, violations.
Exit status 0 only when the loop finished and nothing was violated; the report goes to stdout
and to DIR/drill-report.json (DIR is removed afterwards unless --keep or something failed).

--faults: DEFAULT_FAULTS when not given (what CI runs): every kind since the runtime fixes of
issue 14 landed (a failed delivery never withdraws what another published; overlapping keys; outputs
of a job killed mid-upload withdrawn and its event delivered again; setsid escapees stopped). `all`
is the same list; name kinds to run fewer.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import re
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

EVENT_LINE = re.compile(r"event for input/(\S+) \(\d+ bytes\): job (\S+)")

VENV_BIN = Path(sys.executable).parent
MARKER = "CONVEYOR_DRILL"
KINDS = {  # kind: (weight, size, expected status or None for "it depends")
    "normal": (0.80, 4096, "SUCCEEDED"),
    "slow": (0.06, 4096, "SUCCEEDED"),
    "big": (0.04, 8 * 1024 * 1024, "SUCCEEDED"),
    "crash": (0.04, 4096, "FAILED"),
    "partial": (0.03, 4096, "FAILED"),
    "hang": (0.03, 4096, "FAILED"),
    "overlap": (0.06, 2 * 1024 * 1024, "SUCCEEDED"),
    "escape": (0.03, 4096, "SUCCEEDED"),
}
MODEL_FAULTS = ("crash", "partial", "hang")
KIND_FAULTS = {"model": MODEL_FAULTS, "overlap": ("overlap",), "escape": ("escape",)}  # fault -> the kinds it adds
INFRA_FAULTS = ("worker-kill", "s3-pause", "s3-restart", "term-upload", "kill-upload", "duplicate")
ALL_FAULTS = ("model", "overlap", "escape", *INFRA_FAULTS)
DEFAULT_FAULTS = ALL_FAULTS
JOB_MARK = "CONVEYOR_LOCAL_JOB"  # conveyor.local.executors: names the loop's job in its processes' environment
DUPLICATE_MARK = "CONVEYOR_DRILL_DUPLICATE"  # names the input a duplicate delivery processes

SCRIPT = r"""#!/bin/sh
# The drill's model: what it does depends on the input's name (d0042-<kind>.bin).
set -eu
name=$(basename "$INPUT_FILE_PATH")
case "$name" in
  *-crash.*)   echo "drill: crashing on purpose" >&2; exit 3 ;;
  *-partial.*) cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/$name"; echo "drill: dying after one output" >&2; exit 4 ;;
  *-hang.*)    sleep 3600 ;;
  *-slow.*)    sleep 1.5 ;;
  *-escape.*)  # a sleeper in a session of its own, without the loop's job mark: only Conveyor can stop it
               env -u CONVEYOR_LOCAL_JOB setsid sh -c 'echo $$ > "$0"; exec sleep 300' "$DRILL_PIDS/$name.pid" \
                   </dev/null >/dev/null 2>&1 &
               sleep 0.2 ;;
  *-overlap-*) pair=${name#*-overlap-}; pair=${pair%.bin}; printf '%s\n' "$pair" > "$TMP_OUTPUT_DIR/$pair.shared" ;;
esac
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/$name"
sha256sum "$INPUT_FILE_PATH" | cut -d ' ' -f 1 > "$TMP_OUTPUT_DIR/$name.sha256"
"""


def expected_outputs(name: str, kind: str) -> list[str]:
    """What a SUCCEEDED record of this input publishes."""
    outputs = [name, f"{name}.sha256"]
    if kind == "overlap":
        outputs.append(name.split("-overlap-", 1)[1].removesuffix(".bin") + ".shared")
    return sorted(outputs)


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


def uploading(pid: int) -> bool:
    """Has the process an output file open (a `conveyor run` reading it to upload it)?"""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "/conveyor-" in target and "/output/" in target:
            return True
    return False


def _is_weed(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "weed" and "server" in argv


def _job_key(env: dict[bytes, bytes], keys_by_job: dict[str, str] | None = None) -> str | None:
    """The input key a `conveyor run` job is processing: a duplicate's mark, else the loop's job mark
    looked up in the loop's log, else its EVENT variable (which Conveyor now keeps out of its
    environment block: conveyor.sealing)."""
    if DUPLICATE_MARK.encode() in env:
        return env[DUPLICATE_MARK.encode()].decode(errors="replace")
    job = env.get(JOB_MARK.encode(), b"").decode(errors="replace")
    if job and keys_by_job is not None and job in keys_by_job:
        return keys_by_job[job]
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

    def __init__(self, marker: str, faults: list[str], rng: random.Random, log, loop_log: Path,
                 duplicates: Duplicates | None = None) -> None:
        super().__init__(name="drill-faults", daemon=True)
        self.marker, self.faults, self.rng, self.log = marker, faults, rng, log
        self.loop_log = loop_log  # the loop's conveyor.log: it says when a restarted S3 server is back
        self.duplicates = duplicates
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

    def keys_by_job(self) -> dict[str, str]:
        """The loop's job id -> the input key it was started for (its log's 'event for' lines)."""
        try:
            text = self.loop_log.read_text(errors="replace")
        except OSError:
            return {}
        return {job: key for key, job in EVENT_LINE.findall(text)}

    def _key(self, env: dict[bytes, bytes]) -> str | None:
        return _job_key(env, self.keys_by_job())

    def _term_upload(self) -> None:
        self._signal_upload("term-upload", signal.SIGTERM)

    def _kill_upload(self) -> None:
        self._signal_upload("kill-upload", signal.SIGKILL)

    def _signal_upload(self, fault: str, sig: signal.Signals) -> None:
        """`sig` to a `conveyor run` caught uploading (watched for up to 5 s)."""
        until = time.monotonic() + 5.0
        while time.monotonic() < until and not self.stop_event.is_set():
            for pid, job in self._jobs().items():
                if not uploading(pid):
                    continue
                key = self._key(job["env"])
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
                if key:
                    self.hit_keys[key].append(fault)
                self.counts[fault] += 1
                self.events.append({"fault": fault, "pid": pid, "key": key})
                self.log(f"drill: {fault} pid {pid} ({key})")
                return
            time.sleep(0.01)
        self.missed[fault] += 1

    def _duplicate(self) -> None:
        if self.duplicates is None or self.duplicates.busy():
            self.missed["duplicate"] += 1
            return
        delivered = sorted(set(self.keys_by_job().values()))
        if not delivered:
            self.missed["duplicate"] += 1
            return
        roomy = [k for k in delivered if "-big." in k or "-overlap-" in k]
        key = self.rng.choice(roomy if roomy and self.rng.random() < 0.8 else delivered)
        stop_at_upload = self.rng.random() < 0.5
        self.counts["duplicate"] += 1
        self.events.append({"fault": "duplicate", "key": key, "sigterm_at_upload": stop_at_upload})
        self.log(f"drill: duplicate delivery of {key}{' (SIGTERM at upload)' if stop_at_upload else ''}")
        self.duplicates.start(key, stop_at_upload)

    def _note(self, fault: str, **facts: Any) -> None:
        jobs = self._jobs()
        keys = sorted(k for k in (self._key(p["env"]) for p in jobs.values()) if k)
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
        busy = [pid for pid, p in jobs.items() if (self._key(p["env"]) or "").endswith(("-hang.bin", "-slow.bin"))]
        pid = self.rng.choice(sorted(busy) if busy and self.rng.random() < 0.5 else sorted(jobs))
        key = self._key(jobs[pid]["env"])
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
                key = self._key(job["env"])
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


class Duplicates:
    """Second deliveries of events the loop already got: `conveyor run` started by the drill, one
    at a time, with the loop's definition (its status location removed, so the loop's own records
    stay its own) against the loop's S3 server, in a scratch folder of their own."""

    def __init__(self, config: Path, scratch: Path, env: dict[str, str], sizes: dict[str, int], log) -> None:
        self.config, self.scratch, self.env, self.sizes, self.log = config, scratch, env, sizes, log
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.runs: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self._thread: threading.Thread | None = None

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, key: str, stop_at_upload: bool) -> None:
        self._thread = threading.Thread(target=self._run, args=(key, stop_at_upload), name="drill-duplicate",
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, key: str, stop_at_upload: bool) -> None:
        from conveyor.records import results_in

        event = storage_event("input", key, self.sizes.get(key, 0))
        env = dict(self.env, CONVEYOR_SCRATCH=str(self.scratch), **{DUPLICATE_MARK: key})
        argv = [str(VENV_BIN / "conveyor"), "run", "--config", str(self.config), "--platform", "oscar"]
        before = set(os.listdir(self.scratch))
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, start_new_session=True)
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(json.dumps(event).encode())
        proc.stdin.close()
        stderr = bytearray()
        reader = threading.Thread(target=lambda: stderr.extend(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        signalled = None
        while proc.poll() is None:
            if stop_at_upload and signalled is None and uploading(proc.pid):
                proc.send_signal(signal.SIGTERM)
                signalled = "SIGTERM"
            time.sleep(0.01)
        reader.join(timeout=30)
        records = results_in(bytes(stderr))
        killed = proc.returncode == -signal.SIGKILL
        left = sorted(set(os.listdir(self.scratch)))
        run = {"key": key, "exit_code": proc.returncode, "signalled": signalled, "killed": killed,
               "records": [{"status": r.get("status"), "outputs": r.get("outputs") or [],
                            "error": (r.get("error") or {}).get("kind")} for r in records],
               "scratch_left": left}
        self.runs.append(run)
        if not killed:
            own = sorted(set(left) - before)
            if own:
                self.violations.append(f"duplicate of {key} (exit {proc.returncode}) left its scratch: {own}")
            elif left:
                self.violations.append(f"scratch of a killed run still there after the duplicate of {key}: {left}")
        self.log(f"drill: duplicate of {key} exited {proc.returncode}: "
                 f"{', '.join(r['status'] or '?' for r in run['records']) or 'no record'}")


def storage_event(bucket: str, key: str, size: int) -> dict[str, Any]:
    """A MinIO storage event for bucket/key, as the loop sends its jobs."""
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [{
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size}},
        }],
    }


# -- the run ---------------------------------------------------------------------------------------
def make_inputs(inbox: Path, events: int, kinds: dict[str, tuple[float, int, str]], rng: random.Random) -> dict:
    inbox.mkdir(parents=True, exist_ok=True)
    names, weights = list(kinds), [w for w, _, _ in kinds.values()]
    inputs = {}
    overlaps = 0
    for i in range(events):
        kind = rng.choices(names, weights)[0]
        name = f"d{i:05d}-{kind}.bin"
        if kind == "overlap":  # consecutive overlap inputs pair up on one shared output
            name = f"d{i:05d}-overlap-p{overlaps // 2:04d}.bin"
            overlaps += 1
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
          bucket: dict[str, bytes] | None, duplicates: list[dict[str, Any]] = ()) -> tuple[dict, list[str]]:
    violations: list[str] = []
    # What duplicate deliveries published: their SUCCEEDED outputs are as much "published" as the loop's.
    dup_claims: dict[str, set[str]] = collections.defaultdict(set)
    for run in duplicates:
        for record in run["records"]:
            if record["status"] == "SUCCEEDED":
                dup_claims[run["key"]].update(o.split("/", 1)[1] for o in record["outputs"])
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
            if outputs != expected_outputs(name, kind):
                violations.append(f"{name}: SUCCEEDED with outputs {outputs}")
            if bucket is not None:  # no SUCCEEDED output is ever deleted (by a failed delivery, a neighbour)
                gone = sorted(o for o in outputs if o not in bucket)
                if gone:
                    violations.append(f"{name}: SUCCEEDED, but its outputs {gone} are gone from the bucket")
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
            if bucket is not None and not dup_claims.get(name):  # a duplicate may have published them
                stray = sorted(k for k in bucket if k in (name, f"{name}.sha256"))
                if stray:
                    violations.append(f"{name}: FAILED but the output bucket holds {stray}")
        else:
            violations.append(f"{name}: status {status!r}")
    if bucket is not None:
        for key, outputs in sorted(dup_claims.items()):
            gone = sorted(o for o in outputs if o not in bucket)
            if gone:
                violations.append(f"{key}: a duplicate delivery SUCCEEDED, but its outputs {gone} are gone")
            claimed.update(outputs)
    if bucket is not None:  # anything no SUCCEEDED record claims: partial, doubled or foreign outputs
        reported = {v.split(": ", 1)[0] for v in violations}
        for key in sorted(set(bucket) - claimed):
            owner = key[: -len(".sha256")] if key.endswith(".sha256") else key
            if key.endswith(".shared"):  # a pair's shared output: owned by both overlap inputs of the pair
                pair = key.removesuffix(".shared")
                if any(n.endswith(f"-overlap-{pair}.bin") and n in reported for n in inputs):
                    continue
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
    added = {kind for fault, kinds_of in KIND_FAULTS.items() if fault in args.faults for kind in kinds_of}
    optional = {kind for kinds_of in KIND_FAULTS.values() for kind in kinds_of}
    kinds = {k: v for k, v in KINDS.items() if k not in optional or k in added}
    inputs = make_inputs(root / "inbox", args.events, kinds, rng)
    pids = root / "escapees"  # escape inputs' sleepers write their pids here
    pids.mkdir()
    script = root / "drill-model.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    definition = {
        "name": "drill",
        "log_level": "INFO",
        "init_script": str(script),
        "environment": {"variables": {MARKER: marker, "DRILL_PIDS": str(pids)}},
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
    duplicates = None
    if "duplicate" in infra:
        sizes = {name: facts["size"] for name, facts in inputs.items()}
        duplicates = Duplicates(root / "duplicate.yaml", root / "duplicate-scratch", env, sizes, log)
    injector = Injector(marker, infra, rng, log, loop_root / "logs" / "conveyor.log", duplicates)
    mix = collections.Counter(i["kind"] for i in inputs.values())
    log(f"drill: {args.events} events ({', '.join(f'{k} {n}' for k, n in mix.items())}); "
        f"faults {', '.join(args.faults) or 'none'}; platform {args.platform}, {args.workers} workers; dir {root}")
    started = time.monotonic()
    with open(root / "loop.out", "wb") as out, open(root / "loop.err", "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
        if duplicates is not None:  # the loop's own definition (its S3 server), without its status location
            loop_definition = loop_root / ".conveyor" / "function_config.yaml"
            for _ in range(600):
                if loop_definition.is_file() and proc.poll() is None:
                    break
                time.sleep(0.1)
            try:
                doc = yaml.safe_load(loop_definition.read_text())
                doc.get("conveyor", {}).pop("status", None)
                duplicates.config.write_text(yaml.safe_dump(doc))
                duplicates.config.chmod(0o600)
            except (OSError, ValueError, AttributeError) as exc:
                log(f"drill: no duplicate deliveries: cannot read the loop's definition ({exc})")
                injector.duplicates = duplicates = None
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
        if duplicates is not None:
            duplicates.join(timeout=120)
    seconds = time.monotonic() - started
    # An escape input's sleeper still alive: it outlived its record (its job has long ended).
    escaped = []
    for pid_file in sorted(pids.glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            continue
        if MARKER.encode() + b"=" + marker.encode() in _read(f"/proc/{pid}/environ").split(b"\0"):
            escaped.append((pid_file.name.removesuffix(".pid"), pid))
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
    dup_runs = duplicates.runs if duplicates is not None else []
    outcomes, violations = check(loop_root, inputs, summary, injector.hit_keys, bucket, dup_runs)
    if duplicates is not None:
        violations += duplicates.violations
    for name, pid in escaped:
        violations.append(f"{name}: its model's escaped process {pid} outlived the record")
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
        "duplicates": [{k: v for k, v in run.items() if k != "scratch_left"} for run in dup_runs],
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
    if report["duplicates"]:
        ends = collections.Counter(
            f"{'SIGTERM at upload, ' if run['signalled'] else ''}"
            f"{'/'.join(r['status'] or '?' for r in run['records']) or 'no record'}" for run in report["duplicates"])
        lines.append("duplicate deliveries: " + ", ".join(f"{k} {v}" for k, v in sorted(ends.items())))
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
    parser.add_argument("--faults", default=",".join(DEFAULT_FAULTS),
                        help=f"comma-separated, from {', '.join(ALL_FAULTS)}, or 'all' "
                             f"(default: {','.join(DEFAULT_FAULTS)})")
    parser.add_argument("--timeout", type=float, default=3.0, help="the model's deadline (hang files hit it)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="stop the loop after this many seconds (default: 120 + 2 s per event)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    parser.add_argument("--dir", default=None, help="a fresh folder for the run (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the folder even when all is well")
    args = parser.parse_args(argv)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if "all" in args.faults:
        args.faults = list(ALL_FAULTS)
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
