"""`conveyor local`: SeaweedFS notifications -> MinIO events, and the whole loop as a real process.

Every run gets a fresh directory under tmp_path and must leave no process behind: no weed, no
`conveyor run` job, no model. `lingering(root)` finds any process whose command line or
environment names the run's directory (weed's -dir, the jobs' TMPDIR), which is all of them.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.events import ObjectRef, load_event
from conveyor.local.runner import SAMPLES_DIR, local_path
from conveyor.local.webhook import (
    WebhookReceiver,
    minio_event,
    notification_toml,
    object_change,
    oscar_event,
)
from conveyor.records import uploads_in
from tests.support.lossy import Trap
from tests.support.requirements import missing, requirement

CONVEYOR = [str(Path(sys.executable).parent / "conveyor")]
SAMPLES = ["dog.jpg", "eagle.jpg", "horses.jpg", "person.jpg"]
CORRUPT = b"\x00\x01 this is not a JPEG at all " * 40
DARKNET_CFG = Path("/usr/share/darknet/cfg/yolov3-tiny.cfg")


# -- helpers ---------------------------------------------------------------------------------------


def local_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "CONVEYOR_PLATFORM", "DOCKER_")) and k not in ("EVENT", "FUNCTION_CONFIG")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_local(root: Path, *args: str, timeout: float = 240, env: dict[str, str] | None = None):
    return subprocess.run([*CONVEYOR, "local", "--dir", str(root), *args], capture_output=True,
                          env=env or local_env(), timeout=timeout, cwd=root.parent)


def start_local(root: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CONVEYOR, "local", "--dir", str(root), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=local_env(), cwd=root.parent)


# `conveyor local` with LocalOptions the command line does not offer (storage_backoff): the loop
# itself, as the click command runs it.
LOOP_WITH_OPTIONS = """
import json, os, sys
from pathlib import Path
from conveyor.local.runner import LocalOptions, LocalRun
options = json.loads(sys.argv[1])
options.update(root=Path(options["root"]), storage_backoff=[0.25] + [0.5] * 19)
sys.exit(LocalRun(LocalOptions(**options), dict(os.environ)).run())
"""


def start_loop(root: Path, **options: Any) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", LOOP_WITH_OPTIONS, json.dumps({"root": str(root), **options})]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=local_env(), cwd=root.parent)


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float = 60) -> tuple[str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return out.decode(), err.decode()


def wait_for(predicate, what: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"conveyor local exited ({proc.returncode}) while waiting for {what}:\n{err.decode()}")
        time.sleep(0.1)
    if proc is not None:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"timed out waiting for {what}:\n{err.decode()}")
    pytest.fail(f"timed out waiting for {what}")


def lingering(root: Path) -> list[str]:
    """Live processes whose command line or environment mention `root` (zombies excepted)."""
    needle = str(root).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if state != "Z" and (needle in cmdline or needle in environ):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
            found.append(f"{proc.name}: {command}")
    return found


def assert_no_process(root: Path) -> None:
    deadline = time.monotonic() + 10
    while (left := lingering(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, "processes left behind:\n" + "\n".join(left)


def fill_inbox(root: Path, names: list[str] = SAMPLES, corrupt: str | None = "corrupt.jpg") -> Path:
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    for name in names:
        shutil.copy(SAMPLES_DIR / name, inbox / name)
    if corrupt:
        (inbox / corrupt).write_bytes(CORRUPT)
    return inbox


def record(root: Path, key: str) -> dict[str, Any]:
    return json.loads(local_path(root / "status", key, suffix=".json").read_text())


def result_files(root: Path, key: str) -> list[str]:
    folder = local_path(root / "results", key)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def s3_settings(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / ".conveyor" / "s3.json").read_text())
    except (OSError, ValueError):
        return None


def boto3_client(settings: dict[str, Any]):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=settings["endpoint"], aws_access_key_id=settings["access_key"],
                        aws_secret_access_key=settings["secret_key"], region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


# -- filer event -> MinIO event (captured payloads, weed 4.48) ----------------------------------------


def filer_put(path: str, size: int = 4, file_key: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "event_type": "create",
        "key": path,
        "message": {
            "new_entry": {
                "name": path.rsplit("/", 1)[-1],
                "chunks": [{"size": size, "e_tag": "q088y6dIV8Xyug1bfb9l4Q==",
                            "fid": {"volume_id": 2, "file_key": file_key, "cookie": 1277943241}}],
                "attributes": {"file_size": size, "mtime": 1795564094, "file_mode": 432, "crtime": 1795564094,
                               "mime": "image/jpeg", "md5": "q088y6dIV8Xyug1bfb9l4Q==", "inode": 13523987087373324861},
                "extended": {"Seaweed-X-Amz-ETag": "YWI0ZjNjY2JhNzQ4NTdjNWYyYmEwZDViN2RiZjY1ZTE=",
                             "Seaweed-X-Amz-Owner": "Y29udmV5b3I="},
                **extra,
            },
            "delete_chunks": True,
            "new_parent_path": path.rsplit("/", 1)[0],
        },
    }


def test_a_filer_create_becomes_the_minio_event_oscar_delivers() -> None:
    change = object_change(filer_put("/buckets/input/dir/a photo+1.jpg"), "input")
    assert change is not None
    assert (change.bucket, change.key, change.size) == ("input", "dir/a photo+1.jpg", 4)
    assert change.etag == "ab4f3ccba74857c5f2ba0d5b7dbf65e1" and change.owner == "conveyor"
    event = minio_event(change, endpoint="http://127.0.0.1:9000", principal="AKLOCAL")
    record = event["Records"][0]
    assert event["EventName"] == record["eventName"] == "s3:ObjectCreated:Put"
    assert event["Key"] == "input/dir/a photo+1.jpg"  # MinIO: bucket + "/" + the unescaped key
    assert record["s3"]["object"]["key"] == "dir%2Fa+photo%2B1.jpg"  # MinIO: url.QueryEscape
    assert record["eventSource"] == "minio:s3" and record["eventTime"] == "2026-11-24T23:48:14.000Z"
    assert record["responseElements"]["x-minio-origin-endpoint"] == "http://127.0.0.1:9000"
    assert record["s3"]["object"]["contentType"] == "image/jpeg"
    delegated = oscar_event(event)
    assert delegated["storage_provider"] == "minio.default" and isinstance(delegated["event"], str)
    [ref] = load_event(delegated).inputs
    assert isinstance(ref, ObjectRef)
    assert (ref.bucket, ref.key, ref.size, ref.provider, ref.source) == (
        "input", "dir/a photo+1.jpg", 4, "minio.default", "minio:s3")
    assert ref.user == "AKLOCAL" and ref.etag == "ab4f3ccba74857c5f2ba0d5b7dbf65e1"


@pytest.mark.parametrize(
    "payload",
    [
        filer_put("/buckets/other/x.jpg"),  # another bucket
        filer_put("/buckets/inputs/x.jpg"),  # a bucket whose name only starts like ours
        filer_put("/buckets/input/.uploads/0b92_98b1/0001_f5f2.part"),  # a multipart part
        filer_put("/buckets/input/folder", is_directory=True),  # a "folder/" marker
        filer_put("/buckets/input", is_directory=True),  # the bucket itself
        {**filer_put("/buckets/input/x.jpg"), "event_type": "delete"},
        {"event_type": "create", "key": "/buckets/input/x.jpg"},  # no message
        "not a mapping",
    ],
)
def test_filer_events_that_minio_would_not_notify_are_ignored(payload: Any) -> None:
    assert object_change(payload, "input") is None


def test_an_update_counts_only_when_the_content_changed() -> None:
    old = filer_put("/buckets/input/x.jpg")["message"]["new_entry"]
    tagged = {"event_type": "update", "key": "/buckets/input/x.jpg",
              "message": {"old_entry": old, "new_entry": {**old, "extended": {"tag": "eA=="}}}}
    assert object_change(tagged, "input") is None
    rewritten = filer_put("/buckets/input/x.jpg", size=5, file_key=3)
    rewritten["event_type"] = "update"
    rewritten["message"]["old_entry"] = old
    change = object_change(rewritten, "input")
    assert change is not None and change.size == 5
    assert change.identity != object_change(filer_put("/buckets/input/x.jpg"), "input").identity


@pytest.fixture
def receiver():
    got: list[tuple[float, Any]] = []
    hook = WebhookReceiver(lambda payload: got.append((time.monotonic(), payload)), token="s3cr3t").start()
    yield hook, got
    hook.stop()


def test_the_receiver_wants_the_bearer_token(receiver) -> None:
    import requests

    hook, got = receiver

    def post(token: str | None, **kwargs: Any) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(hook.url, headers=headers, timeout=5, **kwargs).status_code

    assert post(None, json={"a": 1}) == 401
    assert post("nope", json={"a": 1}) == 401
    assert post("s3cr3t", data=b"{not json") == 400
    assert post("s3cr3t", json={"a": 1}) == 204
    assert [p for _, p in got] == [{"a": 1}]


def test_real_seaweedfs_notifications(s3_server_factory, receiver) -> None:
    """What weed really POSTs for a put, an overwrite, tags, a multipart upload, a folder marker and
    another bucket: exactly one change per new content of the watched bucket, promptly."""
    from boto3.s3.transfer import TransferConfig

    hook, got = receiver
    server = s3_server_factory(notification_toml=notification_toml(hook.url, "s3cr3t", "input"),
                               buckets=["input", "output"])
    client = server.client()

    def changes() -> list[Any]:
        return [c for _, p in got if (c := object_change(p, "input")) is not None]

    put_at = time.monotonic()
    client.put_object(Bucket="input", Key="dir/a photo+1.jpg", Body=b"jpeg")
    wait_for(lambda: changes(), "the put's notification", timeout=10)
    latency = got[-1][0] - put_at
    client.put_object(Bucket="input", Key="dir/a photo+1.jpg", Body=b"jpeg, again")  # overwrite
    client.put_object_tagging(Bucket="input", Key="dir/a photo+1.jpg",
                              Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    client.put_object(Bucket="input", Key="folder/", Body=b"")
    client.put_object(Bucket="output", Key="result.json", Body=b"{}")
    five_mib = 5 * 1024 * 1024
    client.upload_fileobj(io.BytesIO(b"m" * (11 * 1024 * 1024)), "input", "big/multi part.bin",
                          Config=TransferConfig(multipart_threshold=five_mib, multipart_chunksize=five_mib))
    client.put_object(Bucket="input", Key="last.txt", Body=b"")
    wait_for(lambda: any(c.key == "last.txt" for c in changes()), "the last notification", timeout=10)
    time.sleep(0.5)  # anything late (a tag update, a part) would show up now
    seen = [(c.key, c.size, c.multipart) for c in changes()]
    assert seen == [
        ("dir/a photo+1.jpg", 4, False),
        ("dir/a photo+1.jpg", 11, False),
        ("big/multi part.bin", 11 * 1024 * 1024, True),
        ("last.txt", 0, False),
    ]
    assert latency < 2.0, f"the notification came {latency:.2f}s after the PUT started"
    multipart = next(c for c in changes() if c.multipart)
    event = minio_event(multipart, endpoint=server.endpoint, principal=server.access_key)
    assert event["EventName"] == "s3:ObjectCreated:CompleteMultipartUpload"
    assert multipart.etag is not None and multipart.etag.endswith("-3")


# -- conveyor local, end to end --------------------------------------------------------------------


def test_once_script_model_oscar_four_results_and_one_failed(tmp_path: Path) -> None:
    root = tmp_path / "run"
    fill_inbox(root)
    proc = run_local(root, "--once", "--model", "script", "--json")
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    summary = json.loads(proc.stdout)  # stdout holds the JSON summary and nothing else
    assert (summary["succeeded"], summary["failed"], summary["cancelled"]) == (4, 1, 0)
    for name in SAMPLES:
        assert result_files(root, name) == [name, f"{name}.sha256"]
        assert (local_path(root / "results", name) / name).read_bytes() == (SAMPLES_DIR / name).read_bytes()
        rec = record(root, name)
        assert rec["status"] == "SUCCEEDED" and rec["platform"] == "oscar"
        assert rec["input"]["provider"] == "minio.default" and rec["input"]["source"] == "minio:s3"
        assert rec["request_id"] == rec["local"]["job_id"]  # JOB_UUID, as OSCAR sets it
    failed = record(root, "corrupt.jpg")
    assert failed["status"] == "FAILED" and failed["exit_code"] == 65
    assert failed["error"]["kind"] == "handler" and "not a JPEG" in failed["log_tail"]
    assert not local_path(root / "results", "corrupt.jpg").exists()
    pids = {record(root, name)["local"]["pid"] for name in [*SAMPLES, "corrupt.jpg"]}
    assert len(pids) == 5  # a fresh process per event
    assert "summary:" in err and "4 succeeded, 1 failed" in err
    for name in [*SAMPLES, "corrupt.jpg"]:
        assert f"queued   {name}" in err and f"running  {name}" in err
    assert "FAILED   corrupt.jpg" in err and "done     dog.jpg" in err
    assert_no_process(root)


def test_batch_platform_with_a_config_file(tmp_path: Path) -> None:
    root = tmp_path / "run"
    fill_inbox(root, ["dog.jpg"], corrupt=None)
    (root / "inbox" / "sub").mkdir()
    (root / "inbox" / "notes.txt").write_text("hello")
    (root / "inbox" / "sub" / "other.txt").write_text("in a folder")
    config = tmp_path / "fdl.yaml"
    config.write_text(yaml.safe_dump({
        "functions": {"aws": [{"lambda": {  # a SCAR definition: only its function part is kept
            "name": "scar-style",
            "init_script": "script.sh",
            "container": {"image": "x/y", "environment": {"Variables": {"GREETING": "hi"}}},
            "output": [{"storage_provider": "s3", "path": "elsewhere/out", "suffix": [".out"]}],
        }}]},
    }))
    (tmp_path / "script.sh").write_text(
        '#!/bin/sh\nname=$(basename "$INPUT_FILE_PATH")\n'
        'echo "$GREETING $AWS_BATCH_JOB_ID" > "$TMP_OUTPUT_DIR/$name.out"\n'
        'echo "$name" > "$TMP_OUTPUT_DIR/same-name.out"\n'
        'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n')
    proc = run_local(root, "--once", "--platform", "batch", "--config", str(config), "--workers", "1")
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    for key, name in (("dog.jpg", "dog.jpg"), ("notes.txt", "notes.txt"), ("sub/other.txt", "other.txt")):
        rec = record(root, key)
        assert rec["status"] == "SUCCEEDED" and rec["platform"] == "batch"
        assert rec["job_id"] == rec["request_id"] == rec["local"]["job_id"]  # AWS_BATCH_JOB_ID
        # the definition's suffix filter is kept: the copy of the input is not an output
        assert result_files(root, key) == [f"{name}.out", "same-name.out"]
        assert (local_path(root / "results", key) / f"{name}.out").read_text() == f"hi {rec['job_id']}\n"
    # both inputs wrote output/same-name.out: the second overwrote the first, as on the platforms
    second = "dog.jpg" if record(root, "dog.jpg")["local"].get("outputs_shared_with") else "notes.txt"
    first = "notes.txt" if second == "dog.jpg" else "dog.jpg"
    assert record(root, second)["local"]["outputs_shared_with"] == {"output/same-name.out": first}
    assert "warning: " + second + " wrote output/same-name.out, also written for " + first in err
    # an input in a folder keeps its outputs in that folder (keep_input_folders): nothing shared
    assert record(root, "sub/other.txt")["outputs"] == ["output/sub/other.txt.out", "output/sub/same-name.out"]
    assert (local_path(root / "results", "sub/other.txt") / "same-name.out").read_text() == "other.txt\n"
    assert "outputs_shared_with" not in record(root, "sub/other.txt")["local"]
    assert_no_process(root)


def test_lambda_platform_keeps_one_warm_environment(tmp_path: Path) -> None:
    root = tmp_path / "run"
    fill_inbox(root, corrupt=None)
    proc = start_local(root, "--once", "--platform", "lambda", "--workers", "1", "--model", "script")
    out, err = (b.decode() for b in proc.communicate(timeout=240))
    assert proc.returncode == 0, err
    facts = [record(root, name)["local"] for name in SAMPLES]
    assert {f["environment"] for f in facts} == {"env-1"}
    assert sorted(f["invocation"] for f in facts) == [1, 2, 3, 4]
    assert [f["setups"] for f in facts] == [1, 1, 1, 1]  # the handler's setup ran once for all four
    assert {f["pid"] for f in facts} == {proc.pid}  # in the conveyor local process itself
    assert all(record(root, name)["platform"] == "lambda" for name in SAMPLES)
    assert "(warm, invocation 4)" in err and out == ""
    assert_no_process(root)


def test_any_s3_client_and_the_drop_folder_trigger_processing(tmp_path: Path) -> None:
    root = tmp_path / "run"
    proc = start_local(root, "--model", "script", "--no-samples", "--workers", "1")
    try:
        settings = wait_for(lambda: s3_settings(root), "the S3 settings", proc=proc)
        client = boto3_client(settings)
        client.put_object(Bucket="input", Key="from boto3/photo one+two.jpg",
                          Body=(SAMPLES_DIR / "dog.jpg").read_bytes())
        inbox = root / "inbox"
        (inbox / "half.jpg.part").write_bytes(b"partial download")  # never uploaded
        staged = tmp_path / "eagle.jpg"
        shutil.copy(SAMPLES_DIR / "eagle.jpg", staged)
        os.replace(staged, inbox / "eagle.jpg")  # moved in, as a finished download
        status = root / "status"
        wait_for(lambda: (local_path(status, "from boto3/photo one+two.jpg", ".json").exists()
                          and (status / "eagle.jpg.json").exists()), "both records", proc=proc)
        # the outputs never trigger anything: only the input bucket is watched. They keep the
        # input's folder (keep_input_folders, which local runs set).
        assert [o["Key"] for o in client.list_objects_v2(Bucket="output").get("Contents", [])] == [
            "eagle.jpg", "eagle.jpg.sha256", "from boto3/photo one+two.jpg", "from boto3/photo one+two.jpg.sha256"]
    finally:
        out, err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    assert out == ""
    rec = record(root, "from boto3/photo one+two.jpg")
    assert rec["status"] == "SUCCEEDED" and rec["input"]["key"] == "from boto3/photo one+two.jpg"
    assert result_files(root, "from boto3/photo one+two.jpg") == ["photo one+two.jpg", "photo one+two.jpg.sha256"]
    assert result_files(root, "eagle.jpg") == ["eagle.jpg", "eagle.jpg.sha256"]
    assert not (status / "half.jpg.part.json").exists()
    assert "summary (stopped by SIGTERM)" in err and "2 succeeded, 0 failed" in err
    assert_no_process(root)


SLOW_SCRIPT = """#!/bin/sh
echo $$ >> "$MARKERS/pids"
sleep 300
"""


@pytest.mark.parametrize("platform", ["oscar", "lambda"])
def test_ctrl_c_mid_run_leaves_no_orphan(tmp_path: Path, platform: str) -> None:
    root = tmp_path / "run"
    markers = tmp_path / "markers"
    markers.mkdir()
    fill_inbox(root, ["dog.jpg", "eagle.jpg", "horses.jpg"], corrupt=None)
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump({
        "name": "slow",
        "init_script": SLOW_SCRIPT,
        "environment": {"variables": {"MARKERS": str(markers)}},
        "conveyor": {"handler": "script", "grace_period": 2},
    }))
    proc = start_local(root, "--once", "--platform", platform, "--workers", "2", "--config", str(config))
    pids_file = markers / "pids"
    wait_for(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 2, "two running models",
             proc=proc)
    started = time.monotonic()
    _, err = stop(proc, signal.SIGINT)
    assert time.monotonic() - started < 20
    assert proc.returncode == 130, err
    assert "SIGINT: stopping (2 running jobs get SIGTERM)" in err
    assert "summary (stopped by SIGINT)" in err and "0 succeeded, 2 failed, 1 cancelled" in err
    interrupted = [record(root, key) for key in ("dog.jpg", "eagle.jpg", "horses.jpg")
                   if local_path(root / "status", key, ".json").exists()]
    assert len(interrupted) == 2
    assert {r["error"]["kind"] for r in interrupted} == {"interrupted"}
    for pid in map(int, pids_file.read_text().split()):
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    assert_no_process(root)


STUBBORN_SCRIPT = """#!/bin/sh
trap '' TERM
echo $$ >> "$MARKERS/pids"
sleep 300
"""


@pytest.mark.parametrize("platform", ["oscar", "lambda"])
def test_a_second_ctrl_c_kills_a_model_that_ignores_sigterm(tmp_path: Path, platform: str) -> None:
    """The model runs in a session of its own: killing the job must not orphan it."""
    root = tmp_path / "run"
    markers = tmp_path / "markers"
    markers.mkdir()
    fill_inbox(root, ["dog.jpg"], corrupt=None)
    config = tmp_path / "stubborn.yaml"
    config.write_text(yaml.safe_dump({
        "name": "stubborn",
        "init_script": STUBBORN_SCRIPT,
        "environment": {"variables": {"MARKERS": str(markers)}},
        "conveyor": {"handler": "script", "grace_period": 120},
    }))
    proc = start_local(root, "--once", "--platform", platform, "--config", str(config))
    pids_file = markers / "pids"
    wait_for(lambda: pids_file.exists() and pids_file.read_text().strip(), "the model", proc=proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.5)
    assert proc.poll() is None  # waiting for the grace period
    started = time.monotonic()
    _, err = stop(proc, signal.SIGINT, timeout=30)
    assert time.monotonic() - started < 15, err
    assert proc.returncode == 130, err
    assert "SIGINT again: killing everything now" in err and "summary (stopped by SIGINT)" in err
    assert_no_process(root)


def test_docker_without_an_engine_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "run"
    env = {**local_env(), "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    proc = run_local(root, "--once", "--docker", "--model", "script", env=env, timeout=60)
    assert proc.returncode == 69
    err = proc.stderr.decode()
    assert "--docker: no Docker engine answers at unix://" in err and "no-engine.sock" in err
    assert not (root / ".s3").exists()  # nothing was started
    assert_no_process(root)


def docker_image_missing(image: str) -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.images.get(image)
        client.close()
    except Exception as exc:  # no SDK, no engine, no image
        return f"needs a Docker engine with {image} (make images): {type(exc).__name__}"
    return None


def test_docker_runs_the_image_per_event(tmp_path: Path, images: dict) -> None:
    if reason := docker_image_missing("conveyor/base"):
        missing(reason)
    root = tmp_path / "run"
    fill_inbox(root, ["dog.jpg", "eagle.jpg"])
    env = {**local_env(), **{k: v for k, v in os.environ.items() if k.startswith("DOCKER_")}}
    proc = run_local(root, "--once", "--docker", "--model", "script", env=env)
    assert proc.returncode == 1, proc.stderr.decode()
    for name in ("dog.jpg", "eagle.jpg"):
        assert result_files(root, name) == [name, f"{name}.sha256"]
        assert record(root, name)["local"]["image"] == "conveyor/base"
    assert record(root, "corrupt.jpg")["exit_code"] == 65
    import docker

    client = docker.from_env()
    assert not client.containers.list(all=True, filters={"label": f"conveyor.local.root={root.resolve()}"})
    assert_no_process(root)


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_local(tmp_path / "run", "--once", "--model", "no-such-model", timeout=60)
    assert proc.returncode == 78
    assert "unknown model 'no-such-model'" in proc.stderr.decode()


@pytest.mark.heavy
@requirement(None if DARKNET_CFG.exists() else "needs Debian's darknet package (cfg and names)")
@pytest.mark.parametrize("platform", ["oscar", "lambda"])
def test_default_darknet_model_once(tmp_path: Path, platform: str) -> None:
    """The default run: YOLOv3-tiny on the samples (weights fetched on first use) plus a corrupt JPEG."""
    root = tmp_path / "run"
    fill_inbox(root)
    proc = run_local(root, "--once", "--platform", platform, "--json", timeout=900)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    summary = json.loads(proc.stdout)
    assert (summary["succeeded"], summary["failed"]) == (4, 1)
    for name in SAMPLES:
        stem = name.rsplit(".", 1)[0]
        assert result_files(root, name) == [f"{stem}.jpg", f"{stem}.json"]
        assert record(root, name)["extra"]["backend"] in ("opencv", "cli")
    classes = {d["class"] for d in json.loads((local_path(root / "results", "dog.jpg") / "dog.json").read_text())}
    assert {"dog", "bicycle"} <= classes
    failed = record(root, "corrupt.jpg")
    assert failed["status"] == "FAILED" and failed["error"]["kind"] == "handler"
    assert "not an image" in failed["error"]["message"]
    facts = [record(root, name)["local"] for name in [*SAMPLES, "corrupt.jpg"]]
    if platform == "lambda":
        by_env: dict[str, set[int]] = {}
        for f in facts:
            by_env.setdefault(f["environment"], set()).add(f.get("model_loads", 0))
        assert all(loads == {1} for loads in by_env.values()), by_env  # each environment loaded it once
        assert len(by_env) <= 2
    else:
        assert len({f["pid"] for f in facts}) == 5
    assert "done     dog.jpg" in err and "bicycle" in err
    assert_no_process(root)


def test_darknet_files_fall_back_to_the_bundled_cfg_and_names(tmp_path: Path, monkeypatch) -> None:
    """Without Debian's darknet package the default model still runs: cfg and names from samples/yolo."""
    import conveyor.handlers.darknet.weights as weights
    from conveyor.local.runner import LocalOptions, LocalRun

    monkeypatch.setattr(weights, "DEFAULT_CFG", tmp_path / "absent" / "yolov3-tiny.cfg")
    monkeypatch.setattr(weights, "DEFAULT_NAMES", tmp_path / "absent" / "coco.names")
    fetched: list[Path] = []
    monkeypatch.setattr(weights, "ensure_weights", lambda where: fetched.append(where) or where / "w")
    run = LocalRun(LocalOptions(root=tmp_path / "run"), {"CONVEYOR_WEIGHTS_DIR": str(tmp_path / "cache")})
    doc = {"conveyor": {"handler": {"name": "darknet"}}}
    run._prepare_model(doc, "darknet")
    options = doc["conveyor"]["handler"]
    assert options["cfg"] == str(SAMPLES_DIR / "yolo" / "yolov3-tiny.cfg")
    assert options["names"] == str(SAMPLES_DIR / "yolo" / "coco.names")
    assert options["weights_dir"] == str(tmp_path / "cache") and fetched == [tmp_path / "cache"]
    assert len(Path(options["names"]).read_text().split("\n")) >= 80


def test_local_path_stays_inside(tmp_path: Path) -> None:
    assert local_path(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.jpg"
    assert local_path(tmp_path, "../../etc/passwd", ".json") == tmp_path / "_" / "_" / "etc" / "passwd.json"
    assert local_path(tmp_path, "/abs//x") == tmp_path / "abs" / "x"
    assert local_path(tmp_path, "") == tmp_path / "_"


def test_a_job_killed_hard_leaves_no_model_behind(tmp_path: Path) -> None:
    """The model runs in a session of its own; when its `conveyor run` dies by SIGKILL (the OOM
    killer, a drill) the model is re-parented to init. The loop must still find and stop it."""
    root = tmp_path / "run"
    fill_inbox(root, ["dog.jpg"], corrupt=None)
    config = tmp_path / "fdl.yaml"
    config.write_text(yaml.safe_dump({"name": "killer", "init_script": "script.sh"}))
    (tmp_path / "script.sh").write_text(
        '#!/bin/sh\necho $$ > "$TMPDIR/../model.pid"\nkill -9 $PPID\nexec sleep 300\n')
    proc = run_local(root, "--once", "--config", str(config), "--workers", "1", "--no-samples")
    assert proc.returncode == 1, proc.stderr.decode()
    rec = record(root, "dog.jpg")
    assert rec["status"] == "FAILED"
    # Killed from outside, the event is delivered again, as the platforms' queues do, up to 3 times.
    assert "killed by SIGKILL before recording a result: delivering the event again (3 of 3)" in proc.stderr.decode()
    assert_no_process(root)
    assert "left 1 process(es) behind" in (root / "logs" / "conveyor.log").read_text()
    # The job died after its start record (RUNNING): the loop's FAILED record takes its place in the
    # status bucket, where the gateway reads it, so the job does not show running for ever.
    stored = stored_record(root, "dog.jpg")
    assert stored["status"] == "FAILED" and stored["request_id"] == rec["request_id"]
    assert stored["started_at"] and stored["finished_at"] >= stored["started_at"]


def stored_record(root: Path, key: str) -> dict[str, Any]:
    """The record of `key` in a finished run's status bucket (its S3 data reopened with its own credentials)."""
    from conveyor.local.s3server import SeaweedServer

    creds = json.loads((root / ".conveyor" / "credentials.json").read_text())
    with SeaweedServer(
        root / ".s3", environ=os.environ, access_key=creds["access_key"], secret_key=creds["secret_key"]
    ) as server:
        return json.loads(server.client().get_object(Bucket="status", Key=f"input/{key}.json")["Body"].read())


def output_keys(root: Path) -> list[str]:
    """The keys in a finished run's output bucket (its S3 data reopened with its own credentials)."""
    from conveyor.local.s3server import SeaweedServer

    creds = json.loads((root / ".conveyor" / "credentials.json").read_text())
    with SeaweedServer(
        root / ".s3", environ=os.environ, access_key=creds["access_key"], secret_key=creds["secret_key"]
    ) as server:
        pages = server.client().get_paginator("list_objects_v2").paginate(Bucket="output")
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


# The model writes a small and a big output and names its `conveyor run` (its parent); the test
# SIGKILLs that process as soon as the job's log says the small one is uploaded: the job dies in
# the middle of uploading the big one, before it writes a record. (The watcher cannot be the
# model's own: no process of the model outlives its record's model run.)
KILLED_MID_UPLOAD = """#!/bin/sh
printf small > "$TMP_OUTPUT_DIR/a.txt"
head -c 100000000 /dev/zero > "$TMP_OUTPUT_DIR/b.bin"
echo "$PPID" > "$RUN_ROOT/job.pid"
"""


def kill_after_first_upload(root: Path, stop: threading.Event) -> None:
    """SIGKILL the job named in job.pid once its log records the upload of output/a.txt."""
    uploaded = re.compile(r"@conveyor-record uploaded .*target.: .output/a.txt.}")
    while not stop.wait(0.02):
        pid = root / "job.pid"
        logs = list((root / "logs").glob("*.log")) if (root / "logs").is_dir() else []
        if pid.exists() and pid.read_text().strip() and any(uploaded.search(log.read_text("latin-1")) for log in logs):
            os.kill(int(pid.read_text()), signal.SIGKILL)
            return


@pytest.mark.parametrize("log_level", [None, "WARNING"])
def test_a_job_killed_after_an_upload_is_withdrawn_and_delivered_again(tmp_path: Path, log_level: str | None) -> None:
    """What the dead job had published is withdrawn by the loop, and the event is delivered again
    (as the platforms' queues redeliver an event whose consumer died): the second job publishes
    the whole output set. The job's record protocol lines do not depend on its log_level."""
    root = tmp_path / "run"
    fill_inbox(root, ["dog.jpg"], corrupt=None)
    config = tmp_path / "fdl.yaml"
    definition = {"name": "killed", "init_script": KILLED_MID_UPLOAD,
                  "environment": {"variables": {"RUN_ROOT": str(root)}}}
    if log_level:
        definition["log_level"] = log_level
    config.write_text(yaml.safe_dump(definition))
    stop = threading.Event()
    watcher = threading.Thread(target=kill_after_first_upload, args=(root, stop), daemon=True)
    watcher.start()
    try:
        proc = run_local(root, "--once", "--config", str(config), "--workers", "1", "--no-samples")
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "was killed by SIGKILL before recording a result: delivering the event again (2 of 3)" in \
        proc.stderr.decode()
    rec = record(root, "dog.jpg")
    assert rec["status"] == "SUCCEEDED", rec
    first = [log for log in (root / "logs").glob("*.log") if log.stem not in ("conveyor", rec["request_id"])]
    assert len(first) == 1  # the killed job's
    assert "output/a.txt" in uploads_in(first[0], first[0].stem)  # it did die after its first upload
    assert "withdrew output/a.txt: its job died" in (root / "logs" / "conveyor.log").read_text()
    assert output_keys(root) == ["a.txt", "b.bin"]
    assert sorted(p.name for p in local_path(root / "results", "dog.jpg").iterdir()) == ["a.txt", "b.bin"]
    assert_no_process(root)


def weed_pids(root: Path) -> list[int]:
    return [int(p.split(":")[0]) for p in lingering(root) if " server " in p and "weed" in p]


def test_the_loop_restarts_its_s3_server_even_when_it_dies_again_while_starting(tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / "inbox").mkdir(parents=True)
    proc = start_local(root, "--model", "script", "--workers", "1", "--no-samples")
    try:
        [first] = wait_for(lambda: s3_settings(root) and weed_pids(root), "the S3 server", proc=proc)
        os.kill(first, signal.SIGKILL)
        [second] = wait_for(lambda: [p for p in weed_pids(root) if p != first], "a restarted S3 server", proc=proc)
        os.kill(second, signal.SIGKILL)  # while the loop is still waiting for it to serve
        log = root / "logs" / "conveyor.log"
        wait_for(lambda: "S3 server restarted" in log.read_text(), "the S3 server back", proc=proc)
        shutil.copy(SAMPLES_DIR / "dog.jpg", root / "inbox" / "dog.jpg")
        wait_for(lambda: local_path(root / "status", "dog.jpg", ".json").exists(), "a record", proc=proc)
    finally:
        _, err = stop(proc, signal.SIGINT)
    assert record(root, "dog.jpg")["status"] == "SUCCEEDED", err
    assert result_files(root, "dog.jpg") == ["dog.jpg", "dog.jpg.sha256"]
    assert "the S3 server did not come back" in log.read_text()
    assert err.count("the S3 server stopped unexpectedly: restarting it") == 1
    assert_no_process(root)


def hold(port: int) -> Trap | None:
    """Listen on the port as soon as it is free, closing every connection unanswered."""
    try:
        return Trap(port=port)
    except OSError:
        return None


def test_a_file_dropped_while_s3_is_down_waits_for_it(tmp_path: Path) -> None:
    """The S3 server dies and, for a while, cannot start again (the test holds its port): a file
    dropped meanwhile is not failed; its upload is retried and it is processed once S3 is back.
    (Retried every 0.25-0.5 s for up to 10 s, rather than 1, 2, 4, 8 s apart.)"""
    root = tmp_path / "run"
    (root / "inbox").mkdir(parents=True)
    proc = start_loop(root, model="script", workers=1, samples=False, storage_backoff=[0.25] + [0.5] * 19)
    log = root / "logs" / "conveyor.log"
    try:
        [pid] = wait_for(lambda: s3_settings(root) and weed_pids(root), "the S3 server", proc=proc)
        port = int(s3_settings(root)["endpoint"].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while (holder := hold(port)) is None:  # take the port before the loop restarts S3 on it
            assert time.monotonic() < deadline, f"port {port} stayed taken after its server died"
            time.sleep(0.001)
        try:
            shutil.copy(SAMPLES_DIR / "dog.jpg", root / "inbox" / "dog.jpg")
            wait_for(lambda: "dog.jpg" in log.read_text() and "trying again" in log.read_text(),
                     "a retried upload", proc=proc)
        finally:
            holder.close()
        wait_for(lambda: local_path(root / "status", "dog.jpg", ".json").exists(), "a record", proc=proc)
    finally:
        _, err = stop(proc, signal.SIGINT)
    assert record(root, "dog.jpg")["status"] == "SUCCEEDED", err
    assert "did not come back" in log.read_text()  # the held port made a start fail
    assert_no_process(root)



# `conveyor local --once` whose SeaweedFS loses the notification of `lost.jpg` and sends that of
# `late.jpg` only after the loop has given up waiting for it (event_wait).
LOOP_LOSING_NOTIFICATIONS = """
import json, os, sys, threading
from pathlib import Path
from conveyor.local.runner import LocalOptions, LocalRun

class Lossy(LocalRun):
    def _on_filer_event(self, payload):
        key = str(payload.get("key", "")) if isinstance(payload, dict) else ""
        if key.endswith("/lost.jpg"):
            return
        if key.endswith("/late.jpg") and payload.get("event_type") == "create":
            threading.Thread(target=self._when_delivered, args=(payload,)).start()
            return
        super()._on_filer_event(payload)

    def _when_delivered(self, payload):  # once the loop has delivered late.jpg itself
        while not any(key == "late.jpg" for key, _ in self._delivered_unnotified):
            if self._stopping.wait(0.05):
                return
        super()._on_filer_event(payload)

options = json.loads(sys.argv[1])
sys.exit(Lossy(LocalOptions(root=Path(options.pop("root")), **options), dict(os.environ)).run())
"""


def test_an_input_whose_notification_is_lost_or_late_is_processed_once(tmp_path: Path) -> None:
    """SeaweedFS loses a notification now and then (seen around S3 restarts): an input the loop
    uploaded itself is not failed for it. After event_wait the loop reads the object back and
    delivers its event; a notification that comes after that is not a second event."""
    root = tmp_path / "run"
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    for name in ("lost.jpg", "late.jpg", "dog.jpg"):
        shutil.copy(SAMPLES_DIR / "dog.jpg", inbox / name)
    options = {"root": str(root), "model": "script", "workers": 1, "samples": False, "once": True,
               "event_wait": 2.0, "json_summary": True}
    proc = subprocess.run([sys.executable, "-c", LOOP_LOSING_NOTIFICATIONS, json.dumps(options)],
                          capture_output=True, env=local_env(), cwd=root.parent, timeout=240)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    summary = json.loads(proc.stdout)
    assert (summary["succeeded"], summary["failed"]) == (3, 0), err
    for name in ("lost.jpg", "late.jpg", "dog.jpg"):
        assert record(root, name)["status"] == "SUCCEEDED"
        assert result_files(root, name) == [name, f"{name}.sha256"]
    log = (root / "logs" / "conveyor.log").read_text()
    delivered = [line for line in log.splitlines() if "delivering its event from the loop" in line]
    assert len(delivered) == 2 and "lost.jpg" in log, delivered
    # late.jpg's notification came after the loop had delivered it: one job for it, not two
    assert "the overdue notification for input/late.jpg came after all: already delivered" in log
    for name in ("lost.jpg", "late.jpg", "dog.jpg"):
        jobs = [line for line in log.splitlines() if f"event for input/{name} " in line]
        assert len(jobs) == 1, jobs
    assert_no_process(root)


# -- the gateway beside the loop (without --once) -----------------------------------------------------


def serve(root: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`conveyor local` without --once, its stderr in a file (read while it runs)."""
    err = root.parent / f"{root.name}-stderr.txt"
    with open(err, "wb") as fh:
        proc = subprocess.Popen([*CONVEYOR, "local", "--dir", str(root), *args], stdout=subprocess.PIPE,
                                stderr=fh, env=local_env(), cwd=root.parent)
    return proc, err


def wait_in(err: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> str:
    """Wait until `text` is in the run's stderr; return the stderr so far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = err.read_text(errors="replace")
        if text in seen:
            return seen
        if proc.poll() is not None:
            pytest.fail(f"conveyor local exited ({proc.returncode}) before printing {text!r}:\n{seen}")
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    pytest.fail(f"timed out waiting for {text!r}:\n{err.read_text(errors='replace')}")


def gateway_url(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if line.startswith("  gateway ")]
    return line.split()[1]


def interrupt(proc: subprocess.Popen[bytes], err: Path) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    return err.read_text(errors="replace")


def job_states(session: Any, url: str, timeout: float = 120) -> tuple[list[str], dict[str, Any]]:
    """Poll a job until it is SUCCEEDED or FAILED: the distinct states seen, in order, and the last answer."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = session.get(url, timeout=10)
        assert answer.status_code == 200, answer.text
        job = answer.json()
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in ("SUCCEEDED", "FAILED"):
            return seen, job
        time.sleep(0.05)
    pytest.fail(f"the job stayed {seen[-1] if seen else 'unseen'}: {seen}")


def test_the_gateway_serves_the_running_model_beside_the_loop(tmp_path: Path) -> None:
    """Without --once: the samples are processed and summed up, and the gateway serves the model
    (--model script) to the --user logins; a file uploaded through it runs through the loop."""
    import requests

    root = tmp_path / "run"
    proc, err = serve(root, "--model", "script", "--workers", "1", "--user", "alice:alice-secret",
                      "--user", "bob:bob-secret")
    try:
        stderr = wait_in(err, "conveyor local: still running:", proc)
        url = gateway_url(stderr)
        assert url.startswith("http://127.0.0.1:")
        assert "login        alice, bob, with the passwords given by --user" in stderr
        assert "alice-secret" not in stderr and not (root / ".conveyor" / "gateway-login").exists()
        assert "the files found at start:" in stderr and "4 succeeded, 0 failed" in stderr
        assert f"still running: open {url} or drop files into {root / 'inbox'}" in stderr
        assert requests.get(f"{url}/api/models", timeout=10).status_code == 401
        alice, bob = requests.Session(), requests.Session()
        alice.auth, bob.auth = ("alice", "alice-secret"), ("bob", "bob-secret")
        [model] = alice.get(f"{url}/api/models", timeout=10).json()
        assert (model["name"], model["title"], model["platform"]) == ("script", "Copy script (the smallest model)",
                                                                       "local")
        assert model["accepts"] == [] and model["example_url"]
        assert alice.get(url + model["example_url"], timeout=10).content == (SAMPLES_DIR / "dog.jpg").read_bytes()
        with open(SAMPLES_DIR / "eagle.jpg", "rb") as fh:
            answer = alice.post(f"{url}/api/models/script/files", files={"file": ("eagle.jpg", fh)}, timeout=30)
        assert answer.status_code == 201, answer.text
        [job] = answer.json()["jobs"]
        states, done = job_states(alice, f"{url}/api/jobs/{job['id']}")
        assert done["status"] == "SUCCEEDED", done
        assert states[-1] == "SUCCEEDED" and states == [s for s in ("PENDING", "RUNNING", "SUCCEEDED") if s in states]
        assert sorted(o["name"] for o in done["outputs"]) == ["eagle.jpg", "eagle.jpg.sha256"]
        assert done["started_at"] and done["finished_at"] and done["run_s"] is not None
        copy = next(o for o in done["outputs"] if o["name"] == "eagle.jpg")
        assert alice.get(url + copy["url"], timeout=10).content == (SAMPLES_DIR / "eagle.jpg").read_bytes()
        assert bob.get(f"{url}/api/jobs/{job['id']}", timeout=10).status_code == 404
        assert bob.get(f"{url}/api/jobs?model=script", timeout=10).json()["jobs"] == []
        # the loop saw it as any upload: its record and results under the user's folder
        key = f"alice/{job['id']}/eagle.jpg"
        assert record(root, key)["status"] == "SUCCEEDED"
    finally:
        stderr = interrupt(proc, err)
    assert proc.returncode == 0, stderr
    assert "summary (stopped by SIGINT)" in stderr and "5 succeeded, 0 failed" in stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)  # the gateway stopped with the loop
    assert_no_process(root)


def test_two_people_uploading_the_same_name_each_get_their_own_result(tmp_path: Path) -> None:
    import requests

    root = tmp_path / "run"
    proc, err = serve(root, "--model", "script", "--workers", "1", "--no-samples", "--user", "alice:alice-secret",
                      "--user", "bob:bob-secret")
    try:
        url = gateway_url(wait_in(err, "Ctrl-C stops", proc))
        results = {}
        for name in ("alice", "bob"):
            session = requests.Session()
            session.auth = (name, f"{name}-secret")
            answer = session.post(f"{url}/api/models/script/files",
                                  files={"file": ("same.txt", f"{name}'s text\n".encode())}, timeout=30)
            assert answer.status_code == 201, answer.text
            [job] = answer.json()["jobs"]
            _, done = job_states(session, f"{url}/api/jobs/{job['id']}")
            assert done["status"] == "SUCCEEDED", done
            results[name] = (session, done)
        for name, (session, done) in results.items():
            copy = next(o for o in done["outputs"] if o["name"] == "same.txt")
            assert session.get(url + copy["url"], timeout=10).text == f"{name}'s text\n", name
            fresh = session.get(f"{url}/api/jobs/{done['id']}", timeout=10).json()
            mine = next(o for o in fresh["outputs"] if o["name"] == "same.txt")
            assert session.get(url + mine["url"], timeout=10).text == f"{name}'s text\n", name
    finally:
        interrupt(proc, err)


def test_a_made_up_login_is_printed_kept_and_reused(tmp_path: Path) -> None:
    """No --user: one login is made up, printed, kept in DIR/.conveyor/gateway-login (0600) and used
    again by the next run. The default port (8642) is taken here: the gateway takes a free one.
    With --config, the catalogue names the model after the definition."""
    import socket

    import requests

    from conveyor.local import GATEWAY_PORT

    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past connections in TIME_WAIT do not hold it
    try:
        holder.bind(("127.0.0.1", GATEWAY_PORT))
        holder.listen()
    except OSError:  # something else holds it already: as good
        pass
    config = tmp_path / "fdl.yaml"
    config.write_text(yaml.safe_dump({"name": "My Copy_Model!", "init_script": "#!/bin/sh\ncp \"$INPUT_FILE_PATH\" "
                                      "\"$TMP_OUTPUT_DIR/\"\n"}))
    root = tmp_path / "run"
    logins = []
    try:
        for _ in range(2):
            proc, err = serve(root, "--config", str(config), "--no-samples", "--workers", "1")
            try:
                stderr = wait_in(err, "Ctrl-C stops", proc)
                url = gateway_url(stderr)
                assert not url.endswith(f":{GATEWAY_PORT}")
                kept = root / ".conveyor" / "gateway-login"
                assert kept.stat().st_mode & 0o777 == 0o600
                name, _, password = kept.read_text().strip().partition(":")
                assert name == "scientist" and len(password) >= 12
                assert f"login        user scientist  password {password}  (kept in {kept};" in stderr
                logins.append(password)
                session = requests.Session()
                session.auth = (name, password)
                [model] = session.get(f"{url}/api/models", timeout=10).json()
                assert (model["name"], model["title"]) == ("my-copy_model", "My Copy_Model!")
                assert "the script handler" in model["description"]
            finally:
                stderr = interrupt(proc, err)
            assert proc.returncode == 0, stderr
    finally:
        holder.close()
    assert logins[0] == logins[1]
    assert_no_process(root)


def test_a_malformed_user_fails_before_anything_starts(tmp_path: Path) -> None:
    root = tmp_path / "run"
    proc = run_local(root, "--model", "script", "--user", "alice-without-a-password", timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 78, err
    assert "NAME:PASSWORD" in err
    assert not (root / ".s3").exists()  # no S3 server was started


def test_a_gateway_port_that_is_taken_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        proc = run_local(tmp_path / "run", "--model", "script", "--no-samples", "--gateway-port", str(port),
                         timeout=120)
    finally:
        holder.close()
    err = proc.stderr.decode()
    assert proc.returncode == 69, err
    assert f"the gateway could not start on 127.0.0.1:{port}" in err
    assert_no_process(tmp_path / "run")


def test_the_default_port_is_kept_while_past_connections_wait_out_time_wait() -> None:
    """A restarted run keeps its page's address: connections of the previous one in TIME_WAIT
    (a browser was connected) do not make the gateway move to another port."""
    import socket

    from conveyor.local.gateway import choose_port

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end of the connection waits in TIME_WAIT
    client.close()
    server.close()
    assert "06" in [line.split()[3] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                    if line.split()[1].endswith(f":{port:04X}")], "no TIME_WAIT connection to test with"
    assert choose_port(None, default=port) == port


def test_no_gateway_with_once_or_port_zero(tmp_path: Path) -> None:
    """--once (CI, the drill) and --gateway-port 0 start no gateway, make up no login."""
    root = tmp_path / "run"
    fill_inbox(root, ["dog.jpg"], corrupt=None)
    proc = run_local(root, "--once", "--model", "script")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "  gateway " not in proc.stderr.decode()
    assert not (root / ".conveyor" / "gateway-login").exists()
    other = tmp_path / "other"
    proc, err = serve(other, "--model", "script", "--no-samples", "--gateway-port", "0")
    try:
        stderr = wait_in(err, "Ctrl-C stops", proc)
    finally:
        interrupt(proc, err)
    assert "  gateway " not in stderr and not (other / ".conveyor" / "gateway-login").exists()
