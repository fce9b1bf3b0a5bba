"""Goal 4 of issue 16: one large object (1 GiB) GET and PUT through Conveyor's store against
boto3's transfer manager, in the same run, with each process's peak RSS.

    python -m bench --only large            # inside the full bench (1 GiB)
    python -m bench.large --size 64MiB      # alone, at another size (starts its own server)

Cases, each a fresh process that imports its client, then times one transfer (import and
start-up excluded from `seconds`; the peak RSS, from wait4, covers the whole process):
    conveyor (obstore)   conveyor.storage.open_store on a `minio.default` provider (the default engine)
    conveyor (sdk)       the same with `transfer_engine: sdk` (the minio SDK)
    boto3 transfer mgr   boto3's client.download_file / upload_file, default TransferConfig
and, for the RSS target, conveyor (obstore) and boto3 with a 1 MiB object: the large transfer's
peak must stay within TARGET_MIB of Conveyor's 1 MiB one. Cases are interleaved, rounds rotate their order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.measure import MiB, Samples, free_disk, interleave, ratio, run_process
from bench.server import ACCESS_KEY, BUCKET, SECRET_KEY, Bench

SIZE = 1024 * MiB
SMALL = MiB
TARGET_MIB = 30.0  # the large transfer's peak RSS over the 1 MiB one
CLIENTS = {"obstore": "conveyor (obstore)", "sdk": "conveyor (sdk: minio)", "boto3": "boto3 transfer manager"}

PROBE = """
import json, sys, time
from pathlib import Path
client, op, endpoint, access_key, secret_key, bucket, key, path = sys.argv[1:]
if client == "boto3":
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                      region_name="us-east-1")
    transfer = (lambda: s3.download_file(bucket, key, path)) if op == "get" else (
        lambda: s3.upload_file(path, bucket, key))
else:
    from conveyor.config import ProviderRef, StorageProvider
    from conveyor.storage import open_store
    provider = StorageProvider(ref=ProviderRef("minio", "default"), access_key=access_key, secret_key=secret_key,
                               endpoint=endpoint, region="us-east-1")
    store = open_store(provider, engine=client)
    transfer = (lambda: store.download(bucket, key, Path(path))) if op == "get" else (
        lambda: store.upload(Path(path), bucket, key))
started = time.perf_counter()
transfer()
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def measure(bench: Bench, rounds: int, log=print, size: int = SIZE) -> dict[str, Any]:
    result: dict[str, Any] = {"rounds": rounds, "size_mib": size / MiB, "target_mib": TARGET_MIB, "rows": {}}
    need = 4 * size + 1024 * MiB
    if free_disk(bench.root) < need:
        result["skipped"] = f"needs {need / 2**30:.1f} GiB free under {bench.root}"
        return result
    work = bench.dir("large")
    sizes = {"large": size, "small": SMALL}
    sources: dict[str, Path] = {}
    for label, n in sizes.items():
        log(f"  large: writing and uploading the {n / MiB:.0f} MiB object")
        bench.put_random(f"in/large-{n}.bin", n)
        sources[label] = work / f"src-{n}.bin"
        with open(sources[label], "wb") as out:
            for left in range(n, 0, -8 * MiB):
                out.write(os.urandom(min(left, 8 * MiB)))
    cases = [f"{client}|{op}|large" for client in CLIENTS for op in ("get", "put")]
    cases += [f"{client}|{op}|small" for client in ("obstore", "boto3") for op in ("get", "put")]
    seconds = {case: Samples("s") for case in cases}
    rss = {case: Samples("MiB") for case in cases}

    def run(case: str) -> Any:
        client, op, label = case.split("|")
        n = sizes[label]
        key = f"in/large-{n}.bin" if op == "get" else f"out-large/{client}-{n}.bin"
        path = work / f"down-{client}-{n}.bin" if op == "get" else sources[label]
        argv = [sys.executable, "-c", PROBE, client, op, bench.server.endpoint, ACCESS_KEY, SECRET_KEY, BUCKET,
                key, str(path)]
        done = run_process(argv, env=bench.child_env(PYTHONPATH=os.getcwd()), timeout=1800)
        if not done.ok:
            raise RuntimeError(f"large {case}: {done.describe_failure()}")
        moved = path.stat().st_size if op == "get" else bench.size_of(key)
        if moved != n:
            raise RuntimeError(f"large {case}: moved {moved} bytes, not {n}")
        if op == "get":
            path.unlink()
        else:
            bench.delete(key)
        return done, json.loads(done.stdout)["seconds"]

    for r, case in interleave(cases, rounds):
        done, took = run(case)
        seconds[case].add(took)
        rss[case].add(done.maxrss_mib)
        log(f"  large round {r + 1}/{rounds}  {case:<20} {took:7.2f} s  peak RSS {done.maxrss_mib:6.1f} MiB")
    for path in sources.values():
        path.unlink()
    for case in cases:
        result["rows"][case] = {"seconds": seconds[case].summary(3), "rss": rss[case].summary(1)}
    rows = result["rows"]
    for op in ("get", "put"):
        ours, boto = rows[f"obstore|{op}|large"], rows[f"boto3|{op}|large"]
        result[f"{op}_vs_boto3"] = ratio(ours["seconds"]["median"], boto["seconds"]["median"])
        small = rows[f"obstore|{op}|small"]["rss"]["median"]
        result[f"{op}_rss_growth_mib"] = round(ours["rss"]["median"] - small, 1)
    return result


def render(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"not measured: {result['skipped']}"
    size = f"{result['size_mib']:.0f} MiB"
    lines = [f"| {size} object | GET s | GET peak RSS | PUT s | PUT peak RSS |", "|---|---|---|---|---|"]
    rows = result["rows"]
    for client, name in CLIENTS.items():
        get, put = rows[f"{client}|get|large"], rows[f"{client}|put|large"]
        lines.append(f"| {name} | {get['seconds']['median']:.2f} | {get['rss']['median']:.1f} MiB "
                     f"| {put['seconds']['median']:.2f} | {put['rss']['median']:.1f} MiB |")
    for client in ("obstore", "boto3"):
        small_get, small_put = rows[f"{client}|get|small"], rows[f"{client}|put|small"]
        lines.append(f"| {CLIENTS[client]}, 1 MiB | {small_get['seconds']['median']:.3f} | "
                     f"{small_get['rss']['median']:.1f} MiB | {small_put['seconds']['median']:.3f} | "
                     f"{small_put['rss']['median']:.1f} MiB |")
    verdict = []
    for op in ("get", "put"):
        speed, growth = result[f"{op}_vs_boto3"], result[f"{op}_rss_growth_mib"]
        ok = speed is not None and speed <= 1.0 and growth <= result["target_mib"]
        verdict.append(f"{op.upper()}: {speed}x boto3's time, peak RSS +{growth:.0f} MiB over 1 MiB "
                       f"(goal <= 1x and <= {result['target_mib']:.0f} MiB: {'met' if ok else 'missed'})")
    return "\n".join(lines) + "\n\n" + "; ".join(verdict)


def main(argv: list[str] | None = None) -> int:
    from bench.rss_trace import parse_size

    parser = argparse.ArgumentParser(prog="python -m bench.large", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=SIZE, help="object size (e.g. 64MiB, 1GiB)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    with Bench.start() as bench:
        result = measure(bench, args.rounds, log=lambda text: print(text, file=sys.stderr), size=args.size)
    print(render(result))
    print(json.dumps(result, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
