"""Building blocks for end-to-end tests: a deployed function definition + script, events in
the platforms' shapes, and ways to read back result records and bucket contents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.records import results_in

CONVEYOR = [sys.executable, "-m", "conveyor"]
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2a1d5d60000000049454e44ae426082"
)

COPY_SCRIPT = """#!/bin/bash
# The DEEP pattern: the model reads $INPUT_FILE_PATH and writes into $TMP_OUTPUT_DIR.
set -e
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"
printf '%s' "$STORAGE_OBJECT_KEY" > "$TMP_OUTPUT_DIR/key.txt"
echo "processed $(basename "$INPUT_FILE_PATH")"
"""

DARKNET_STYLE = """#!/bin/sh
# The Darknet pattern: an output name derived from the input name, stdout kept in a .out file.
NAME=$(basename "$INPUT_FILE_PATH" | sed 's/\\.[^.]*$//')
echo "detected in $NAME" > "$TMP_OUTPUT_DIR/$NAME.out"
"""


def minio_event(bucket: str, key: str, size: int = 0) -> dict[str, Any]:
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": "2026-11-24T10:00:00.000Z",
                "eventName": "s3:ObjectCreated:Put",
                "userIdentity": {"principalId": "alice"},
                "requestParameters": {"principalId": "alice", "region": "", "sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-minio-origin-endpoint": "http://127.0.0.1:9000"},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": size, "eTag": "x"},
                },
            }
        ],
    }


def oscar_event(bucket: str, key: str) -> dict[str, Any]:
    return {"storage_provider": "minio.default", "event": json.dumps(minio_event(bucket, key))}


def s3_event(bucket: str, keys: list[str]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": urllib.parse.quote_plus(k, safe="/"), "size": 1}},
            }
            for k in keys
        ]
    }


class Deployment:
    """A function definition + script on disk, and a way to run `conveyor run` on an event."""

    def __init__(self, tmp: Path, server: Any, bucket: str, script: str | None, **conveyor: Any) -> None:
        self.tmp, self.server, self.bucket = tmp, server, bucket
        self.markers = tmp / "markers"
        self.markers.mkdir()
        self.scratch = tmp / "scratch"
        self.scratch.mkdir()
        provider = {
            "endpoint": server.endpoint,
            "access_key": server.access_key,
            "secret_key": server.secret_key,
            "verify": False,
        }
        self.definition: dict[str, Any] = {
            "name": "pipeline-test",
            "log_level": "INFO",
            "storage_providers": {"minio": {"default": dict(provider)}, "s3": {"default": dict(provider)}},
            # MinIO (OSCAR) and S3 (SCAR, Batch) events both name objects under in/: the inputs
            "input": [{"storage_provider": p, "path": f"{bucket}/in"} for p in ("minio.default", "s3.default")],
            "output": [{"storage_provider": "minio.default", "path": f"{bucket}/out"}],
            "environment": {"variables": {"MARKERS": str(self.markers)}},
            "conveyor": {"timeout": 30, "grace_period": 1, **conveyor},
        }
        if script is not None:
            (tmp / "script.sh").write_text(script)
            self.definition["init_script"] = str(tmp / "script.sh")

    def write(self) -> Path:
        path = self.tmp / "function_config.yaml"
        path.write_text(yaml.safe_dump(self.definition))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONVEYOR_", "EVENT"))}
        # As in an image: the environment's own tools (deepaas-cli, ...) are on PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
        env.update({"TMPDIR": str(self.scratch), "PYTHONUNBUFFERED": "1", "PATH": path}, **extra)
        return env

    def run(self, event: Any, *, platform: str = "oscar", stdin: bytes | None = None, **env: str):
        data = stdin if stdin is not None else json.dumps(event).encode()
        proc = subprocess.run(
            [*CONVEYOR, "run", "--config", str(self.write()), "--platform", platform],
            input=data,
            capture_output=True,
            env=self.env(**env),
            timeout=120,
        )
        return proc

    def popen(self, event: Any) -> subprocess.Popen:
        return subprocess.Popen(
            [*CONVEYOR, "run", "--config", str(self.write()), "--platform", "oscar"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(),
        )


def records(stderr: bytes) -> list[dict[str, Any]]:
    """The result records Conveyor logged (the record protocol's result lines)."""
    return results_in(stderr)


def keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def body(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def exited(pid: int) -> bool:
    """No such process, or only a dead one (a zombie awaiting its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_exited(pid: int, timeout: float) -> bool:
    """Whether `pid` exited within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def assert_no_process(pid_file: Path) -> None:
    """The process whose pid the script wrote must be gone (or a zombie awaiting its reaper)."""
    pid = int(pid_file.read_text().strip())
    if not wait_exited(pid, 5):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"process {pid} was left running")
