"""Conveyor under the real Lambda Runtime Interface Emulator, driven over HTTP on loopback, and the
lambda-batch hand-off received by moto's Batch API (the one AWS part that cannot exist here).

The emulator runs Conveyor's single entrypoint exactly as a container image would: it sets
AWS_LAMBDA_RUNTIME_API, `conveyor run` detects Lambda and enters the awslambdaric loop.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.emulator import LambdaEmulator, ensure_rie
from tests.support.pipeline import PNG, body, keys, minio_event, records
from tests.support.requirements import missing

FUNCTION = "conveyor-test"


@pytest.fixture(scope="session")
def rie_binary() -> Path:
    try:
        return ensure_rie()
    except Exception as exc:  # pragma: no cover - only without the registry
        missing(f"the Lambda emulator could not be fetched from the aws-sam-cli wheel: {exc}")


@pytest.fixture
def moto_batch():
    """moto's Batch (tests/support/batch.py) with a queue, a job definition and a compute env named FUNCTION."""
    from tests.support.batch import moto_batch_server

    moto = moto_batch_server()
    moto.queue(FUNCTION, ["conveyor", "run"])
    return moto.endpoint, moto.batch


class LambdaFunction:
    """A function definition + script, and the environment the emulator gives Conveyor."""

    def __init__(self, tmp: Path, server: Any, bucket: str, script: str, **extra: Any) -> None:
        self.tmp = tmp
        self.scratch = tmp / "lambda-tmp"
        self.scratch.mkdir()
        provider = {"endpoint": server.endpoint, "access_key": server.access_key,
                    "secret_key": server.secret_key, "verify": False}
        (tmp / "script.sh").write_text(script)
        conveyor = extra.pop("conveyor", {})
        self.definition = {
            "name": FUNCTION,
            "init_script": str(tmp / "script.sh"),
            "storage_providers": {"minio": {"default": dict(provider)}},
            "input": [{"storage_provider": "minio.default", "path": f"{bucket}/in"}],
            "output": [{"storage_provider": "minio.default", "path": f"{bucket}/out"}],
            "container": {"timeout_threshold": 2},
            "conveyor": {"grace_period": 1, **conveyor},
            **extra,
        }

    def config_path(self) -> Path:
        path = self.tmp / "function_config.yaml"
        path.write_text(yaml.safe_dump(self.definition))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONVEYOR_", "EVENT"))}
        env.update(
            TMPDIR=str(self.scratch),
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def emulator(self, timeout: int = 30, **env: str) -> LambdaEmulator:
        command = [sys.executable, "-m", "conveyor", "run", "--config", str(self.config_path())]
        return LambdaEmulator(command, self.env(**env), timeout=timeout, log_path=self.tmp / "rie.log",
                              function_name=FUNCTION)


def lambda_records(log: str) -> list[dict[str, Any]]:
    return records(log.encode())


def decode_body(response: dict[str, Any]) -> bytes:
    assert response["isBase64Encoded"] is True
    return base64.b64decode(response["body"])


@pytest.fixture
def function(tmp_path, s3_server, bucket, rie_binary):
    def make(script: str, **extra: Any) -> LambdaFunction:
        return LambdaFunction(tmp_path, s3_server, bucket, script, **extra)

    return make


COPY = '#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\necho "leak=${CONT_VAR_leak:-none} pid=$PPID"\n'


def test_storage_event_then_warm_invocation(function, s3_client, bucket) -> None:
    fn = function(COPY)
    s3_client.put_object(Bucket=bucket, Key="in/a.png", Body=PNG)
    s3_client.put_object(Bucket=bucket, Key="in/b.png", Body=PNG[::-1])
    with fn.emulator() as rie:
        first = rie.invoke(minio_event(bucket, "in/a.png"))
        second = rie.invoke(minio_event(bucket, "in/b.png"))
        log = rie.log()
    for status, _, response in (first, second):
        assert status == 200, log
        assert response["statusCode"] == 200, response
        assert set(response["headers"]) == {"amz-lambda-request-id", "amz-log-group-name", "amz-log-stream-name"}
    assert keys(s3_client, bucket, "out/") == ["out/a.png", "out/b.png"]
    recs = lambda_records(log)
    assert [r["status"] for r in recs] == ["SUCCEEDED", "SUCCEEDED"]
    assert [r["extra"]["warm_start"] for r in recs] == [False, True]  # the handler was set up once
    assert recs[0]["request_id"] != recs[1]["request_id"]
    assert recs[0]["request_id"] == first[2]["headers"]["amz-lambda-request-id"]
    body = json.loads(decode_body(second[2]))
    assert body[0]["outputs"] == [f"{bucket}/out/b.png"]
    assert list(fn.scratch.iterdir()) == []  # /tmp cleaned after each invocation
    assert log.count("Runtime.") == 0 or "Runtime.ExitError" not in log


def test_api_gateway_binary_body_gets_the_output_back_and_nothing_leaks(function) -> None:
    fn = function('#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result.png"\necho "leak=${CONT_VAR_leak:-none}"\n',
                  output=[])
    event = json.loads((Path(__file__).parent / "events" / "apigw_v2_png_body.json").read_text())
    payload = base64.b64decode(event["body"])
    leaky = dict(event, queryStringParameters={"leak": "secret-from-call-1"})
    clean = dict(event, queryStringParameters={})
    with fn.emulator() as rie:
        status1, _, response1 = rie.invoke(leaky)
        status2, _, response2 = rie.invoke(clean)
        log = rie.log()
    assert status1 == status2 == 200, log
    assert response1["statusCode"] == response2["statusCode"] == 200
    assert decode_body(response1) == payload  # the output file itself, not stdout
    tails = [r["log_tail"] for r in lambda_records(log)]
    assert "leak=secret-from-call-1" in tails[0]
    assert "leak=none" in tails[1]  # the first call's CONT_VAR_leak did not survive into the second


def test_failing_script_fails_the_storage_invocation(function, s3_client, bucket) -> None:
    fn = function('#!/bin/sh\necho partial > "$TMP_OUTPUT_DIR/p.txt"\necho boom >&2\nexit 3\n')
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    with fn.emulator() as rie:
        status, _, response = rie.invoke(minio_event(bucket, "in/x.bin"))
        log = rie.log()
    assert response["errorType"] == "HandlerError", (status, response, log)
    assert "script exited with code 3" in response["errorMessage"]
    assert keys(s3_client, bucket, "out/") == []
    [record] = lambda_records(log)
    assert record["status"] == "FAILED" and record["exit_code"] == 3


def test_failing_script_answers_500_to_an_http_caller(function) -> None:
    fn = function("#!/bin/sh\nexit 9\n", output=[])
    event = json.loads((Path(__file__).parent / "events" / "apigw_v2_png_body.json").read_text())
    with fn.emulator() as rie:
        status, _, response = rie.invoke(event)
    assert status == 200 and response["statusCode"] == 500
    [record] = json.loads(decode_body(response))
    assert record["status"] == "FAILED" and record["exit_code"] == 9


def test_script_outliving_the_timeout_is_killed(function, s3_client, bucket) -> None:
    fn = function('#!/bin/sh\necho $$ > "$TMPDIR/../pid"\necho partial > "$TMP_OUTPUT_DIR/p.txt"\nexec sleep 300\n')
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    with fn.emulator(timeout=6) as rie:  # deadline = 6 s - timeout_threshold 2 s
        status, _, response = rie.invoke(minio_event(bucket, "in/x.bin"))
        log = rie.log()
    assert response["errorType"] == "HandlerTimeout", (status, response, log)
    assert keys(s3_client, bucket, "out/") == []
    pid = int((fn.tmp / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


def test_scar_script_in_the_event_and_cmd_args(function, s3_client, bucket) -> None:
    fn = function("#!/bin/sh\necho configured-script\n", output=[])
    script = b'#!/bin/sh\necho "event-script args=$*"\n'
    event = {"script": base64.b64encode(script).decode(), "cmd_args": json.dumps(["--fast", "2"])}
    with fn.emulator() as rie:
        status, _, response = rie.invoke(event)
    assert status == 200 and response["statusCode"] == 200, response
    assert decode_body(response) == b"event-script args=--fast 2\n"


def _batch_jobs(batch: Any) -> list[dict[str, Any]]:
    summaries = batch.list_jobs(jobQueue=FUNCTION, filters=[{"name": "JOB_NAME", "values": [FUNCTION]}])
    ids = [j["jobId"] for j in summaries["jobSummaryList"]]
    return batch.describe_jobs(jobs=ids)["jobs"] if ids else []


def _job_env(job: dict[str, Any]) -> dict[str, str]:
    overrides = job.get("container", {}).get("environment", [])
    return {e["name"]: e["value"] for e in overrides}


@pytest.mark.parametrize(
    ("rule", "conveyor", "script", "timeout"),
    [
        ("size", {"lambda_max_size": 10}, COPY, 30),
        ("time", {"expected_duration": 600}, COPY, 30),
        ("deadline", {}, '#!/bin/sh\necho partial > "$TMP_OUTPUT_DIR/p.txt"\nexec sleep 300\n', 6),
    ],
)
def test_lambda_batch_hands_off_and_batch_finishes_the_work(
    function, s3_client, bucket, moto_batch, rule, conveyor, script, timeout
) -> None:
    endpoint, batch = moto_batch
    before = {j["jobId"] for j in _batch_jobs(batch)}
    fn = function(script, execution_mode="lambda-batch", conveyor=conveyor)
    s3_client.put_object(Bucket=bucket, Key="in/big.bin", Body=b"0123456789abcdef")
    event = minio_event(bucket, "in/big.bin", size=16)
    with fn.emulator(timeout=timeout, AWS_ENDPOINT_URL_BATCH=endpoint) as rie:
        status, _, response = rie.invoke(event)
        log = rie.log()
    assert status == 200 and response.get("statusCode") == 200, (response, log)
    [record] = json.loads(decode_body(response))
    assert record["status"] == "DELEGATED", record
    assert keys(s3_client, bucket, "out/") == []  # the killed run uploaded nothing
    [job] = [j for j in _batch_jobs(batch) if j["jobId"] not in before]
    assert record["job_id"] == job["jobId"]
    assert (job["jobName"], job["jobQueue"].rsplit("/", 1)[-1]) == (FUNCTION, FUNCTION)
    assert job["jobDefinition"].rsplit("/", 1)[-1].split(":")[0] == FUNCTION
    env = _job_env(job)
    assert json.loads(env["EVENT"]) == event
    context = json.loads(env["CONTEXT"])
    assert context["function_name"] == FUNCTION and context["aws_request_id"] == env["AWS_LAMBDA_REQUEST_ID"]

    # Now run the job the way AWS Batch would: `echo $EVENT | conveyor` with the job's environment.
    fn.definition["init_script"] = str(fn.tmp / "batch.sh")
    (fn.tmp / "batch.sh").write_text(COPY)
    batch_env = fn.env(**{
        **env,
        "AWS_BATCH_JOB_ID": job["jobId"],
        "AWS_BATCH_JOB_ATTEMPT": "1",
        "FUNCTION_CONFIG": base64.b64encode(yaml.safe_dump(fn.definition).encode()).decode(),
    })
    proc = subprocess.run(
        ["/bin/sh", "-c", f"echo $EVENT | {sys.executable} -m runtime run"],
        env=batch_env, capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert keys(s3_client, bucket, "out/") == ["out/big.bin"]
    [batch_record] = records(proc.stderr)
    assert batch_record["platform"] == "batch" and batch_record["job_id"] == job["jobId"]
    assert batch_record["request_id"] == env["AWS_LAMBDA_REQUEST_ID"]
    assert batch_record["extra"]["lambda_context"]["function_name"] == FUNCTION


def test_batch_mode_submits_at_once_without_downloading(function, bucket, moto_batch, s3_client) -> None:
    endpoint, _ = moto_batch
    fn = function(COPY, execution_mode="batch",
                  conveyor={"status": {"storage_provider": "minio.default", "path": f"{bucket}/status"}})
    # The object does not even exist: batch mode must not try to download it.
    event = minio_event(bucket, "in/not-there.bin", size=5)
    with fn.emulator(AWS_ENDPOINT_URL_BATCH=endpoint) as rie:
        status, _, response = rie.invoke(event)
    assert status == 200 and response["statusCode"] == 200, response
    [record] = json.loads(decode_body(response))
    assert record["status"] == "DELEGATED" and record["job_id"]
    # the status location says so too (where the gateway follows the Batch job from)
    stored = json.loads(body(s3_client, bucket, f"status/{bucket}/in/not-there.bin.json"))
    assert stored["status"] == "DELEGATED" and stored["job_id"] == record["job_id"]


def test_unreachable_batch_fails_the_invocation(function, bucket, closed_port) -> None:
    fn = function(COPY, execution_mode="batch")
    with fn.emulator(AWS_ENDPOINT_URL_BATCH=f"http://127.0.0.1:{closed_port}", AWS_MAX_ATTEMPTS="1") as rie:
        _, _, response = rie.invoke(minio_event(bucket, "in/x.bin", size=5))
    assert response["errorType"] == "DelegationError", response


def test_multi_node_parallel_uses_node_overrides() -> None:
    from conveyor.config import FunctionConfig
    from conveyor.delegate import LambdaContextInfo, submit_job
    from conveyor.events import load_event

    sent: dict[str, Any] = {}

    class Client:
        def submit_job(self, **request: Any) -> dict[str, str]:
            sent.update(request)
            return {"jobId": "j-1"}

    info = LambdaContextInfo("fn", "1024", "req-1", "g", "s")
    event = load_event({"script": base64.b64encode(b"echo hi").decode()})
    assert submit_job(FunctionConfig(name="fn", multi_node_parallel=True), event, info, Client) == "j-1"
    [node] = sent["nodeOverrides"]["nodePropertyOverrides"]
    assert node["targetNodes"] == "0:" and "containerOverrides" not in sent
    env = {e["name"]: e["value"] for e in node["containerOverrides"]["environment"]}
    assert base64.b64decode(env["SCRIPT"]) == b"echo hi"
    assert urllib.parse.unquote(env["AWS_LAMBDA_REQUEST_ID"]) == "req-1"


def test_api_gateway_body_holding_a_multi_record_storage_event(function, s3_client, bucket) -> None:
    """The body is a storage event: each record is processed as such, and the caller gets the
    result records (not two outputs run together)."""
    fn = function(COPY)
    for name in ("a.png", "b.png"):
        s3_client.put_object(Bucket=bucket, Key=f"in/{name}", Body=PNG)
    storage = minio_event(bucket, "in/a.png")
    storage["Records"].append(minio_event(bucket, "in/b.png")["Records"][0])
    event = {"httpMethod": "POST", "path": "/", "headers": {"Content-Type": "application/json"},
             "queryStringParameters": None, "body": json.dumps(storage), "isBase64Encoded": False}
    with fn.emulator() as rie:
        status, _, response = rie.invoke(event)
    assert status == 200 and response["statusCode"] == 200, response
    recs = json.loads(decode_body(response))
    assert [r["input"]["key"] for r in recs] == ["in/a.png", "in/b.png"]
    assert keys(s3_client, bucket, "out/") == ["out/a.png", "out/b.png"]
