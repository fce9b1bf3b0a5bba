"""What the start record costs a record: `python -m bench.start_record [--rounds N]`.

When `conveyor.status` is set, every record PUTs a small RUNNING record to its status key before
the model runs (conveyor.process._store_start), then the final record over it. Measured here, in
this process, against one SeaweedFS server on 127.0.0.1 (bench.server.Bench):

    start_put        one start record written (_store_start alone: serialise + PUT)
    with_status      a whole record (4 KiB input, the copy script) with conveyor.status set:
                     start record + download + model + upload + final record
    without_status   the same record with no status location (neither record is PUT)

The two whole-record figures are interleaved round by round, so drift hits both alike. A
benchmark, not a test: nothing here passes or fails; the JSON goes to stdout, a summary to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from bench.measure import Samples
from bench.server import BUCKET, CP_SCRIPT, Bench, s3_event


def _job(bench: Bench, scratch: Path, status: bool) -> Any:
    from conveyor.config import load_config
    from conveyor.handler import load_handler
    from conveyor.job import Job, Stores
    from conveyor.platform import Platform

    server = bench.server
    definition: dict[str, Any] = {
        "name": "bench-start-record",
        "log_level": "WARNING",
        "init_script": CP_SCRIPT,
        # the event is an Amazon S3 one (bench.server.s3_event): s3.default is the same server
        "storage_providers": {kind: {"default": {"endpoint": server.endpoint, "access_key": server.access_key,
                                                 "secret_key": server.secret_key, "verify": False}}
                              for kind in ("minio", "s3")},
        "input": [{"storage_provider": "s3.default", "path": f"{BUCKET}/in"}],  # the event names s3.default
        "output": [{"storage_provider": "minio.default", "path": f"{BUCKET}/out-{'status' if status else 'none'}"}],
        "conveyor": {"handler": "script"},
    }
    if status:
        definition["conveyor"]["status"] = {"storage_provider": "minio.default", "path": f"{BUCKET}/status"}
    path = scratch / f"definition-{status}.yaml"
    path.write_text(yaml.safe_dump(definition))
    environ = dict(os.environ)
    config = load_config(environ, Platform.OSCAR, path=path, secrets_dir=None)
    return Job(config=config, platform=Platform.OSCAR, handler=load_handler(config), stores=Stores(config),
               base_env=environ, scratch_dir=scratch, request_id="bench", shutdown=threading.Event())


def measure(rounds: int) -> dict[str, Any]:
    from conveyor.events import load_event
    from conveyor.process import _store_start, run_event
    from conveyor.records import ResultRecord

    scratch = Path(tempfile.mkdtemp(prefix="conveyor-bench-start-"))
    with Bench.start(scratch / "server") as bench:
        bench.client.put_object(Bucket=BUCKET, Key="in/x.bin", Body=os.urandom(4096))
        event = json.dumps(s3_event(BUCKET, "in/x.bin", 4096)).encode()
        jobs = {status: _job(bench, scratch, status) for status in (True, False)}
        start_put, with_status, without_status = Samples("s"), Samples("s"), Samples("s")
        try:
            for job in jobs.values():  # warm up: connections, the handler's setup
                run_event(job, load_event(event))
            record = ResultRecord(input={"bucket": BUCKET, "key": "in/x.bin", "size": 4096}, platform="oscar",
                                  request_id="bench", handler="script", started_at="2026-12-03T00:00:00.000+00:00")
            for _ in range(rounds):
                began = time.perf_counter()
                _store_start(jobs[True], record)
                start_put.add(time.perf_counter() - began)
                for status, samples in ((True, with_status), (False, without_status)):
                    began = time.perf_counter()
                    [done] = run_event(jobs[status], load_event(event))
                    samples.add(time.perf_counter() - began)
                    if not done.ok:
                        raise SystemExit(f"a record failed: {done.to_json()}")
            if "status_start_error" in record.extra:
                raise SystemExit(f"the start record was refused: {record.extra['status_start_error']}")
        finally:
            for job in jobs.values():
                job.handler.close()
    return {"rounds": rounds, "start_put": start_put.summary(), "with_status": with_status.summary(),
            "without_status": without_status.summary()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.start_record", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    result = measure(args.rounds)
    ms = {name: result[name]["median"] * 1000 for name in ("start_put", "with_status", "without_status")}
    print(f"start record: median {ms['start_put']:.1f} ms; a whole record {ms['with_status']:.1f} ms with "
          f"conveyor.status (start + final record), {ms['without_status']:.1f} ms without "
          f"({args.rounds} rounds)", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
