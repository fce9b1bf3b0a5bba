"""Figure 6: a folder through one `conveyor sweep` shard vs a fresh `conveyor run` per file.

The same N inputs (default 200) and the same model, two ways:
    sweep   one `conveyor sweep` process: lists the folder, loads the model once, downloads ahead,
            uploads behind; timed from fork to exit, divided by N for the per-input figure
    run     N fresh `conveyor run` processes, one per file (OSCAR's way: a MinIO event on stdin),
            each loading the model again; every one timed, the median is the per-input figure
and, from the sweep's own result records, the model's warm per-file time (the record's `handler`
timing: the model kept loaded, handle() per file). Goal: the sweep's per-input time within 1.2x of
that warm per-file cost (a sweep costs the model's time and little else).

Models: DEEPaaS with the demo plugin (tests/plugins/conveyor-demo-model) in warm mode, on a
160 KiB JPEG; YOLOv3-tiny through the darknet handler's OpenCV backend on dog.jpg, when Debian's
darknet data and the weights are there (else that row says why not). Every output and record is
checked after the timing: a sweep whose records are not all SUCCEEDED does not count.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.measure import Samples, ratio, run_process
from bench.models import DEMO_MODEL, DOG, _darknet_missing, _deepaas_missing
from bench.server import BUCKET, Bench, b64_yaml
from conveyor.records import results_in

VENV_BIN = Path(sys.executable).parent
CONVEYOR = [sys.executable, "-m", "conveyor"]
TARGET = 1.2  # sweep per input / warm per file


def minio_event(bucket: str, key: str, size: int) -> dict[str, Any]:
    """What OSCAR's MinIO sends for the upload of bucket/key (contract section 2)."""
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size}},
        }],
    }


def _model(name: str, handler: dict[str, Any], sample: Path, bench: Bench, count: int, log) -> dict[str, Any]:
    work = bench.dir(f"sweep/{name}")
    base = f"sweep-{name}"
    data = sample.read_bytes()
    keys = [f"{base}/in/{i:04d}{sample.suffix}" for i in range(count)]
    for key in keys:
        bench.client.put_object(Bucket=BUCKET, Key=key, Body=data)
    env = bench.child_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}")

    def definition(kind: str) -> str:
        d = bench.definition(f"{base}/out-{kind}", conveyor={
            "handler": handler, "timeout": 300,
            "status": {"storage_provider": "minio.default", "path": f"{BUCKET}/{base}/status-{kind}"},
        })
        d["input"] = [{"storage_provider": "minio.default", "path": f"{BUCKET}/{base}/in"}]
        return b64_yaml(d)

    log(f"  sweep    {name}: {count} inputs through one `conveyor sweep`")
    swept = run_process([*CONVEYOR, "sweep", "--platform", "oscar"], cwd=str(work), timeout=3600,
                        env={**env, "FUNCTION_CONFIG": definition("sweep")})
    if not swept.ok:
        raise RuntimeError(f"sweep {name}: {swept.describe_failure()}")
    records = results_in(swept.stderr)
    if len(records) != count or any(r.get("status") != "SUCCEEDED" for r in records):
        raise RuntimeError(f"sweep {name}: {sum(r.get('status') == 'SUCCEEDED' for r in records)} of {count} "
                           "records SUCCEEDED")
    warm = Samples("s")
    for record in records:
        warm.add(record["timings"]["handler"])
    log(f"  sweep    {name}: {swept.wall:.1f} s in all, {swept.wall / count * 1000:.1f} ms per input")

    runs = Samples("s")
    run_definition = definition("run")
    for i, key in enumerate(keys):
        event = minio_event(BUCKET, key, len(data))
        run = run_process([*CONVEYOR, "run", "--platform", "oscar"], stdin=json.dumps(event).encode(),
                          cwd=str(work), timeout=600, env={**env, "FUNCTION_CONFIG": run_definition})
        if not run.ok:
            raise RuntimeError(f"run {name} {key}: {run.describe_failure()}")
        runs.add(run.wall)
        if i % 20 == 0 or i == count - 1:
            log(f"  run      {name}: {i + 1}/{count}  {run.wall * 1000:8.1f} ms")
    if not _listed(bench, f"{base}/out-run/"):
        raise RuntimeError(f"run {name}: no output was written")
    per_input = swept.wall / count
    return {
        "inputs": count,
        "input_bytes": len(data),
        "sweep": {"total": round(swept.wall, 3), "per_input": round(per_input, 4), "cpu": round(swept.cpu, 3),
                  "peak_rss_mib": round(swept.maxrss_mib, 1)},
        "run": {"total": round(sum(runs.values), 3), "per_input": runs.summary()},
        "warm_per_file": warm.summary(),
        "sweep_over_warm": ratio(per_input, warm.median),
        "run_over_sweep": ratio(runs.median, per_input),
    }


def _listed(bench: Bench, prefix: str) -> list[str]:
    pages = bench.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def measure(bench: Bench, count: int, log=print) -> dict[str, Any]:
    results: dict[str, Any] = {}
    missing = _deepaas_missing()
    if missing:
        results["deepaas"] = {"skipped": missing}
    else:
        sample = bench.dir("sweep") / "dog.jpg"
        if DOG.is_file():
            shutil.copyfile(DOG, sample)
        else:  # any file will do: the demo model fingerprints it
            sample.write_bytes(os.urandom(160 * 1024))
        results["deepaas"] = _model("deepaas", {"name": "deepaas", "mode": "warm", "model": DEMO_MODEL},
                                    sample, bench, count, log)
    missing, weights = _darknet_missing()
    if missing:
        results["darknet"] = {"skipped": missing}
    else:
        results["darknet"] = _model("darknet", {"name": "darknet", "backend": "opencv", "weights": str(weights)},
                                    DOG, bench, count, log)
    return {"inputs": count, "target": TARGET, "results": results}
