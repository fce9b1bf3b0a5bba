"""The gateway's page and job list with many records in the store (issue 19's benchmark; not a test).

    python -m bench.gateway                       # 1,000 and 10,000 jobs (records SUCCEEDED)
    python -m bench.gateway --jobs 1000 --rounds 20

For each size: a SeaweedFS server on 127.0.0.1 is filled with N uploads of one user (input object +
result record each, as the runtime writes them), a fresh gateway is started with uvicorn, and we time

    page           GET / + app.js + style.css (the first page load: what the browser fetches first)
    jobs cold      the first GET /api/jobs?model=M (nothing cached: a full listing, 50 records read)
    jobs warm      GET /api/jobs?model=M again, as the page polls it (median and max of --rounds)
    stats cold     the first GET /api/models/M/stats (the timing panel: the newest 500 records read)
    stats warm     again

Goals (issue 19): the page <= 300 ms, GET /api/jobs <= 2 s at 10,000 records.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
import yaml

from conveyor.gateway.catalogue import load_catalogue
from conveyor.gateway.names import new_upload_id
from conveyor.gateway.server import Gateway
from conveyor.gateway.users import Users
from conveyor.local.s3server import SeaweedServer

USER = ("alice", "bench-password")


def fill(client, bucket: str, count: int) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)

    def put(n: int) -> None:
        when = start + timedelta(milliseconds=700 * n)
        job_id = new_upload_id(when)
        key = f"in/{USER[0]}/{job_id}/photo-{n:05d}.jpg"
        client.put_object(Bucket=bucket, Key=key, Body=b"jpeg")
        record = {
            "input": {"bucket": bucket, "key": key}, "platform": "oscar", "request_id": f"r{n}", "handler": "script",
            "status": "FAILED" if n % 17 == 0 else "SUCCEEDED", "exit_code": 0, "error": None,
            "timings": {"total": 1 + (n % 7) * 0.5}, "bytes_in": 4, "bytes_out": 4,
            "outputs": [f"{bucket}/out/photo-{n:05d}.json"], "log_tail": "", "job_id": None,
            "started_at": (when + timedelta(seconds=2)).isoformat(timespec="milliseconds"), "extra": {},
        }
        client.put_object(Bucket=bucket, Key=f"status/{bucket}/{key}.json", Body=json.dumps(record).encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


def timed(session: requests.Session, url: str) -> float:
    started = time.perf_counter()
    answer = session.get(url, timeout=120)
    answer.raise_for_status()
    return time.perf_counter() - started


def measure(server: SeaweedServer, count: int, rounds: int, work: Path) -> dict[str, float]:
    client = server.client()
    bucket = f"bench-gateway-{count}"
    client.create_bucket(Bucket=bucket)
    began = time.perf_counter()
    fill(client, bucket, count)
    filled = time.perf_counter() - began
    provider = {"endpoint": server.endpoint, "access_key": server.access_key, "secret_key": server.secret_key}
    catalogue = work / f"catalogue-{count}.yaml"
    catalogue.write_text(yaml.safe_dump({"models": [{"name": "m", "function": {
        "storage_providers": {"minio": {"default": provider}},
        "input": [{"storage_provider": "minio.default", "path": f"{bucket}/in"}],
        "output": [{"storage_provider": "minio.default", "path": f"{bucket}/out"}],
        "conveyor": {"status": {"storage_provider": "minio.default", "path": f"{bucket}/status"},
                     "keep_input_folders": True},
    }}]}))
    gateway = Gateway(load_catalogue(catalogue, {}), Users.from_specs([":".join(USER)]))
    base = gateway.start()
    try:
        page = requests.Session()
        page_s = sum(timed(page, f"{base}{path}") for path in ("/", "/static/app.js", "/static/style.css"))
        api = requests.Session()
        api.auth = USER
        jobs_url = f"{base}/api/jobs?model=m&per_page=50"
        jobs_cold = timed(api, jobs_url)
        listed = api.get(jobs_url, timeout=60).json()
        assert listed["total"] == count, listed["total"]
        warm = [timed(api, jobs_url) for _ in range(rounds)]
        stats_cold = timed(api, f"{base}/api/models/m/stats")
        stats_warm = timed(api, f"{base}/api/models/m/stats")
        last_page = timed(api, f"{base}/api/jobs?model=m&per_page=50&page={max(1, count // 50)}")
    finally:
        gateway.stop()
    return {
        "jobs": count, "fill_s": round(filled, 1), "page_ms": round(page_s * 1000, 1),
        "jobs_cold_ms": round(jobs_cold * 1000, 1), "jobs_warm_median_ms": round(statistics.median(warm) * 1000, 1),
        "jobs_warm_max_ms": round(max(warm) * 1000, 1), "last_page_cold_ms": round(last_page * 1000, 1),
        "stats_cold_ms": round(stats_cold * 1000, 1), "stats_warm_ms": round(stats_warm * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="1000,10000", help="comma-separated store sizes (default 1000,10000)")
    parser.add_argument("--rounds", type=int, default=10, help="warm GET /api/jobs repeats (default 10)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as folder:
        work = Path(folder)
        with SeaweedServer(work / "s3", environ=os.environ) as server:
            for count in (int(n) for n in args.jobs.split(",")):
                results.append(measure(server, count, args.rounds, work))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print("| jobs | page (ms) | GET /api/jobs cold | warm median | warm max | a late page, cold "
          "| stats cold | stats warm |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['jobs']:,} | {r['page_ms']} | {r['jobs_cold_ms']} | {r['jobs_warm_median_ms']} | "
              f"{r['jobs_warm_max_ms']} | {r['last_page_cold_ms']} | {r['stats_cold_ms']} | {r['stats_warm_ms']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
