"""The floor: the least a Python worker can do per event with boto3. Run as a script, not imported.

    BENCH_ENDPOINT=... BENCH_ACCESS_KEY=... BENCH_SECRET_KEY=... BENCH_OUT=bucket/prefix \
        python bench/bare_worker.py < event.json

Reads the MinIO event on stdin, GETs the object into a temporary folder, runs the same `cp`
script through /bin/sh (so the per-event work matches the two supervisors'), PUTs the output.
No configuration parsing, no logging, no retries beyond boto3's, no result record.
"""

import json
import os
import subprocess
import sys
import tempfile
import urllib.parse

import boto3
from botocore.config import Config


def main() -> int:
    event = json.load(sys.stdin)
    record = event["Records"][0]["s3"]
    bucket = record["bucket"]["name"]
    key = urllib.parse.unquote_plus(record["object"]["key"])
    out_bucket, _, out_prefix = os.environ["BENCH_OUT"].partition("/")
    client = boto3.client(
        "s3",
        endpoint_url=os.environ["BENCH_ENDPOINT"],
        aws_access_key_id=os.environ["BENCH_ACCESS_KEY"],
        aws_secret_access_key=os.environ["BENCH_SECRET_KEY"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    with tempfile.TemporaryDirectory() as work:
        src = os.path.join(work, "in", os.path.basename(key))
        out = os.path.join(work, "out")
        os.makedirs(os.path.dirname(src))
        os.makedirs(out)
        client.download_file(bucket, key, src)
        env = dict(os.environ, INPUT_FILE_PATH=src, TMP_OUTPUT_DIR=out)
        subprocess.run(["/bin/sh", "-c", 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"'], env=env, check=True)
        for name in os.listdir(out):
            client.upload_file(os.path.join(out, name), out_bucket, f"{out_prefix}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
