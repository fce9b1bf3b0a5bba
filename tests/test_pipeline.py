"""`conveyor run` end to end, as a real process, against the real S3 server on loopback.

Scripts are written the way SCAR/OSCAR users write them (contract section 4). Every failure
must end with the right exit code, a FAILED result record, nothing in the output paths, the
input untouched and no process left behind.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import IOSpec, ProviderRef
from conveyor.errors import exit_code_for
from conveyor.outputs import safe_file_name
from conveyor.records import ResultRecord, Status, status_key
from tests.conftest import unique_bucket_name
from tests.support.lossy import LostAnswers, Trap
from tests.support.pipeline import (
    COPY_SCRIPT,
    DARKNET_STYLE,
    PNG,
    Deployment,
    assert_no_process,
    body,
    keys,
    oscar_event,
    records,
    s3_event,
)

# How long a failed record keeps trying to withdraw its outputs in the test where the store comes
# back: its restart (2 s down, then a start: about 3.5 s here) with room to spare.
WITHDRAW_WINDOW = 8


def test_oscar_minio_event_end_to_end(deploy, s3_client, bucket) -> None:
    d = deploy()
    s3_client.put_object(Bucket=bucket, Key="in/photo one+été.jpg", Body=PNG)
    proc = d.run(oscar_event(bucket, "in/photo one+été.jpg"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert keys(s3_client, bucket, "out/") == ["out/key.txt", "out/photo one+été.jpg"]
    assert body(s3_client, bucket, "out/photo one+été.jpg") == PNG
    assert body(s3_client, bucket, "out/key.txt").decode() == "in/photo one+été.jpg"
    head = s3_client.head_object(Bucket=bucket, Key="out/photo one+été.jpg")
    assert head["ContentType"] == "image/jpeg"
    [record] = records(proc.stderr)
    assert record["status"] == "SUCCEEDED"
    assert record["input"]["provider"] == "minio.default" and record["input"]["user"] == "alice"
    assert sorted(record["outputs"]) == [f"{bucket}/out/key.txt", f"{bucket}/out/photo one+été.jpg"]
    assert record["bytes_in"] == len(PNG) and record["exit_code"] == 0
    assert {"download", "handler", "upload", "total"} <= set(record["timings"])
    assert "processed photo one+été.jpg" in record["log_tail"]
    assert proc.stdout == b""  # storage events answer nothing on stdout
    assert list(d.scratch.iterdir()) == []  # work directories removed
    assert keys(s3_client, bucket, "in/") == ["in/photo one+été.jpg"]


def test_s3_event_with_three_records(deploy, s3_client, bucket) -> None:
    d = deploy(DARKNET_STYLE)
    d.definition["output"] = [{"storage_provider": "minio.default", "path": f"{bucket}/detections", "suffix": [".out"]}]
    names = ["in/dog.jpg", "in/sub/person.jpg", "in/horses.jpg"]
    for name in names:
        s3_client.put_object(Bucket=bucket, Key=name, Body=name.encode())
    proc = d.run(s3_event(bucket, names), platform="batch", AWS_BATCH_JOB_ID="job-123")
    assert proc.returncode == 0, proc.stderr.decode()
    assert keys(s3_client, bucket, "detections/") == [
        "detections/dog.out",
        "detections/horses.out",
        "detections/person.out",
    ]
    assert body(s3_client, bucket, "detections/person.out") == b"detected in person\n"
    recs = records(proc.stderr)
    assert [r["status"] for r in recs] == ["SUCCEEDED"] * 3
    assert [r["input"]["key"] for r in recs] == names
    assert {r["job_id"] for r in recs} == {"job-123"}
    ours = [line for line in proc.stderr.decode().splitlines() if re.search(r" conveyor(\.[\w.]+)?: ", line)]
    assert ours and all("[job-123]" in line for line in ours)  # Conveyor's loggers: conveyor, conveyor.process ...


def test_inline_sync_payload_answers_with_the_output(deploy, bucket) -> None:
    script = '#!/bin/sh\ncase "$INPUT_FILE_PATH" in *.png) cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/r.png";; esac\n'
    d = deploy(script)
    d.definition["output"] = []
    proc = d.run(None, stdin=base64.b64encode(PNG) + b"\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == base64.b64encode(PNG) + b"\n"  # one newline ends it, as faas-supervisor's print()
    [record] = records(proc.stderr)
    assert record["input"]["inline"] is True and record["input"]["file_name"].endswith(".png")


def test_sync_payload_without_output_file_answers_with_stdout(deploy) -> None:
    d = deploy('#!/bin/sh\necho "size=$(wc -c < "$INPUT_FILE_PATH")"\n')
    d.definition["output"] = []
    proc = d.run(None, stdin=b"hello there")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"size=11\n" + b"\n"  # the model's stdout, then the response's own newline


def test_mangled_stdin_falls_back_to_the_event_variable(deploy, s3_client, bucket) -> None:
    d = deploy()
    s3_client.put_object(Bucket=bucket, Key="in/a.txt", Body=b"a")
    event = json.dumps(oscar_event(bucket, "in/a.txt"))
    # What `echo $EVENT | worker` does to JSON with the variable unquoted: quotes are lost.
    mangled = event.replace('"', "").encode()
    proc = d.run(None, stdin=mangled, EVENT=event)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "out/a.txt" in keys(s3_client, bucket, "out/")


def test_failing_script_uploads_nothing(deploy, s3_client, bucket) -> None:
    d = deploy('#!/bin/sh\necho partial > "$TMP_OUTPUT_DIR/partial.txt"\necho "model crashed" >&2\nexit 3\n')
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 70, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["exit_code"] == 3
    assert record["error"]["kind"] == "handler" and "code 3" in record["error"]["message"]
    assert "model crashed" in record["log_tail"]
    assert keys(s3_client, bucket, "out/") == []
    assert keys(s3_client, bucket, "in/") == ["in/x.bin"]
    assert list(d.scratch.iterdir()) == []


def test_script_past_its_deadline_is_killed(deploy, s3_client, bucket) -> None:
    script = '#!/bin/sh\necho $$ > "$MARKERS/pid"\necho partial > "$TMP_OUTPUT_DIR/p.txt"\nexec sleep 300\n'
    d = deploy(script, timeout=1)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 124, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "timeout"
    assert keys(s3_client, bucket, "out/") == []
    assert_no_process(d.markers / "pid")


def test_script_that_writes_nothing_fails(deploy, s3_client, bucket) -> None:
    d = deploy("#!/bin/sh\necho 'thinking hard'\n")
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 70, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "no-output"
    assert record["exit_code"] == 0


def test_grandchild_left_behind_is_killed(deploy, s3_client, bucket) -> None:
    script = (
        '#!/bin/sh\nsleep 300 &\necho $! > "$MARKERS/pid"\n'
        'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\nexit 0\n'
    )
    d = deploy(script)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert keys(s3_client, bucket, "out/") == ["out/x.bin"]
    assert_no_process(d.markers / "pid")


def test_sigterm_mid_run_stops_the_model_and_uploads_nothing(deploy, s3_client, bucket) -> None:
    script = (
        '#!/bin/sh\necho $$ > "$MARKERS/pid"\necho partial > "$TMP_OUTPUT_DIR/p.txt"\n'
        'touch "$MARKERS/started"\nexec sleep 300\n'
    )
    d = deploy(script)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = d.popen(oscar_event(bucket, "in/x.bin"))
    proc.stdin.write(json.dumps(oscar_event(bucket, "in/x.bin")).encode())
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch it again
    deadline = time.monotonic() + 30
    while not (d.markers / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the script never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr.decode()
    [record] = records(stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "interrupted"
    assert keys(s3_client, bucket, "out/") == []
    assert_no_process(d.markers / "pid")


def test_unreachable_storage_at_download(deploy, bucket, closed_port) -> None:
    d = deploy()
    d.definition["storage_providers"]["minio"]["default"]["endpoint"] = f"http://127.0.0.1:{closed_port}"
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 74, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "storage"
    assert str(closed_port) in record["error"]["message"] or bucket in record["error"]["message"]


def test_unreachable_storage_at_upload(deploy, s3_client, bucket, closed_port) -> None:
    d = deploy(withdraw_timeout=1)
    d.definition["storage_providers"]["minio"]["down"] = {
        "endpoint": f"http://127.0.0.1:{closed_port}",
        "access_key": "k",
        "secret_key": "s",
    }
    d.definition["output"] = [
        {"storage_provider": "minio.default", "path": f"{bucket}/out"},
        {"storage_provider": "minio.down", "path": f"{bucket}/elsewhere"},
    ]
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 74, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "storage"
    assert record["outputs"] == []
    assert keys(s3_client, bucket, "out/") == []  # what reached the first destination was withdrawn
    assert "withdrew" in proc.stderr.decode()
    # The check of the second destination's key (before its upload) found the store down: nothing
    # was sent there, so nothing is left to withdraw.
    assert "not_withdrawn" not in record["extra"]
    assert keys(s3_client, bucket, "in/") == ["in/x.bin"]


def test_an_upload_whose_answer_was_lost_is_withdrawn(deploy, s3_client, bucket) -> None:
    """The server stored the object, but its answer never came (it died, or the network did): the
    record fails, and the object the client never saw confirmed is removed with the others."""
    d = deploy()
    proxy = LostAnswers(d.server.endpoint, method="PUT", path_part=f"/{bucket}/out/x.bin")
    minio = d.definition["storage_providers"]["minio"]
    minio["lossy"] = {**minio["default"], "endpoint": proxy.endpoint}
    d.definition["output"] = [{"storage_provider": "minio.lossy", "path": f"{bucket}/out"}]
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    try:
        proc = d.run(oscar_event(bucket, "in/x.bin"))
    finally:
        proxy.close()
    assert proc.returncode == 74, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "storage"
    assert record["outputs"] == [] and "not_withdrawn" not in record["extra"]
    assert proxy.dropped, proxy.errors  # the PUT of out/x.bin reached the server ...
    assert all(b" 200 " in status for _, status in proxy.dropped), proxy.dropped  # ... which stored it
    assert keys(s3_client, bucket, "out/") == []  # out/key.txt and the unconfirmed out/x.bin: withdrawn
    stderr = proc.stderr.decode()
    assert f"withdrew {bucket}/out/key.txt" in stderr and f"withdrew {bucket}/out/x.bin" in stderr


def run_in_process(d: Deployment, event: Any, **job: Any) -> list[dict[str, Any]]:
    """What `conveyor run --platform oscar` does with the event, in this process: for Job fields
    (withdraw_backoff) that a real process does not take."""
    from conveyor.config import load_config
    from conveyor.events import load_event
    from conveyor.handler import load_handler
    from conveyor.job import Job, Stores
    from conveyor.platform import Platform
    from conveyor.process import run_event

    environ = d.env()
    config = load_config(environ, Platform.OSCAR, path=d.write(), secrets_dir=None)
    handler = load_handler(config)
    try:
        run = Job(config=config, platform=Platform.OSCAR, handler=handler, stores=Stores(config),
                  base_env=environ, scratch_dir=d.scratch, request_id="in-process", **job)
        return [r.to_dict() for r in run_event(run, load_event(json.dumps(event).encode()))]
    finally:
        handler.close()


def test_withdrawal_waits_for_a_store_that_comes_back(tmp_path, s3_server_factory, caplog) -> None:
    """The store goes down in the middle of a record's uploads and is back a few seconds later
    (restarted): the uploads that had succeeded are withdrawn once it answers again. (In this process, to retry
    every 0.1-0.5 s instead of 0.5-4 s, and so to give up sooner.)"""
    caplog.set_level(logging.INFO)
    server = s3_server_factory()
    client = server.client()
    bucket = unique_bucket_name("back")
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    d = Deployment(tmp_path, server, bucket, COPY_SCRIPT, withdraw_timeout=WITHDRAW_WINDOW)
    back = threading.Event()

    def restart_later() -> None:
        time.sleep(2)
        server.start()
        back.set()

    def store_goes_down() -> None:  # at the first upload to the second destination
        server.stop()
        threading.Thread(target=restart_later, daemon=True).start()

    trap = Trap(store_goes_down)
    minio = d.definition["storage_providers"]["minio"]
    minio["trap"] = {**minio["default"], "endpoint": trap.endpoint}
    d.definition["output"] = [
        {"storage_provider": "minio.default", "path": f"{bucket}/out"},
        {"storage_provider": "minio.trap", "path": f"{bucket}/elsewhere"},
    ]
    try:
        [record] = run_in_process(d, oscar_event(bucket, "in/x.bin"), withdraw_backoff=(0.1, 0.5))
    finally:
        trap.close()
    assert back.wait(60), "the store was not restarted"
    assert exit_code_for(record["error"]["kind"]) == 74, record
    assert record["status"] == "FAILED" and record["error"]["kind"] == "storage"
    assert record["outputs"] == []
    assert "not_withdrawn" not in record["extra"]  # the trap failed the check before its upload: nothing sent
    stderr = caplog.text
    assert "cannot withdraw" in stderr and "retrying" in stderr  # the store was down at first
    assert keys(client, bucket, "out/") == []  # both were uploaded before it went down
    assert keys(client, bucket, "in/") == ["in/x.bin"]


def test_missing_credentials(deploy, bucket) -> None:
    d = deploy()
    d.definition["storage_providers"]["minio"]["default"].update(access_key="hidden", secret_key="hidden")
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 77, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "credentials"


def test_wrong_credentials(deploy, bucket) -> None:
    d = deploy()
    d.definition["storage_providers"]["minio"]["default"]["secret_key"] = "not-the-secret"
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 77, proc.stderr.decode()


def test_rerun_overwrites_the_same_keys(deploy, s3_client, bucket) -> None:
    d = deploy()
    s3_client.put_object(Bucket=bucket, Key="in/r.txt", Body=b"r")
    first = d.run(oscar_event(bucket, "in/r.txt"))
    second = d.run(oscar_event(bucket, "in/r.txt"))
    assert first.returncode == second.returncode == 0
    assert keys(s3_client, bucket, "out/") == ["out/key.txt", "out/r.txt"]
    assert records(first.stderr)[0]["outputs"] == records(second.stderr)[0]["outputs"]


def test_result_record_uploaded_to_the_status_location(deploy, s3_client, bucket) -> None:
    d = deploy(status={"storage_provider": "minio.default", "path": f"{bucket}/status"})
    s3_client.put_object(Bucket=bucket, Key="in/r.txt", Body=b"r")
    proc = d.run(oscar_event(bucket, "in/r.txt"))
    assert proc.returncode == 0, proc.stderr.decode()
    [record] = records(proc.stderr)
    stored_bucket, stored_key = status_key(
        IOSpec(ProviderRef("minio"), f"{bucket}/status"),
        ResultRecord(
            input=record["input"], platform="oscar", request_id="r", handler="script", status=Status.SUCCEEDED
        ),
    )
    assert stored_key == f"status/{bucket}/in/r.txt.json"
    stored = json.loads(body(s3_client, stored_bucket, stored_key))
    assert stored["status"] == "SUCCEEDED" and stored["outputs"] == record["outputs"]


# The model says it has started, then waits for the test's go-ahead: the record is in flight as long as the test wants.
WAITING_SCRIPT = """#!/bin/sh
touch "$MARKERS/started"
i=0
while [ ! -e "$MARKERS/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"
"""


def start_run(d: Deployment, event: Any) -> Any:
    """`conveyor run` on `event`, in the background."""
    proc = d.popen(event)
    proc.stdin.write(json.dumps(event).encode())
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch it again
    return proc


def wait_until(predicate: Any, what: str, proc: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"conveyor run exited ({proc.returncode}) while waiting for {what}: {err.decode()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def test_a_start_record_shows_the_input_running_until_the_final_record_replaces_it(deploy, s3_client, bucket) -> None:
    d = deploy(WAITING_SCRIPT, status={"storage_provider": "minio.default", "path": f"{bucket}/status"})
    s3_client.put_object(Bucket=bucket, Key="in/slow.txt", Body=b"slow")
    proc = start_run(d, oscar_event(bucket, "in/slow.txt"))

    def stored() -> dict[str, Any] | None:
        try:
            return json.loads(body(s3_client, bucket, f"status/{bucket}/in/slow.txt.json"))
        except s3_client.exceptions.NoSuchKey:
            return None

    try:
        wait_until(lambda: (d.markers / "started").exists(), "the model to start", proc)
        start = stored()  # written before the model ran: it must be there now, while the model waits
        assert start is not None, "no start record while the model runs"
        assert start["status"] == "RUNNING" and start["finished_at"] == "" and start["started_at"]
        assert start["input"]["key"] == "in/slow.txt" and start["outputs"] == [] and start["error"] is None
    finally:
        (d.markers / "go").touch()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    [record] = records(err)
    final = stored()
    assert final == record and final["status"] == "SUCCEEDED"
    assert final["request_id"] == start["request_id"] and final["started_at"] == start["started_at"]
    assert datetime.fromisoformat(final["started_at"]) <= datetime.fromisoformat(final["finished_at"])
    assert "status_start_error" not in final["extra"]


def test_a_status_store_that_refuses_the_start_record_does_not_fail_the_input(deploy, s3_client, bucket) -> None:
    """The status bucket does not exist when the record starts (the store refuses the start PUT) and
    is created while the model runs: the input succeeds and its final record is stored."""
    status_bucket = unique_bucket_name("late-status")
    d = deploy(WAITING_SCRIPT, status={"storage_provider": "minio.default", "path": f"{status_bucket}/records"})
    s3_client.put_object(Bucket=bucket, Key="in/x.txt", Body=b"x")
    proc = start_run(d, oscar_event(bucket, "in/x.txt"))
    try:
        wait_until(lambda: (d.markers / "started").exists(), "the model to start", proc)
        s3_client.create_bucket(Bucket=status_bucket)
    finally:
        (d.markers / "go").touch()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    [record] = records(err)
    assert record["status"] == "SUCCEEDED" and record["outputs"] == [f"{bucket}/out/x.txt"]
    assert "could not upload the start record" in err.decode()
    assert record["extra"]["status_start_error"]
    stored = json.loads(body(s3_client, status_bucket, f"records/{bucket}/in/x.txt.json"))
    assert stored == record


@pytest.mark.parametrize(
    "key", ["../../escape.txt", "/etc/passwd", "a/../../../b.txt", "d/" + "é" * 200 + ".txt", "in/..", "in/ "]
)
def test_hostile_keys_stay_inside_the_work_directory(deploy, s3_client, bucket, key, tmp_path) -> None:
    """Keys the server stores are processed inside the work dir; keys it refuses (a forged event)
    fail as a storage error. Either way nothing is written outside the scratch folder."""
    d = deploy('#!/bin/sh\necho "$INPUT_FILE_PATH" > "$MARKERS/path"\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n')
    d.definition["conveyor"]["accept_any_input"] = True  # these keys are outside in/: fetch them all the same
    d.write()
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"hostile")
        stored = True
    except s3_client.exceptions.ClientError:
        stored = False  # SeaweedFS refuses '..' segments and over-long keys: the event is forged
    proc = d.run(oscar_event(bucket, key))
    if stored:
        assert proc.returncode == 0, proc.stderr.decode()
        local = Path((d.markers / "path").read_text().strip())
        assert local.parent.parent.parent == d.scratch  # <scratch>/conveyor-XXXX/input/<name>
        assert local.name == safe_file_name(key)
    else:
        assert proc.returncode == 74, proc.stderr.decode()
        [record] = records(proc.stderr)
        assert record["status"] == "FAILED" and record["error"]["kind"] == "storage"
        assert not (d.markers / "path").exists()
    assert list(d.scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not Path("/escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_removal_notifications_are_skipped(deploy, s3_client, bucket) -> None:
    d = deploy()
    s3_client.put_object(Bucket=bucket, Key="in/kept.txt", Body=b"k")
    event = s3_event(bucket, ["in/gone.txt", "in/kept.txt"])
    event["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    proc = d.run(event)
    assert proc.returncode == 0, proc.stderr.decode()
    assert [r["input"]["key"] for r in records(proc.stderr)] == ["in/kept.txt"]
    assert "skipping 1 removal notification" in proc.stderr.decode()


def test_in_process_model_output_never_reaches_the_sync_response(deploy) -> None:
    d = deploy(None, handler={"name": "tests.support.printing_handler:PrintingHandler"})
    d.definition["output"] = []
    proc = d.run(None, stdin=PNG)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == base64.b64encode(PNG) + b"\n"
    assert b"chatty model: loading weights..." in proc.stderr
    assert b"chatty model: from a C library" in proc.stderr


@pytest.mark.parametrize("damage", ["truncated", "invalid-utf8"])
def test_malformed_storage_event_is_refused(deploy, s3_client, bucket, damage) -> None:
    """Issue 14, item 4: a storage event cut short, or holding a byte that is not UTF-8, is a malformed
    event (65): the model does not run on its text, nothing is downloaded or uploaded."""
    d = deploy('#!/bin/sh\ntouch "$MARKERS/ran"\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n')
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    text = json.dumps(s3_event(bucket, ["in/x.bin"])).encode()
    data = text[: len(text) // 2] if damage == "truncated" else text.replace(b"in/x.bin", b"in/x\xff.bin")
    proc = d.run(None, stdin=data)
    assert proc.returncode == 65, proc.stderr.decode()
    assert not (d.markers / "ran").exists()  # no model run
    assert keys(s3_client, bucket, "out/") == []
    assert "downloaded" not in proc.stderr.decode()
    assert "malformed" in proc.stderr.decode()
    assert list(d.scratch.iterdir()) == []


@pytest.mark.parametrize("refusal", ["missing-bucket", "bad-credentials"])
@pytest.mark.parametrize("provider", ["minio", "s3"])
def test_an_upload_the_server_refuses_is_not_retried(deploy, s3_client, bucket, s3_server, provider, refusal) -> None:
    """Issue 14, item 9: a 4xx answer (NoSuchBucket 404, refused credentials 403) is permanent: the
    upload fails at once, its withdrawal does not keep asking for withdraw_timeout (it took ~28 s),
    and the record says why."""
    proxy = LostAnswers(s3_server.endpoint, method="NONE")  # forwards everything, counts requests
    try:
        d = deploy()
        providers = d.definition["storage_providers"][provider]
        providers["out"] = {**providers["default"], "endpoint": proxy.endpoint}
        target = unique_bucket_name("missing") if refusal == "missing-bucket" else bucket
        if refusal == "bad-credentials":
            providers["out"]["secret_key"] = "not-the-secret-key"
        d.definition["output"] = [{"storage_provider": f"{provider}.out", "path": f"{target}/out"}]
        s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
        proc = d.run(oscar_event(bucket, "in/x.bin"))
    finally:
        proxy.close()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED", proc.stderr.decode()
    if refusal == "missing-bucket":
        assert proc.returncode == 74 and record["error"]["kind"] == "storage"
        assert "bucket not found" in record["error"]["message"] and record["error"]["status"] == 404
        assert "not_withdrawn" not in record["extra"]  # no bucket: nothing of it is left
    else:
        assert proc.returncode == 77 and record["error"]["kind"] == "credentials"
        assert "credentials refused" in record["error"]["message"] and record["error"]["status"] == 403
    # The first upload fails (one request, or two with the SDK's location lookup), its removal is asked
    # once, the second file is never sent. Retrying over a withdraw_timeout (30 s) made it dozens.
    assert len(proxy.seen) <= 4, b"\n".join(proxy.seen).decode()
    assert "retrying" not in proc.stderr.decode()
    assert keys(s3_client, bucket, "out/") == []


# printf formats of output names: a literal backslash name (what the attack wrote), undecodable
# bytes, both, and a name that is fine (a decomposed é, a space): only what would be rewritten fails.
_ODD_NAMES = {
    "backslash": r"e\\xcc\\x81.txt",
    "undecodable": r"bad\377\376.txt",
    "both": r"dir\\caf\303.txt",
    "fine": r"e\314\201 ok.txt",
}


@pytest.mark.parametrize("provider", ["minio", "s3"])
@pytest.mark.parametrize("name", list(_ODD_NAMES))
def test_the_record_names_the_keys_actually_written(deploy, s3_client, bucket, provider, name) -> None:
    """Issue 14, item 9: an output named `e\\xcc\\x81.txt` was stored as out/e/xcc/x81.txt while the
    record named another key. The record's outputs are the keys in the bucket afterwards: a name a
    store would rewrite (or cannot carry) fails the record before any upload, with a clear error."""
    d = deploy(
        "#!/bin/sh\n"
        'echo kept > "$TMP_OUTPUT_DIR/kept.txt"\n'
        f"echo odd > \"$TMP_OUTPUT_DIR/$(printf '{_ODD_NAMES[name]}')\"\n"
    )
    d.definition["output"] = [{"storage_provider": f"{provider}.default", "path": f"{bucket}/out"}]
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = d.run(s3_event(bucket, ["in/x.bin"]))
    [record] = records(proc.stderr)
    stored = [f"{bucket}/{key}" for key in keys(s3_client, bucket, "out/")]
    assert sorted(record["outputs"]) == stored, proc.stderr.decode(errors="replace")
    if name == "fine":
        assert proc.returncode == 0 and stored == [f"{bucket}/out/e\u0301 ok.txt", f"{bucket}/out/kept.txt"]
        return
    assert proc.returncode == 74, proc.stderr.decode(errors="replace")
    assert record["status"] == "FAILED" and record["error"]["cause"] == "InvalidKey"
    problem = "backslash" if name == "backslash" else "not UTF-8"
    assert problem in record["error"]["message"] and "nothing was uploaded" in record["error"]["message"]
    assert stored == [] and "not_withdrawn" not in record["extra"]
