"""Figure 4: peak RSS of `conveyor run` as the object grows (1 MiB, 100 MiB, 1 GiB; `cp` script).

A streaming worker's memory must not depend on the object's size: the target is 1 GiB within
30 MiB of 1 MiB. Each size is fetched and stored through both of Conveyor's S3 clients, since
a deployment uses one or the other:
    minio   a `minio.<id>` provider (OSCAR's minio.default): conveyor.storage.minio.MinioStore, the minio SDK
    s3      an `s3.<id>` provider (SCAR on Lambda/Batch): conveyor.storage.s3.S3Store, boto3's transfer manager
Fresh process per run, peak RSS from wait4 (the largest process of the tree: Conveyor itself;
the cp child is small), sizes interleaved. The objects are random bytes, uploaded once.

Disk: the largest size needs about 4x its size free (the object and its output in the server,
the download and the copy in the scratch dir); sizes that do not fit are skipped with a note.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.measure import MiB, Samples, free_disk, interleave, run_process
from bench.server import BUCKET, CP_SCRIPT, Bench, b64, b64_yaml, s3_event
from tests.support.pipeline import minio_event

SIZES = {"1 MiB": MiB, "100 MiB": 100 * MiB, "1 GiB": 1024 * MiB}
PROVIDERS = ("minio", "s3")
TARGET_MIB = 30.0
VENV_BIN = Path(sys.executable).parent


def measure(bench: Bench, rounds: int, log=print, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    sizes = dict(sizes or SIZES)
    result: dict[str, Any] = {"rounds": rounds, "target_mib": TARGET_MIB, "skipped": {}, "rows": {}}
    for label, size in list(sizes.items()):
        need = 4 * size + 2 * 1024 * MiB
        if free_disk(bench.root) < need:
            result["skipped"][label] = f"needs {need / 2**30:.1f} GiB free under {bench.root}"
            del sizes[label]
    keys = {label: f"in/mem-{size}.bin" for label, size in sizes.items()}
    for label, size in sizes.items():
        log(f"  memory: uploading the {label} object")
        bench.put_random(keys[label], size)
    script = b64(CP_SCRIPT)
    samples = {(p, label): Samples("MiB") for p in PROVIDERS for label in sizes}
    walls = {(p, label): Samples("s") for p in PROVIDERS for label in sizes}
    cases = [f"{p}|{label}" for label in sizes for p in PROVIDERS]

    def run(case: str) -> Any:
        provider, label = case.split("|")
        size, key = sizes[label], keys[label]
        out_prefix = f"out-mem-{provider}"
        out_key = f"{out_prefix}/{Path(key).name}"
        event = (minio_event if provider == "minio" else s3_event)(BUCKET, key, size)
        env = bench.child_env(
            FUNCTION_CONFIG=b64_yaml(bench.definition(out_prefix, provider_type=provider)), SCRIPT=script
        )
        bench.delete(out_key)
        done = run_process([str(VENV_BIN / "conveyor"), "run", "--platform", "oscar"], env=env,
                           stdin=json.dumps(event).encode(), timeout=1800)
        if not done.ok:
            raise RuntimeError(f"memory {case}: {done.describe_failure()}")
        if bench.size_of(out_key) != size:
            raise RuntimeError(f"memory {case}: the output {out_key} is not {size} bytes")
        bench.delete(out_key)
        return done

    for case in cases:  # warm-up at the smallest size only: the large ones cost real time
        if case.endswith(next(iter(sizes))):
            run(case)
    for r, case in interleave(cases, rounds):
        done = run(case)
        provider, label = case.split("|")
        samples[(provider, label)].add(done.maxrss_mib)
        walls[(provider, label)].add(done.wall)
        log(f"  memory round {r + 1}/{rounds}  {provider:<5} {label:>8}  peak RSS {done.maxrss_mib:7.1f} MiB  "
            f"wall {done.wall:6.2f} s")
    for provider in PROVIDERS:
        row = {label: {"rss": samples[(provider, label)].summary(1), "wall": walls[(provider, label)].summary(2)}
               for label in sizes}
        small, large = row.get("1 MiB"), row.get("1 GiB")
        if small and large:
            row["growth_mib"] = round(large["rss"]["median"] - small["rss"]["median"], 1)
        result["rows"][provider] = row
    return result
