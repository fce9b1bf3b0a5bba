"""The model handlers through `conveyor run` against the real S3 server, with SCAR/OSCAR-style
definitions: Darknet (both backends) and DEEPaaS (all three modes)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conveyor.handlers.darknet.weights import DEFAULT_CFG, default_weights_dir, ensure_weights
from tests.support.pipeline import body, keys, oscar_event, records, s3_event
from tests.support.requirements import missing

SAMPLES = Path("/usr/share/darknet/data")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    directory = default_weights_dir(os.environ)
    ensure_weights(directory)
    return directory


@pytest.mark.parametrize("backend", ["opencv", "cli"])
def test_darknet_through_conveyor_run(deploy, s3_client, bucket, weights_dir, backend) -> None:
    if backend == "cli" and (shutil.which("darknet") is None or not DEFAULT_CFG.is_file()):
        missing("the darknet package is not installed (apt-get install darknet; .ci/run installs it)")
    if not (SAMPLES / "dog.jpg").is_file():
        missing("the darknet package's sample images are not installed")
    d = deploy(None, handler={"name": "darknet", "backend": backend, "weights_dir": str(weights_dir)})
    d.definition["output"] = [
        {"storage_provider": "minio.default", "path": f"{bucket}/detections", "suffix": [".json", ".jpg"]}
    ]
    for name in ("dog.jpg", "person.jpg"):
        s3_client.put_object(Bucket=bucket, Key=f"in/{name}", Body=(SAMPLES / name).read_bytes())
    # SCAR's shape: an S3 notification with two records, no eventTime.
    proc = d.run(s3_event(bucket, ["in/dog.jpg", "in/person.jpg"]), platform="batch", AWS_BATCH_JOB_ID="j-yolo")
    assert proc.returncode == 0, proc.stderr.decode()
    assert keys(s3_client, bucket, "detections/") == [
        "detections/dog.jpg",
        "detections/dog.json",
        "detections/person.jpg",
        "detections/person.json",
    ]
    dog = {d["class"] for d in json.loads(body(s3_client, bucket, "detections/dog.json")) if d["confidence"] > 0.25}
    person = {d["class"] for d in json.loads(body(s3_client, bucket, "detections/person.json"))}
    assert {"dog", "bicycle"} <= dog and dog & {"car", "truck"}
    assert {"person", "horse"} <= person
    assert [r["extra"]["warm_start"] for r in records(proc.stderr)] == [False, True]


def test_darknet_corrupt_upload_is_a_failed_record(deploy, s3_client, bucket, weights_dir) -> None:
    d = deploy(None, handler={"name": "darknet", "backend": "opencv", "weights_dir": str(weights_dir)})
    s3_client.put_object(Bucket=bucket, Key="in/broken.jpg", Body=b"\xff\xd8\xff\xe0 not really a jpeg")
    proc = d.run(oscar_event(bucket, "in/broken.jpg"))
    assert proc.returncode == 70, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "handler"
    assert keys(s3_client, bucket, "out/") == []


@pytest.mark.parametrize("mode", ["warm", "cli", "predict"])
def test_deepaas_modes_through_conveyor_run(deploy, s3_client, bucket, mode) -> None:
    d = deploy(None, handler={"name": "deepaas", "mode": mode, "model": "conveyor-demo"})
    s3_client.put_object(Bucket=bucket, Key="in/my cat.jpg", Body=b"not a cat" * 100)
    proc = d.run(oscar_event(bucket, "in/my cat.jpg"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert keys(s3_client, bucket, "out/") == ["out/my cat.json"]
    result = json.loads(body(s3_client, bucket, "out/my cat.json"))
    assert result["size"] == 900
    [record] = records(proc.stderr)
    assert record["status"] == "SUCCEEDED" and record["extra"]["deepaas"]["mode"] == mode


def test_deepaas_model_exception_is_a_failed_record(deploy, s3_client, bucket) -> None:
    d = deploy(None, handler={"name": "deepaas", "mode": "warm", "model": "conveyor-broken"})
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 70, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "handler"
    assert keys(s3_client, bucket, "out/") == []
