"""The pipeline in-process: `run_event` and `LambdaApp` over the local folder store with a recording
handler (tests/support/inprocess.py). Milliseconds per test; the same behaviours end to end, with a
real S3 server and `conveyor run` as a process, are in test_pipeline.py and test_lambda.py.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from conveyor.errors import ConveyorError, DelegationError, HandlerError, HandlerTimeout
from conveyor.events import load_event
from conveyor.handler import Invocation
from conveyor.platform import Platform
from conveyor.records import Status, results_in
from tests.support.inprocess import (
    FakeBatch,
    FakeContext,
    Pipeline,
    body_records,
    decode_body,
    http_event,
    storage_record,
)

EVENTS = Path(__file__).parent / "events"


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    return Pipeline(tmp_path)


def key_of(inv: Invocation) -> str | None:
    return getattr(inv.input, "key", None)


# -- storage events: every record, one input each, outputs where the rules say -------------------------


def test_every_record_of_a_storage_event_is_processed_with_its_own_input(pipe: Pipeline) -> None:
    names = ["a.txt", "sub/b.bin", "photo one+été.jpg"]
    for i, name in enumerate(names):
        pipe.put("in", name, f"content {i}".encode())
    records = pipe.run(pipe.storage_event("in", names))
    assert [r.status for r in records] == [Status.SUCCEEDED] * 3
    assert [r.input["key"] for r in records] == names
    calls = pipe.handler.calls
    assert [c.input_bytes for c in calls] == [b"content 0", b"content 1", b"content 2"]
    assert [c.input_dir_listing for c in calls] == [["a.txt"], ["b.bin"], ["photo one+été.jpg"]]
    assert len({c.dirs for c in calls}) == 3  # a fresh work directory per record
    assert pipe.keys("out") == ["a.txt", "b.bin", "photo one+été.jpg"]
    assert pipe.read("out", "b.bin") == b"content 1"
    assert [r.outputs for r in records] == [["out/a.txt"], ["out/b.bin"], ["out/photo one+été.jpg"]]
    assert pipe.keys("in") == sorted(names)  # inputs untouched
    assert list(pipe.scratch.iterdir()) == []  # work directories removed


def test_outputs_follow_the_path_prefix_and_suffix_rules(pipe: Pipeline) -> None:
    pipe.definition["output"] = [
        {"storage_provider": "local.default", "path": "out/images", "suffix": [".png"]},
        {"storage_provider": "local.default", "path": "out/reports", "prefix": ["report/"]},
        {"storage_provider": "local", "path": "out/all"},
        {"storage_provider": "local.default", "path": "out/never", "suffix": [".tiff"]},
    ]
    pipe.put("in", "x.bin", b"x")
    pipe.handler.outputs = {"a.png": b"png", "report/r.json": b"{}", "notes.txt": b"n"}
    [record] = pipe.run(pipe.storage_event("in", ["x.bin"]))
    assert record.status is Status.SUCCEEDED
    expected = ["all/a.png", "all/notes.txt", "all/report/r.json", "images/a.png", "reports/report/r.json"]
    assert pipe.keys("out") == expected
    assert sorted(record.outputs) == [f"out/{key}" for key in expected]
    assert pipe.read("out", "reports/report/r.json") == b"{}"
    assert record.bytes_out == len(b"png") * 2 + len(b"{}") * 2 + len(b"n")


def test_user_isolation_redirects_outputs_to_the_event_bucket(pipe: Pipeline) -> None:
    (pipe.root / "alice").mkdir()
    pipe.definition.update(isolation_level="USER", bucket_list=["alice"])
    pipe.definition["output"] = [{"storage_provider": "local.default", "path": "out/results"}]
    pipe.put("alice", "photo.jpg", b"alice's")
    pipe.put("in", "photo.jpg", b"shared")
    [own] = pipe.run(pipe.storage_event("alice", ["photo.jpg"]))
    [shared] = pipe.run(pipe.storage_event("in", ["photo.jpg"]))  # "in" is not in bucket_list
    assert own.outputs == ["alice/results/photo.jpg"]
    assert pipe.read("alice", "results/photo.jpg") == b"alice's"
    assert shared.outputs == ["out/results/photo.jpg"]
    assert pipe.keys("out") == ["results/photo.jpg"] and pipe.read("out", "results/photo.jpg") == b"shared"


# -- the result record -------------------------------------------------------------------------------


def test_result_record_fields(pipe: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    pipe.put("in", "a.txt", b"12345")
    pipe.put("in", "b.txt", b"678")
    pipe.handler.details = {"model": "v1"}
    pipe.handler.log = "model says hi\n"
    caplog.set_level(logging.INFO)
    first, second = pipe.run(
        pipe.storage_event("in", ["a.txt", "b.txt"]),
        platform=Platform.BATCH,
        request_id="req-9",
        job_id="job-7",
        extra={"attempt": 2},
    )
    assert first.to_dict()["status"] == "SUCCEEDED" and first.ok
    assert first.input == {
        "bucket": "in",
        "key": "a.txt",
        "size": 5,
        "etag": "etag",
        "version_id": None,
        "event_time": "2026-12-03T10:00:00.000Z",
        "user": "alice",
        "provider": "local.default",
        "source": "minio:s3",
        "endpoint": None,
        "event_name": "s3:ObjectCreated:Put",
        "inline": False,
    }
    assert (first.platform, first.request_id, first.job_id) == ("batch", "req-9", "job-7")
    assert first.handler == pipe.config.conveyor.handler.name
    assert (first.exit_code, first.error) == (0, None)
    assert (first.bytes_in, first.bytes_out, second.bytes_in) == (5, 5, 3)
    assert first.outputs == ["out/a.txt"]
    assert set(first.timings) == {"download", "handler", "upload", "total"}
    assert all(0 <= v < 5 for v in first.timings.values())
    assert first.log_tail == "model says hi\n"
    assert datetime.fromisoformat(first.started_at) <= datetime.fromisoformat(second.started_at)
    assert first.extra == {"attempt": 2, "warm_start": False, "model": "v1"}
    assert second.extra["warm_start"] is True and pipe.handler.setups == 1
    # The record protocol (conveyor.records): one log line per record, the same document.
    logged = results_in([r.getMessage() for r in caplog.records])
    assert logged == [json.loads(first.to_json()), json.loads(second.to_json())]


def test_status_records_are_uploaded_to_conveyor_status(pipe: Pipeline) -> None:
    pipe.definition["conveyor"]["status"] = {"storage_provider": "local.default", "path": "status/records"}
    pipe.put("in", "dir/a.txt", b"a")
    pipe.handler.raises = lambda inv: HandlerError("no b, please") if key_of(inv) == "dir/b.txt" else None
    pipe.put("in", "dir/b.txt", b"b")
    ok, failed = pipe.run(pipe.storage_event("in", ["dir/a.txt", "dir/b.txt"]))
    assert pipe.keys("status") == ["records/in/dir/a.txt.json", "records/in/dir/b.txt.json"]
    assert json.loads(pipe.read("status", "records/in/dir/a.txt.json")) == json.loads(ok.to_json())
    stored = json.loads(pipe.read("status", "records/in/dir/b.txt.json"))
    assert stored["status"] == "FAILED" and stored["error"]["message"] == "no b, please"
    assert stored == json.loads(failed.to_json())


def test_a_status_location_that_cannot_be_written_is_noted_in_the_record(pipe: Pipeline) -> None:
    pipe.definition["conveyor"]["status"] = {"storage_provider": "local.default", "path": "no-such-bucket/records"}
    pipe.put("in", "a.txt", b"a")
    [record] = pipe.run(pipe.storage_event("in", ["a.txt"]))
    assert record.status is Status.SUCCEEDED  # the work itself is done and published
    assert "bucket not found" in record.extra["status_upload_error"]
    assert pipe.keys("out") == ["a.txt"]


# -- failures: a FAILED record, its kind, nothing published -------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind", "message", "exit_code"),
    [
        (HandlerError("model exited with code 3", exit_code=3), "handler", "model exited with code 3", 3),
        (HandlerTimeout("killed after 1 s"), "timeout", "killed after 1 s", None),
        (ValueError("a bug in the model"), "internal", "ValueError: a bug in the model", None),
    ],
)
def test_a_failing_handler_fails_its_record_and_publishes_nothing(
    pipe: Pipeline, error: Exception, kind: str, message: str, exit_code: int | None
) -> None:
    pipe.put("in", "x.bin", b"x")
    pipe.handler.outputs = {"partial.txt": b"half", "x.bin": b"x"}
    pipe.handler.log = "loading...\ncrashed\n"
    pipe.handler.raises = error
    [record] = pipe.run(pipe.storage_event("in", ["x.bin"]))
    assert record.status is Status.FAILED and not record.ok
    assert record.error is not None
    assert (record.error["kind"], record.error["message"]) == (kind, message)
    assert record.exit_code == exit_code
    assert record.outputs == [] and record.bytes_out == 0
    assert pipe.keys("out") == []
    assert record.log_tail == "loading...\ncrashed\n"
    assert "upload" not in record.timings
    assert list(pipe.scratch.iterdir()) == []


def test_one_failed_record_does_not_stop_the_others(pipe: Pipeline) -> None:
    for name in ("a", "b", "c"):
        pipe.put("in", name, name.encode())
    pipe.handler.raises = lambda inv: HandlerError("b is bad") if key_of(inv) == "b" else None
    records = pipe.run(pipe.storage_event("in", ["a", "b", "c"]))
    assert [r.status for r in records] == [Status.SUCCEEDED, Status.FAILED, Status.SUCCEEDED]
    assert pipe.keys("out") == ["a", "c"]


def test_no_output_with_require_output(pipe: Pipeline) -> None:
    pipe.put("in", "x.bin", b"x")
    pipe.handler.outputs = {}
    [record] = pipe.run(pipe.storage_event("in", ["x.bin"]))  # auto: outputs configured, storage event
    assert record.status is Status.FAILED
    assert record.error is not None and record.error["kind"] == "no-output"
    assert record.exit_code == 0


def test_no_output_is_fine_when_require_output_is_false(pipe: Pipeline) -> None:
    pipe.definition["conveyor"]["require_output"] = False
    pipe.put("in", "x.bin", b"x")
    pipe.handler.outputs = {}
    [record] = pipe.run(pipe.storage_event("in", ["x.bin"]))
    assert record.status is Status.SUCCEEDED and record.outputs == []


def test_require_output_true_fails_a_silent_http_call(pipe: Pipeline) -> None:
    pipe.definition["conveyor"]["require_output"] = True
    pipe.handler.outputs = {}
    [record] = pipe.run(http_event(b"hello"), response=io.BytesIO())
    assert record.status is Status.FAILED
    assert record.error is not None and record.error["kind"] == "no-output"


def test_a_missing_input_object_fails_before_the_handler(pipe: Pipeline) -> None:
    [record] = pipe.run(pipe.storage_event("in", ["not-there.bin"]))
    assert record.status is Status.FAILED
    assert record.error is not None and record.error["kind"] == "storage"
    assert "not-there.bin" in record.error["message"]
    assert pipe.handler.calls == []


def test_a_failed_upload_withdraws_what_was_uploaded(pipe: Pipeline) -> None:
    pipe.definition["output"] = [
        {"storage_provider": "local.default", "path": "out/first"},
        {"storage_provider": "local.default", "path": "missing-bucket/second"},
    ]
    pipe.put("in", "x.bin", b"x")
    [record] = pipe.run(pipe.storage_event("in", ["x.bin"]))
    assert record.status is Status.FAILED
    assert record.error is not None and record.error["kind"] == "storage"
    assert pipe.keys("out") == []  # out/first/x.bin was uploaded, then withdrawn
    assert record.outputs == [] and "not_withdrawn" not in record.extra


# -- the synchronous response ------------------------------------------------------------------------


def test_sync_response_with_one_file_is_its_base64(pipe: Pipeline) -> None:
    pipe.definition["output"] = []
    pipe.handler.outputs = {"result.png": b"\x89PNG result"}
    body = io.BytesIO()
    [record] = pipe.run(http_event(b"\x89PNG\r\n\x1a\n input", "image/png"), response=body)
    assert record.status is Status.SUCCEEDED and record.extra["response"] == "file"
    assert base64.b64decode(body.getvalue(), validate=True) == b"\x89PNG result"
    assert pipe.handler.calls[0].input_bytes == b"\x89PNG\r\n\x1a\n input"


def test_sync_response_with_several_files_is_a_zip(pipe: Pipeline) -> None:
    pipe.definition["output"] = []
    pipe.handler.outputs = {"a.txt": b"A", "sub/b.txt": b"B"}
    body = io.BytesIO()
    [record] = pipe.run(http_event(b"in"), response=body)
    assert record.extra["response"] == "zip"
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(body.getvalue(), validate=True))) as zf:
        assert sorted(zf.namelist()) == ["a.txt", "sub/b.txt"]
        assert zf.read("sub/b.txt") == b"B"


def test_sync_response_without_a_file_is_the_models_stdout(pipe: Pipeline) -> None:
    pipe.handler.outputs = {}
    pipe.handler.stdout = b"size=5\n"
    body = io.BytesIO()
    [record] = pipe.run(http_event(b"hello"), response=body)
    assert record.status is Status.SUCCEEDED  # outputs configured, but the caller waits for a response
    assert record.extra["response"] == "stdout"
    assert body.getvalue() == b"size=5\n"


def test_storage_events_write_no_response(pipe: Pipeline) -> None:
    pipe.put("in", "x.bin", b"x")
    body = io.BytesIO()
    [record] = pipe.run(pipe.storage_event("in", ["x.bin"]), response=body)
    assert record.status is Status.SUCCEEDED and "response" not in record.extra
    assert body.getvalue() == b""


# -- events that run nothing ---------------------------------------------------------------------------


def test_removal_notifications_are_skipped(pipe: Pipeline) -> None:
    pipe.put("in", "new.txt", b"new")
    event = pipe.storage_event("in", ["new.txt"])
    event["event"]["Records"].append(storage_record("in", "gone.txt", event_name="s3:ObjectRemoved:Delete"))
    records = pipe.run(event)
    assert [r.input["key"] for r in records] == ["new.txt"]
    assert [c.input_name for c in pipe.handler.calls] == ["new.txt"]
    only_removed = pipe.storage_event("in", ["gone.txt"], event_name="s3:ObjectRemoved:Delete")
    assert pipe.run(only_removed) == []
    assert len(pipe.handler.calls) == 1


def test_s3_test_event_does_nothing(pipe: Pipeline) -> None:
    pipe.definition["conveyor"]["status"] = {"storage_provider": "local.default", "path": "status"}
    assert pipe.run(json.loads((EVENTS / "s3_test_event.json").read_text())) == []
    assert pipe.handler.calls == [] and pipe.handler.setups == 0
    assert pipe.keys("out") == [] and pipe.keys("status") == []


# -- shutdown --------------------------------------------------------------------------------------------


def test_shutdown_before_the_event_records_every_input_as_interrupted(pipe: Pipeline) -> None:
    pipe.put("in", "a", b"a")
    pipe.put("in", "b", b"b")
    job = pipe.job()
    job.shutdown.set()
    records = pipe.run(pipe.storage_event("in", ["a", "b"]), job=job)
    assert [r.status for r in records] == [Status.FAILED, Status.FAILED]
    assert [(r.error or {}).get("kind") for r in records] == ["interrupted", "interrupted"]
    assert pipe.handler.calls == [] and pipe.keys("out") == []


def test_shutdown_during_a_record_publishes_nothing_and_stops_the_rest(pipe: Pipeline) -> None:
    pipe.put("in", "a", b"a")
    pipe.put("in", "b", b"b")
    job = pipe.job()
    pipe.handler.on_call = lambda inv: job.shutdown.set()  # SIGTERM while the model runs
    records = pipe.run(pipe.storage_event("in", ["a", "b"]), job=job)
    assert [(r.error or {}).get("kind") for r in records] == ["interrupted", "interrupted"]
    assert [c.input_name for c in pipe.handler.calls] == ["a"]  # b never started
    assert pipe.keys("out") == []


# -- the child's environment ---------------------------------------------------------------------------


def test_the_child_environment_is_built_per_record(pipe: Pipeline) -> None:
    pipe.base_env.update(FDL="secret fdl", SCRIPT="c2NyaXB0", EVENT="stale", CONVEYOR_PLATFORM="oscar", KEEP="me")
    for name in ("a.txt", "b.txt"):
        pipe.put("in", name, name.encode())

    def leak(inv: Invocation) -> None:
        inv.env["LEAKED"] = key_of(inv)  # type: ignore[index]  # a handler scribbling on its env

    pipe.handler.on_call = leak
    job = pipe.job()
    pipe.run(pipe.storage_event("in", ["a.txt", "b.txt"]), job=job)
    first, second = (c.env for c in pipe.handler.calls)
    assert "LEAKED" not in second and "LEAKED" not in job.base_env
    assert first["STORAGE_OBJECT_KEY"] == "a.txt" and second["STORAGE_OBJECT_KEY"] == "b.txt"
    assert Path(first["INPUT_FILE_PATH"]).name == "a.txt"
    assert Path(first["INPUT_FILE_PATH"]).parent == Path(first["TMP_INPUT_DIR"])
    assert first["TMP_OUTPUT_DIR"] != second["TMP_OUTPUT_DIR"]
    for env in (first, second):
        assert env["KEEP"] == "me" and env["MODEL_MODE"] == "test"  # the process's and the definition's
        assert not {"FDL", "SCRIPT", "CONVEYOR_PLATFORM"} & set(env)  # Conveyor's own inputs stay private
        # the event, not the stale one; of OSCAR's delegation wrapper, the event inside (as faas-supervisor)
        assert [r["s3"]["object"]["key"] for r in json.loads(env["EVENT"])["Records"]] == ["a.txt", "b.txt"]
        assert "AWS_LAMBDA_REQUEST_ID" not in env  # OSCAR
    assert job.base_env["EVENT"] == "stale"


OSCAR_POD_ENV = {
    "OSCAR_SERVICE_NAME": "inprocess",
    "OSCAR_SERVICE_TOKEN": "svc-5ecr3t-token-0123456789",
    "OSCAR_SERVICE_BASE_PATH": "/system/services/inprocess/exposed",
    "JOB_UUID": "job-1c2d",
    "RESOURCE_ID": "node-3",
}


def test_oscar_variables_and_capital_variables_reach_the_model(pipe: Pipeline) -> None:
    pipe.base_env.update(OSCAR_POD_ENV)
    pipe.definition["environment"] = {"Variables": {"INPUT_TYPE": "json"}}  # as 10 of OSCAR's examples write it
    pipe.put("in", "a.txt", b"a")
    pipe.run(pipe.storage_event("in", ["a.txt"]))
    [call] = pipe.handler.calls
    assert {k: call.env[k] for k in OSCAR_POD_ENV} == OSCAR_POD_ENV  # unchanged, token included
    assert call.env["INPUT_TYPE"] == "json"


def test_a_secret_the_model_prints_is_masked_in_the_record(pipe: Pipeline) -> None:
    pipe.base_env.update(OSCAR_POD_ENV)
    pipe.definition["environment"] = {"variables": {"API_PASSWORD": "defined-pa55word"}}
    pipe.handler.log = "token svc-5ecr3t-token-0123456789 and defined-pa55word; short: node-3\n"
    pipe.put("in", "a.txt", b"a")
    [record] = pipe.run(pipe.storage_event("in", ["a.txt"]))
    assert record.log_tail == "token *** and ***; short: node-3\n"
    assert "5ecr3t" not in record.to_json() and "pa55word" not in record.to_json()


def test_query_parameters_reach_only_their_own_call(pipe: Pipeline) -> None:
    pipe.definition["output"] = []
    pipe.run(http_event(b"one", query={"leak": "secret-from-call-1"}), response=io.BytesIO())
    pipe.run(http_event(b"two"), response=io.BytesIO())
    first, second = (c.env for c in pipe.handler.calls)
    assert first["CONT_VAR_leak"] == "secret-from-call-1"
    assert not any(name.startswith("CONT_VAR_") for name in second)


# -- LambdaApp -----------------------------------------------------------------------------------------


def test_lambda_storage_event_then_a_warm_invocation(pipe: Pipeline) -> None:
    pipe.put("in", "a.png", b"A")
    pipe.put("in", "b.png", b"B")
    app = pipe.lambda_app()
    first = app(pipe.storage_event("in", ["a.png"]), FakeContext(aws_request_id="r-1"))
    second = app(pipe.storage_event("in", ["b.png"]), FakeContext(aws_request_id="r-2"))
    for response, request_id in ((first, "r-1"), (second, "r-2")):
        assert response["statusCode"] == 200
        assert response["headers"] == {
            "amz-lambda-request-id": request_id,
            "amz-log-group-name": "/aws/lambda/inprocess-fn",
            "amz-log-stream-name": "2026/12/03/[$LATEST]inprocess",
        }
    [one], [two] = body_records(first), body_records(second)
    assert (one["status"], one["request_id"], one["platform"]) == ("SUCCEEDED", "r-1", "lambda")
    assert one["extra"]["warm_start"] is False and two["extra"]["warm_start"] is True
    assert one["extra"]["function_name"] == "inprocess-fn" and one["extra"]["memory_limit_in_mb"] == "1024"
    assert two["outputs"] == ["out/b.png"] and pipe.keys("out") == ["a.png", "b.png"]
    assert pipe.handler.setups == 1
    assert [c.env["AWS_LAMBDA_REQUEST_ID"] for c in pipe.handler.calls] == ["r-1", "r-2"]
    assert app.invocations == 2


@pytest.mark.parametrize("error", [HandlerError("exit code 3"), HandlerTimeout("killed at the deadline")])
def test_lambda_storage_event_failure_raises_the_records_kind(pipe: Pipeline, error: HandlerError) -> None:
    pipe.put("in", "x.bin", b"x")
    pipe.put("in", "y.bin", b"y")
    pipe.handler.raises = lambda inv: error if key_of(inv) == "y.bin" else None
    app = pipe.lambda_app()
    with pytest.raises(ConveyorError) as caught:
        app(pipe.storage_event("in", ["x.bin", "y.bin"]), FakeContext())
    assert type(caught.value) is type(error)  # Lambda's errorType: HandlerError / HandlerTimeout
    assert caught.value.message == f"1 of 2 records failed: {error.message}"
    assert pipe.keys("out") == ["x.bin"]


def test_lambda_http_event_answers_200_with_the_output(pipe: Pipeline) -> None:
    pipe.definition["output"] = []
    pipe.handler.outputs = lambda inv: {"result.bin": b"out:" + inv.input_path.read_bytes()}  # type: ignore[union-attr]
    response = pipe.lambda_app()(http_event(b"payload"), FakeContext())
    assert response["statusCode"] == 200
    assert decode_body(response) == b"out:payload"


def test_lambda_http_event_answers_stdout_in_base64(pipe: Pipeline) -> None:
    pipe.handler.outputs = {}
    pipe.handler.stdout = b"\x00binary stdout\xff"
    response = pipe.lambda_app()(http_event(b"payload"), FakeContext())
    assert response["statusCode"] == 200
    assert decode_body(response) == b"\x00binary stdout\xff"


def test_lambda_http_event_failure_answers_500_with_the_records(pipe: Pipeline) -> None:
    pipe.definition["output"] = []
    pipe.handler.raises = HandlerError("the model exited with code 9", exit_code=9)
    response = pipe.lambda_app()(http_event(b"payload"), FakeContext())
    assert response["statusCode"] == 500
    [record] = body_records(response)
    assert (record["status"], record["exit_code"], record["error"]["kind"]) == ("FAILED", 9, "handler")


def test_lambda_deadline_is_the_contexts_minus_the_threshold(pipe: Pipeline) -> None:
    pipe.definition["timeout_threshold"] = 5
    pipe.put("in", "x", b"x")
    pipe.lambda_app()(pipe.storage_event("in", ["x"]), FakeContext(remaining_ms=30_000))
    [call] = pipe.handler.calls
    assert call.deadline_remaining is not None and 24 < call.deadline_remaining <= 25


def test_lambda_scratch_is_cleaned_after_each_invocation(pipe: Pipeline) -> None:
    (pipe.scratch / "from-the-image").write_text("kept")  # there before the invocation

    def litter(inv: Invocation) -> None:
        (pipe.scratch / "model-cache").mkdir()
        (pipe.scratch / "model-cache" / "w.bin").write_bytes(b"w")
        (pipe.scratch / "leftover.txt").write_text("x")

    pipe.handler.on_call = litter
    pipe.put("in", "x", b"x")
    app = pipe.lambda_app()
    app(pipe.storage_event("in", ["x"]), FakeContext())
    assert sorted(p.name for p in pipe.scratch.iterdir()) == ["from-the-image"]
    app(pipe.storage_event("in", ["x"]), FakeContext())  # the same litter again: no "exists" error
    assert sorted(p.name for p in pipe.scratch.iterdir()) == ["from-the-image"]


# -- lambda-batch: the hand-off, decided before anything is downloaded ------------------------------------


@pytest.mark.parametrize(
    ("conveyor", "reason"),
    [
        ({"lambda_max_size": 10}, "over conveyor.lambda_max_size"),
        ({"expected_duration": 600}, "expected duration"),
    ],
)
def test_lambda_batch_hands_off_before_download(pipe: Pipeline, conveyor: dict, reason: str) -> None:
    pipe.definition["execution_mode"] = "lambda-batch"
    pipe.definition["conveyor"].update(conveyor)
    batch = FakeBatch()
    # The object is not in the store at all: a download would fail the record.
    event = pipe.storage_event("in", ["big.bin"], sizes={"big.bin": 1000})
    response = pipe.lambda_app(batch)(event, FakeContext(aws_request_id="r-big", remaining_ms=60_000))
    assert response["statusCode"] == 200
    [record] = body_records(response)
    assert (record["status"], record["job_id"]) == ("DELEGATED", "job-1")
    assert reason in record["extra"]["delegation_reason"]
    assert pipe.handler.calls == [] and list(pipe.scratch.iterdir()) == []
    [request] = batch.submitted
    assert request["jobName"] == request["jobQueue"] == request["jobDefinition"] == "inprocess-fn"
    env = {e["name"]: e["value"] for e in request["containerOverrides"]["environment"]}
    assert json.loads(env["EVENT"]) == event and env["AWS_LAMBDA_REQUEST_ID"] == "r-big"


def test_lambda_batch_runs_what_fits_in_lambda(pipe: Pipeline) -> None:
    pipe.definition["execution_mode"] = "lambda-batch"
    pipe.definition["conveyor"].update(lambda_max_size=10, expected_duration=5)
    pipe.put("in", "small.bin", b"small")
    batch = FakeBatch()
    response = pipe.lambda_app(batch)(pipe.storage_event("in", ["small.bin"]), FakeContext())
    assert [r["status"] for r in body_records(response)] == ["SUCCEEDED"]
    assert batch.submitted == [] and pipe.keys("out") == ["small.bin"]


def test_lambda_batch_hands_off_after_the_deadline_killed_the_run(pipe: Pipeline) -> None:
    pipe.definition["execution_mode"] = "lambda-batch"
    pipe.definition["timeout_threshold"] = 1
    pipe.put("in", "slow.bin", b"slow")

    def outlive_the_deadline(inv: Invocation) -> HandlerTimeout:
        time.sleep((inv.deadline.remaining() or 0) + 0.02)
        return HandlerTimeout("killed at the deadline")

    pipe.handler.raises = outlive_the_deadline
    batch = FakeBatch()
    response = pipe.lambda_app(batch)(pipe.storage_event("in", ["slow.bin"]), FakeContext(remaining_ms=1_100))
    assert response["statusCode"] == 200
    [record] = body_records(response)
    assert (record["status"], record["job_id"]) == ("DELEGATED", "job-1")
    assert "deadline" in record["extra"]["delegation_reason"]
    assert len(batch.submitted) == 1 and pipe.keys("out") == []


def test_batch_mode_in_lambda_submits_at_once(pipe: Pipeline) -> None:
    pipe.definition["execution_mode"] = "batch"
    batch = FakeBatch()
    event = pipe.storage_event("in", ["a", "b"], sizes={"a": 1, "b": 1})
    response = pipe.lambda_app(batch)(event, FakeContext())
    assert [r["status"] for r in body_records(response)] == ["DELEGATED", "DELEGATED"]
    assert len(batch.submitted) == 1 and pipe.handler.calls == []


def test_a_refused_hand_off_fails_the_invocation(pipe: Pipeline) -> None:
    pipe.definition["execution_mode"] = "batch"
    batch = FakeBatch(error=RuntimeError("no such queue"))
    with pytest.raises(DelegationError, match="no such queue"):
        pipe.lambda_app(batch)(pipe.storage_event("in", ["a"], sizes={"a": 1}), FakeContext())


def test_the_event_parser_and_the_pipeline_agree_on_the_local_provider(pipe: Pipeline) -> None:
    """The helper's events name the local provider; a plain S3 event would go to AWS instead."""
    event = load_event(pipe.storage_event("in", ["a"]))
    assert [inp.provider for inp in event.inputs] == ["local.default"]  # type: ignore[union-attr]


# -- a withdrawal asks again only what may change (issue 14, item 9) --------------------------------


class _RefusingStore:
    """delete() fails with the HTTP status given per key; counts the calls."""

    def __init__(self, statuses: dict[str, int]) -> None:
        self.statuses, self.calls = statuses, {key: 0 for key in statuses}

    def delete(self, bucket: str, key: str) -> None:
        from conveyor.errors import StorageError

        self.calls[key] += 1
        raise StorageError(f"delete {bucket}/{key} failed", status=self.statuses[key])


def test_a_withdrawal_the_store_refuses_is_not_retried_and_a_5xx_is() -> None:
    import threading
    from types import SimpleNamespace

    from conveyor.config import ProviderRef
    from conveyor.deadline import Deadline
    from conveyor.outputs import Upload
    from conveyor.publish import withdraw

    store = _RefusingStore({"out/denied": 403, "out/busy": 503})
    job = SimpleNamespace(
        shutdown=threading.Event(),
        config=SimpleNamespace(conveyor=SimpleNamespace(withdraw_timeout=0.3)),
        deadline=Deadline.never(),
        withdraw_backoff=(0.01, 0.02),
        stores=SimpleNamespace(get=lambda provider: store),
    )
    ref = ProviderRef("minio", "default")
    uploads = [Upload(Path(key), key, ref, "b", key) for key in ("out/denied", "out/busy")]
    left = withdraw(job, uploads)  # type: ignore[arg-type]
    assert left == ["b/out/denied", "b/out/busy"]  # neither could be removed: the record names both
    assert store.calls["out/denied"] == 1  # 403: the same answer next time, asked once
    assert store.calls["out/busy"] > 2  # 503: asked again until withdraw_timeout
