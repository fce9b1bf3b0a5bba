"""The one S3 server every peer talks to, and the objects, events and definitions they share.

One SeaweedFS `weed server` on 127.0.0.1 (conveyor.local.s3server.SeaweedServer) serves the whole run, so
Conveyor, faas-supervisor and the bare boto3 script fetch and store the same bytes through the
same server. Peers are told apart by their output prefix, never by their input.

The event is what OSCAR sends for a MinIO upload (contract section 2): a `minio:s3` record with
bucket name and arn, key, size and eventTime; the definition is the flat one OSCAR mounts,
passed base64 in FUNCTION_CONFIG as in binary mode, with the script base64 in SCRIPT.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conveyor.local.s3server import SeaweedServer

BUCKET = "bench"
ACCESS_KEY = "benchaccess"
SECRET_KEY = "benchsecret-" + "x" * 20

# The DEEP/OSCAR pattern, reduced to the model doing nothing but read its input and write an output.
CP_SCRIPT = '#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n'


def s3_event(bucket: str, key: str, size: int) -> dict[str, Any]:
    """An Amazon S3 notification for the same object: Conveyor reads it through its boto3 store."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-11-24T10:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": size, "eTag": "bench"},
                },
            }
        ]
    }


@dataclass
class Bench:
    """The run's server and scratch space. `with Bench.start(root) as b: ...`"""

    server: SeaweedServer
    root: Path
    client: Any = None  # boto3, for setting up objects and checking outputs (never timed)

    @classmethod
    def start(cls, root: Path | None = None) -> Bench:
        root = Path(root or tempfile.mkdtemp(prefix="conveyor-bench-"))
        root.mkdir(parents=True, exist_ok=True)
        server = SeaweedServer(
            root / "weed", environ=os.environ, access_key=ACCESS_KEY, secret_key=SECRET_KEY, buckets=[BUCKET]
        )
        server.start()
        return cls(server=server, root=root, client=server.client(read_timeout=300))

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- places ---------------------------------------------------------------------------------
    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- objects --------------------------------------------------------------------------------
    def put_random(self, key: str, size: int) -> None:
        """Upload `size` random bytes (streamed from a file: a 1 GiB object never sits in memory)."""
        src = self.dir("objects") / key.replace("/", "_")
        with open(src, "wb") as out:
            left = size
            while left:
                chunk = min(left, 8 * 1024 * 1024)
                out.write(os.urandom(chunk))
                left -= chunk
        from boto3.s3.transfer import TransferConfig

        self.client.upload_file(str(src), BUCKET, key, Config=TransferConfig(max_concurrency=2))
        src.unlink()

    def size_of(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
        except ClientError:
            return None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=key)

    # -- definitions ----------------------------------------------------------------------------
    def provider(self) -> dict[str, Any]:
        """The minimum a MinIO-type provider needs to reach this server (both tools read these keys)."""
        return {
            "endpoint": self.server.endpoint,
            "verify": False,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "region": "us-east-1",
        }

    def definition(self, out_prefix: str, *, provider_type: str = "minio", **extra: Any) -> dict[str, Any]:
        """The flat function definition OSCAR mounts, reading and writing this server."""
        ref = f"{provider_type}.default"
        return {
            "name": "bench",
            "log_level": "INFO",
            "storage_providers": {provider_type: {"default": self.provider()}},
            "input": [{"storage_provider": ref, "path": f"{BUCKET}/in"}],
            "output": [{"storage_provider": ref, "path": f"{BUCKET}/{out_prefix}"}],
            **extra,
        }

    def child_env(self, **extra: str) -> dict[str, str]:
        """A clean environment for a worker: no AWS_*, no ~/.aws, a private TMPDIR."""
        home = self.dir("home")
        tmp = self.dir("tmp")
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def b64_yaml(definition: dict[str, Any]) -> str:
    return b64(yaml.safe_dump(definition, sort_keys=False))
