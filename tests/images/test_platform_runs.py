"""Each image run the way its platform runs it, against the real S3 server on loopback.

Six images (conveyor/base with a user script, conveyor/yolo, conveyor/deepaas-demo, and the
example DEEPaaS models conveyor/pose, conveyor/classify and conveyor/birds), each run three ways,
each way with a model that succeeds and one that fails:

- OSCAR (a Kubernetes Job per upload): the container's entrypoint replaced by
  `/bin/sh -c 'echo $EVENT | conveyor-entrypoint'`, the MinIO event in EVENT,
  /oscar/config/function_config.yaml and script.sh mounted, the minio.default secret files
  mounted under /var/run/secrets/providers (the config says `hidden`, as OSCAR writes it).
- AWS Batch: moto's Batch API runs the job's container itself through this Docker engine:
  SCAR's job definition command `/bin/sh -c 'echo $EVENT | /opt/faas-supervisor/bin/supervisor'`
  appended to the image's ENTRYPOINT, FUNCTION_CONFIG (and SCRIPT) in the job definition,
  EVENT in the job's overrides, AWS_BATCH_JOB_ID from Batch; the logs come back from moto's
  CloudWatch Logs. An S3 event, the s3.default provider, credentials from the environment.
- AWS Lambda: the real Runtime Interface Emulator (from the aws-sam-cli wheel) mounted into the
  container as its entrypoint in front of conveyor-entrypoint, a read-only root filesystem with
  /tmp writable, an unprivileged uid, the function definition at /var/task, invoked over HTTP.

Every run asserts the exit code (or Batch job status, or Lambda response) and what is in the
bucket: the outputs after a success, nothing at all after a failure. Containers use the host's
network (the private engine has no bridge), and everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.models.checks import DATA, DOGS, assert_astronaut_pose, bird_result, song, top5
from tests.support.emulator import INVOKE_PATH, ensure_rie, free_port
from tests.support.images import BASE, DEEPAAS, EXAMPLES, REPO, YOLO, image_file
from tests.support.pipeline import PNG, body, keys, minio_event, records, s3_event
from tests.support.requirements import import_or_missing, missing

docker = import_or_missing("docker", "the docker SDK is not installed (pip install -e '.[docker]')")

pytestmark = pytest.mark.heavy

ENTRY = "conveyor-entrypoint"
SCAR_BATCH_COMMAND = ["/bin/sh", "-c", "echo $EVENT | /opt/faas-supervisor/bin/supervisor"]
OSCAR_COMMAND = ["/bin/sh", "-c", f"echo $EVENT | {ENTRY}"]
LAMBDA_UID = "993:990"  # Lambda runs images as an arbitrary unprivileged user
RUN_TIMEOUT = 180  # seconds for one container run

# The script handler's model: the DEEP pattern, failing on inputs whose name says so (after it
# wrote a partial output, which must not be uploaded).
SCRIPT = b"""#!/bin/sh
set -e
name=$(basename "$INPUT_FILE_PATH")
case "$name" in
  *fail*) echo partial > "$TMP_OUTPUT_DIR/partial.txt"; echo "model failed on $name" >&2; exit 3 ;;
esac
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/$name"
printf '%s' "$STORAGE_OBJECT_KEY" > "$TMP_OUTPUT_DIR/${name%.*}.key"
echo "processed $name"
"""


# -- the three models ----------------------------------------------------------------------------


@dataclass
class Model:
    """An image, its function definition, one input it handles and one deployment that fails."""

    image: str
    definition: dict[str, Any]  # input/output/storage_providers are rewritten for each run
    good: tuple[str, bytes]  # (key under the bucket, content)
    check: Callable[[Any, str], None]  # check(s3_client, bucket): the good input's outputs
    bad: tuple[str, bytes]  # an input the model fails on ...
    bad_definition: dict[str, Any] | None = None  # ... or, when none can, a deployment that fails
    bad_reason: str = ""  # a word the failure's message contains
    script: bytes | None = None  # the user script (script handler only)


def check_base(s3, bucket: str) -> None:
    assert keys(s3, bucket, "out/") == ["out/photo one.key", "out/photo one.png"]
    assert body(s3, bucket, "out/photo one.png") == PNG
    assert body(s3, bucket, "out/photo one.key") == b"in/photo one.png"


def check_yolo(s3, bucket: str) -> None:
    assert keys(s3, bucket, "out/") == ["out/dog.jpg", "out/dog.json"]
    detections = json.loads(body(s3, bucket, "out/dog.json"))
    classes = {d["class"] for d in detections}
    assert {"dog", "bicycle"} <= classes, detections
    assert all(set(d["box"]) == {"x", "y", "w", "h"} for d in detections)  # the opencv backend boxes
    assert body(s3, bucket, "out/dog.jpg")[:3] == b"\xff\xd8\xff"  # the drawn JPEG


def check_deepaas(s3, bucket: str) -> None:
    import hashlib

    assert keys(s3, bucket, "out/") == ["out/cat photo.json"]
    result = json.loads(body(s3, bucket, "out/cat photo.json"))
    assert result["model"] == "conveyor-demo" and result["label"] == "demo"
    assert result["size"] == len(PNG) and result["sha256"] == hashlib.sha256(PNG).hexdigest()


def fetched(s3, bucket: str, key: str, folder: str) -> Path:
    """An output downloaded into `folder`, for the checks that read a file."""
    path = Path(folder) / key.rsplit("/", 1)[-1]
    path.write_bytes(body(s3, bucket, key))
    return path


def check_pose(s3, bucket: str) -> None:
    assert keys(s3, bucket, "out/") == ["out/astronaut.zip"]
    with tempfile.TemporaryDirectory() as tmp:
        assert_astronaut_pose(fetched(s3, bucket, "out/astronaut.zip", tmp))


def check_classify(s3, bucket: str) -> None:
    assert keys(s3, bucket, "out/") == ["out/dog.json"]
    with tempfile.TemporaryDirectory() as tmp:
        dog = top5(fetched(s3, bucket, "out/dog.json", tmp), "dog.jpg")
    assert dog["label_ids"][0] in DOGS, dog["labels"]


def check_birds(s3, bucket: str) -> None:
    assert keys(s3, bucket, "out/") == ["out/song.json"]
    with tempfile.TemporaryDirectory() as tmp:
        bird_result(fetched(s3, bucket, "out/song.json", tmp), "song.wav", 6.0)


@pytest.fixture(scope="session")
def models(client, images) -> dict[str, Model]:
    yolo = baked(client, YOLO)
    deepaas = yaml.safe_load((REPO / "images" / "deepaas-demo" / "function_config.yaml").read_text())
    missing = copy.deepcopy(deepaas)
    missing["conveyor"]["handler"]["model"] = "conveyor-missing"
    dog = image_file(client, YOLO, "/usr/share/darknet/data/dog.jpg")  # from Debian's darknet package
    return {
        "base": Model(
            image=BASE,
            definition={
                "name": "conveyor-base",
                "log_level": "INFO",
                "input": [{"storage_provider": "minio.default", "path": "base/in"}],
                "output": [{"storage_provider": "minio.default", "path": "base/out"}],
                "conveyor": {"timeout": 60, "grace_period": 2},
            },
            script=SCRIPT,
            good=("in/photo one.png", PNG),
            check=check_base,
            bad=("in/fail.bin", b"anything"),
            bad_reason="exited with code 3",
        ),
        "yolo": Model(
            image=YOLO,
            definition=yolo,
            good=("in/dog.jpg", dog),
            check=check_yolo,
            bad=("in/bad.jpg", b"this is not a JPEG at all"),
            bad_reason="not an image",
        ),
        "deepaas": Model(
            image=DEEPAAS,
            definition=deepaas,
            good=("in/cat photo.png", PNG),
            check=check_deepaas,
            bad=("in/cat photo.png", PNG),
            bad_definition=missing,
            bad_reason="conveyor-missing",
        ),
        # The example models, each with the definition baked into its image; the bad input
        # fails inside the model (the plugin raises), not in Conveyor.
        "pose": Model(
            image=EXAMPLES["pose"],
            definition=baked(client, EXAMPLES["pose"]),
            good=("in/astronaut.jpg", (DATA / "astronaut.jpg").read_bytes()),
            check=check_pose,
            bad=("in/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg" * 10),
            bad_reason="is not an image",
        ),
        "classify": Model(
            image=EXAMPLES["classify"],
            definition=baked(client, EXAMPLES["classify"]),
            good=("in/dog.jpg", dog),
            check=check_classify,
            bad=("in/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg" * 10),
            bad_reason="is not an image",
        ),
        "birds": Model(
            image=EXAMPLES["birds"],
            definition=baked(client, EXAMPLES["birds"]),
            good=("in/song.wav", song(6.0)),
            check=check_birds,
            bad=("in/noise.wav", b"RIFF but no audio in here" * 10),
            bad_reason="is not audio",
        ),
    }


def baked(client, image: str) -> dict[str, Any]:
    return yaml.safe_load(image_file(client, image, "/var/task/function_config.yaml"))


MODELS = ["base", "yolo", "deepaas", *EXAMPLES]


def deployment(model: Model, bucket: str, server: Any, provider: str, *, bad: bool) -> dict[str, Any]:
    """The model's definition pointed at `bucket` on the test server through `provider` (minio | s3)."""
    source = model.bad_definition if bad and model.bad_definition is not None else model.definition
    definition = copy.deepcopy(source)
    ref = f"{provider}.default"
    definition["input"] = [{"storage_provider": ref, "path": f"{bucket}/in"}]
    definition["output"] = [{**out, "storage_provider": ref, "path": f"{bucket}/out"} for out in source["output"]]
    settings = {"endpoint": server.endpoint, "verify": False, "region": "us-east-1"}
    if provider == "minio":  # OSCAR writes `hidden` here; the keys are in the mounted secret files
        settings.update(access_key="hidden", secret_key="hidden")
    definition["storage_providers"] = {provider: {"default": settings}}
    return definition


def put_inputs(s3, bucket: str, model: Model) -> None:
    for key, data in (model.good, model.bad):
        s3.put_object(Bucket=bucket, Key=key, Body=data)


def aws_credentials(server: Any) -> dict[str, str]:
    """What Lambda and Batch give a function's role, here the test server's keys."""
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def readable(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    """A file the container's unprivileged user can read through a bind mount."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def run_to_end(client, image: str, timeout: int = RUN_TIMEOUT, **kwargs: Any) -> tuple[int, str]:
    """Run a container to completion on the host network: (exit code, stdout + stderr)."""
    container = client.containers.run(image, detach=True, network_mode="host", **kwargs)
    try:
        code = container.wait(timeout=timeout)["StatusCode"]
        return code, container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)


# -- OSCAR ---------------------------------------------------------------------------------------


def oscar_volumes(model: Model, tmp: Path, server: Any, definition: dict[str, Any]) -> dict[str, Any]:
    """What OSCAR mounts into every pod of a service: the definition, the script, the MinIO keys."""
    run_dir = tmp / f"oscar-{uuid.uuid4().hex[:8]}"
    config = readable(run_dir / "config" / "function_config.yaml", yaml.safe_dump(definition))
    script = readable(run_dir / "config" / "script.sh", model.script or b"#!/bin/sh\necho unused\n", 0o755)
    secrets = run_dir / "minio.default"
    readable(secrets / "accessKey", server.access_key)
    readable(secrets / "secretKey", server.secret_key)
    secrets.chmod(0o755)
    return {
        str(config): {"bind": "/oscar/config/function_config.yaml", "mode": "ro"},
        str(script): {"bind": "/oscar/config/script.sh", "mode": "ro"},
        str(secrets): {"bind": "/var/run/secrets/providers/minio.default", "mode": "ro"},
    }


def run_as_oscar(client, model: Model, tmp: Path, server: Any, bucket: str, key: str, *, bad: bool):
    """One Kubernetes Job as OSCAR creates it for one upload."""
    return run_to_end(
        client,
        model.image,
        entrypoint=OSCAR_COMMAND,  # Kubernetes `command` replaces the image's ENTRYPOINT
        environment={"EVENT": json.dumps(minio_event(bucket, key))},
        volumes=oscar_volumes(model, tmp, server, deployment(model, bucket, server, "minio", bad=bad)),
    )


@pytest.mark.parametrize("name", MODELS)
def test_oscar_job(name, models, client, s3_server, s3_client, bucket, tmp_path) -> None:
    model = models[name]
    put_inputs(s3_client, bucket, model)

    code, log = run_as_oscar(client, model, tmp_path, s3_server, bucket, model.good[0], bad=False)
    assert code == 0, log
    model.check(s3_client, bucket)
    [record] = records(log.encode())
    assert record["status"] == "SUCCEEDED" and record["platform"] == "oscar", record

    before = keys(s3_client, bucket)
    code, log = run_as_oscar(client, model, tmp_path, s3_server, bucket, model.bad[0], bad=True)
    assert code != 0, log
    assert keys(s3_client, bucket) == before, "a failed run uploaded something"
    [record] = records(log.encode())
    assert record["status"] == "FAILED" and model.bad_reason in json.dumps(record), record


@pytest.mark.parametrize("name", ["yolo", "classify"])
def test_image_defaults_serve_an_unchanged_oscar_definition(
    name, models, client, s3_server, s3_client, bucket, tmp_path
) -> None:
    """OSCAR writes only the keys it knows: with no `conveyor:` block in the definition, the
    image's /etc/conveyor/defaults.yaml still selects its handler (darknet; deepaas, warm)."""
    model = models[name]
    plain = dataclasses.replace(model, definition={k: v for k, v in model.definition.items() if k != "conveyor"})
    put_inputs(s3_client, bucket, plain)
    code, log = run_as_oscar(client, plain, tmp_path, s3_server, bucket, plain.good[0], bad=False)
    assert code == 0, log
    plain.check(s3_client, bucket)
    [record] = records(log.encode())
    assert record["status"] == "SUCCEEDED", record
    assert record["handler"] == model.definition["conveyor"]["handler"]["name"], record



# -- OSCAR sync: an exposed service running `conveyor serve`, and the per-request shim --------------

SHIM = REPO / "images" / "oscar" / "supervisor-shim.sh"
SYNC_MODELS = ["yolo", "deepaas"]


def wait_healthy(container, url: str, timeout: float = RUN_TIMEOUT) -> None:
    """Poll `url` until it answers 200 (the model is loaded), as the Deployment's probe does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            pytest.fail("conveyor serve exited before it was healthy:\n" + container.logs().decode(errors="replace"))
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} never answered 200:\n" + container.logs().decode(errors="replace"))


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=RUN_TIMEOUT) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(text: str, name: str) -> float:
    """One sample's value from Prometheus text (`name{labels} value`, or `name value`)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in:\n{text}")


@pytest.mark.parametrize("name", SYNC_MODELS)
def test_exposed_service_keeps_the_model_loaded(name, models, client, s3_server, s3_client, bucket, tmp_path) -> None:
    """OSCAR's exposed service: the image's own command is `conveyor serve` (default_command: true),
    the Deployment probes health_path, requests arrive under /system/services/<svc>/exposed/.
    A storage event POSTed to it (a MinIO webhook) is processed before the answer; the model is
    loaded once for every request; SIGTERM (scale-down) ends it with 0."""
    model = models[name]
    put_inputs(s3_client, bucket, model)
    port = free_port()
    container = client.containers.run(
        model.image, ["serve", "--port", str(port)], detach=True, network_mode="host",
        volumes=oscar_volumes(model, tmp_path, s3_server, deployment(model, bucket, s3_server, "minio", bad=False)),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(container, f"{base}/health")
        exposed = f"{base}/system/services/{name}/exposed/predict"
        for _ in range(2):
            status, answer = post(exposed, json.dumps(minio_event(bucket, model.good[0])).encode())
            assert status == 200, answer
            [record] = json.loads(answer)
            assert record["status"] == "SUCCEEDED" and record["platform"] == "oscar", record
        model.check(s3_client, bucket)
        if name == "yolo":  # a bad input: 500 with the failure line, and nothing more published
            before = keys(s3_client, bucket)
            status, answer = post(exposed, json.dumps(minio_event(bucket, model.bad[0])).encode())
            assert status == 500 and model.bad_reason.encode() in answer, answer
            assert keys(s3_client, bucket) == before
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert metric(metrics, "conveyor_serve_model_loads_total") == 1
        assert metric(metrics, 'conveyor_serve_records_total{status="SUCCEEDED"}') == 2
        container.stop(timeout=30)
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


# Run inside the container: GET /metrics from the warm daemon's unix socket.
DAEMON_METRICS = """
import glob, socket, sys
[path] = glob.glob("/tmp/conveyor-warm-*.sock")
sock = socket.socket(socket.AF_UNIX)
sock.connect(path)
sock.sendall(b"GET /metrics HTTP/1.0\\r\\nHost: daemon\\r\\n\\r\\n")
data = b""
while chunk := sock.recv(65536):
    data += chunk
sys.stdout.write(data.split(b"\\r\\n\\r\\n", 1)[1].decode())
"""


@pytest.mark.parametrize("name", SYNC_MODELS)
def test_sync_service_shim_runs_conveyor_per_request_with_a_warm_daemon(
    name, models, client, s3_server, s3_client, bucket, tmp_path
) -> None:
    """An OSCAR sync service: the classic watchdog forks /oscar/bin/supervisor (here the shim of
    images/oscar) per request, the body on stdin, Http_* in the environment, stdout and stderr
    captured together. With `warm: true` the first request starts this pod's daemon and runs itself;
    the next ones are forwarded to the daemon, whose model stays loaded. Each answer is the base64
    of the outputs, as oscar-cli expects it."""
    model = models[name]
    definition = deployment(model, bucket, s3_server, "minio", bad=False)
    definition["log_level"] = "CRITICAL"  # as OSCAR advises for sync services: the answer alone
    definition.setdefault("conveyor", {})["warm"] = True
    volumes = oscar_volumes(model, tmp_path, s3_server, definition)
    volumes[str(readable(tmp_path / "shim" / "supervisor", SHIM.read_bytes(), 0o755))] = \
        {"bind": "/oscar/bin/supervisor", "mode": "ro"}
    body = base64.b64encode(model.good[1])  # what oscar-cli and the gateway send
    volumes[str(readable(tmp_path / "request" / "body", body))] = {"bind": "/request-body", "mode": "ro"}
    container = client.containers.run(model.image, detach=True, network_mode="host", entrypoint=["sleep", "3600"],
                                      volumes=volumes)
    try:
        environment = {"Http_Method": "POST", "Http_Content_Type": "text/plain", "Http_Path": "/", "Http_Query": ""}
        answers = []
        for _ in range(3):
            code, output = container.exec_run(["/bin/sh", "-c", "cat /request-body | /oscar/bin/supervisor"],
                                              environment=environment)
            assert code == 0, output.decode(errors="replace")
            answers.append(base64.b64decode(output.strip(), validate=True))  # the answer ends with a newline
        assert all(answers), answers
        code, metrics = container.exec_run(  # the Python Conveyor runs on (the first line of its script)
            ["/bin/sh", "-c", 'exec $(head -1 "$(command -v conveyor-entrypoint)" | cut -c3-) -c "$CODE"'],
            environment={"CODE": DAEMON_METRICS})
        assert code == 0, metrics.decode(errors="replace")
        text = metrics.decode()
        assert metric(text, "conveyor_serve_model_loads_total") == 1
        assert metric(text, 'conveyor_serve_records_total{status="SUCCEEDED"}') == 2  # the 2nd and 3rd
    finally:
        container.remove(force=True)


# -- AWS Batch, run by moto with this Docker engine ----------------------------------------------


@pytest.fixture(scope="module")
def batch_server(client) -> Iterator[dict[str, Any]]:
    """moto's server on loopback; its Batch runs job containers on the host network.

    moto's configuration is process-wide (tests/test_lambda.py wants use_docker off): it is
    put back as it was when this module is done."""
    from moto.core.config import default_user_config
    from moto.server import ThreadedMotoServer

    previous_mode = os.environ.get("MOTO_DOCKER_NETWORK_MODE")
    previous_config = copy.deepcopy(default_user_config.get("batch", {}))
    os.environ["MOTO_DOCKER_NETWORK_MODE"] = "host"  # read by moto when it starts a container
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        request = urllib.request.Request(
            f"{endpoint}/moto-api/config", data=json.dumps({"batch": {"use_docker": True}}).encode(),
            method="POST", headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).read()
        import boto3

        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
        batch = boto3.client("batch", endpoint_url=endpoint, **creds)
        logs = boto3.client("logs", endpoint_url=endpoint, **creds)
        iam = boto3.client("iam", endpoint_url=endpoint, **creds)
        role = iam.create_role(RoleName="conveyor-images-batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        name = f"conveyor-images-{uuid.uuid4().hex[:8]}"
        env_arn = batch.create_compute_environment(
            computeEnvironmentName=name, type="UNMANAGED", state="ENABLED", serviceRole=role
        )["computeEnvironmentArn"]
        batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=1,
                               computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env_arn}])
        yield {"batch": batch, "logs": logs, "queue": name}
    finally:
        server.stop()
        default_user_config["batch"] = previous_config
        if previous_mode is None:
            os.environ.pop("MOTO_DOCKER_NETWORK_MODE", None)
        else:
            os.environ["MOTO_DOCKER_NETWORK_MODE"] = previous_mode


def scar_job_definition(batch_server, model: Model, definition: dict[str, Any], server: Any,
                        **container: Any) -> str:
    """Register a job definition the way SCAR writes one; return its name."""
    name = f"conveyor-{uuid.uuid4().hex[:10]}"
    env = {
        "AWS_LAMBDA_FUNCTION_NAME": name,  # SCAR sets it in Batch jobs too: it must not mean Lambda
        "FUNCTION_CONFIG": base64.b64encode(yaml.safe_dump(definition).encode()).decode(),
        **aws_credentials(server),
    }
    if model.script is not None:
        env["SCRIPT"] = base64.b64encode(model.script).decode()
    batch_server["batch"].register_job_definition(
        jobDefinitionName=name,
        type="container",
        containerProperties={
            "image": model.image,
            "vcpus": 1,
            "memory": 1024,
            "command": SCAR_BATCH_COMMAND,
            "environment": [{"name": k, "value": v} for k, v in env.items()],
            **container,
        },
    )
    return name


def submit(batch_server, definition: str, event: dict[str, Any]) -> str:
    return batch_server["batch"].submit_job(
        jobName=definition, jobQueue=batch_server["queue"], jobDefinition=definition,
        containerOverrides={"environment": [{"name": "EVENT", "value": json.dumps(event)}]},
    )["jobId"]


def wait_for_jobs(batch_server, job_ids: list[str], timeout: float = RUN_TIMEOUT) -> dict[str, dict[str, Any]]:
    """job id -> {"status", "log"} once every job has SUCCEEDED or FAILED."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = batch_server["batch"].describe_jobs(jobs=job_ids)["jobs"]
        if all(j["status"] in ("SUCCEEDED", "FAILED") for j in jobs):
            break
        assert time.monotonic() < deadline, [(j["jobId"], j["status"]) for j in jobs]
        time.sleep(0.5)
    done = {}
    for job in jobs:
        stream = job.get("container", {}).get("logStreamName")
        events = batch_server["logs"].get_log_events(logGroupName="/aws/batch/job", logStreamName=stream)["events"]
        done[job["jobId"]] = {"status": job["status"], "log": "\n".join(e["message"] for e in events)}
    return done


@pytest.mark.parametrize("name", MODELS)
def test_batch_job_run_by_moto(name, models, client, batch_server, s3_server, s3_client, bucket) -> None:
    model = models[name]
    put_inputs(s3_client, bucket, model)
    good_def = scar_job_definition(batch_server, model, deployment(model, bucket, s3_server, "s3", bad=False),
                                   s3_server)
    bad_def = good_def if model.bad_definition is None else scar_job_definition(
        batch_server, model, deployment(model, bucket, s3_server, "s3", bad=True), s3_server)
    # Both at once: the check of the bucket's exact contents afterwards also proves that the
    # failed job uploaded nothing.
    good = submit(batch_server, good_def, s3_event(bucket, [model.good[0]]))
    bad = submit(batch_server, bad_def, s3_event(bucket, [model.bad[0]]))
    runs = wait_for_jobs(batch_server, [good, bad])

    assert runs[good]["status"] == "SUCCEEDED", runs[good]["log"]
    [record] = records(runs[good]["log"].encode())
    assert record["status"] == "SUCCEEDED" and record["platform"] == "batch" and record["job_id"] == good, record
    assert runs[bad]["status"] == "FAILED", runs[bad]["log"]
    [record] = records(runs[bad]["log"].encode())
    assert record["status"] == "FAILED" and model.bad_reason in json.dumps(record), record
    model.check(s3_client, bucket)


def test_batch_with_scars_supervisor_mount(models, client, batch_server, s3_server, s3_client, bucket,
                                           tmp_path) -> None:
    """SCAR's job definition mounts the EC2 host's /opt/faas-supervisor/bin over the image's
    (its launch template downloads faas-supervisor there). With a two-line shim in that host
    folder instead, the same job definition runs Conveyor."""
    model = models["base"]
    put_inputs(s3_client, bucket, model)
    host_bin = tmp_path / "faas-supervisor-bin"
    readable(host_bin / "supervisor", f'#!/bin/sh\nexec {ENTRY} "$@"\n', 0o755)
    host_bin.chmod(0o755)
    definition = scar_job_definition(
        batch_server, model, deployment(model, bucket, s3_server, "s3", bad=False), s3_server,
        volumes=[{"host": {"sourcePath": str(host_bin)}, "name": "supervisor-bin"}],
        # SCAR leaves readOnly out (Batch defaults it to false); moto needs it spelled out.
        mountPoints=[{"containerPath": "/opt/faas-supervisor/bin", "sourceVolume": "supervisor-bin",
                      "readOnly": True}],
    )
    job = submit(batch_server, definition, s3_event(bucket, [model.good[0]]))
    run = wait_for_jobs(batch_server, [job])[job]
    assert run["status"] == "SUCCEEDED", run["log"]
    model.check(s3_client, bucket)


# -- AWS Lambda, under the real Runtime Interface Emulator ---------------------------------------


@pytest.fixture(scope="session")
def rie() -> Path:
    try:
        return ensure_rie()
    except Exception as exc:  # pragma: no cover - only without the package index
        missing(f"the Lambda emulator could not be fetched from the aws-sam-cli wheel: {exc}")


class LambdaContainer:
    """An image started as Lambda starts it, with the RIE in front: invoke() over HTTP."""

    def __init__(self, client, image: str, rie: Path, task_files: dict[str, Path], env: dict[str, str]) -> None:
        self.port, api_port = free_port(), free_port()
        volumes = {str(rie): {"bind": "/rie", "mode": "ro"}}
        volumes.update({str(src): {"bind": f"/var/task/{name}", "mode": "ro"} for name, src in task_files.items()})
        self.container = client.containers.run(
            image,
            entrypoint=["/rie", "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
                        "--runtime-api-address", f"127.0.0.1:{api_port}", ENTRY],
            environment={
                "AWS_LAMBDA_FUNCTION_NAME": "conveyor-image-test",
                "AWS_LAMBDA_FUNCTION_TIMEOUT": "60",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
                "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/conveyor-image-test",
                "AWS_LAMBDA_LOG_STREAM_NAME": "2026/11/24/[$LATEST]test",
                **env,
            },
            volumes=volumes,
            user=LAMBDA_UID,
            read_only=True,
            tmpfs={"/tmp": "rw,mode=1777,size=512m"},
            network_mode="host",
            detach=True,
        )
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            self.container.reload()
            if self.container.status != "running" or time.monotonic() > deadline:
                raise AssertionError(f"the emulator did not start:\n{self.log()}")
            time.sleep(0.1)

    def invoke(self, event: Any) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{INVOKE_PATH}",
                                         data=json.dumps(event).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=RUN_TIMEOUT) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        return status, json.loads(raw)

    def log(self) -> str:
        return self.container.logs(stdout=True, stderr=True).decode(errors="replace")

    def log_with_records(self, count: int, timeout: float = 20.0) -> str:
        """The log once it holds `count` result records (the engine collects a container's output
        asynchronously: an invocation's answer may come before its last lines), or as it is after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if len(records(log.encode())) >= count or time.monotonic() > deadline:
                return log
            time.sleep(0.2)

    def __enter__(self) -> LambdaContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.container.remove(force=True)


def lambda_task(model: Model, tmp: Path, bucket: str, server: Any, *, bad: bool) -> dict[str, Path]:
    """The files SCAR puts in /var/task: the function definition (and the user script)."""
    folder = tmp / f"task-{uuid.uuid4().hex[:8]}"
    definition = deployment(model, bucket, server, "s3", bad=bad)
    files = {}
    if model.script is not None:
        files["script.sh"] = readable(folder / "script.sh", model.script, 0o755)
        definition["init_script"] = "script.sh"  # SCAR's flat file names it, next to the config
    files["function_config.yaml"] = readable(folder / "function_config.yaml", yaml.safe_dump(definition))
    return files


def succeeded(status: int, response: Any, log: str) -> dict[str, Any]:
    assert status == 200 and response.get("statusCode") == 200, (response, log)
    assert response["isBase64Encoded"] is True
    [record] = json.loads(base64.b64decode(response["body"]))
    assert record["status"] == "SUCCEEDED" and record["platform"] == "lambda", record
    return record


@pytest.mark.parametrize("name", MODELS)
def test_lambda_container_under_the_emulator(name, models, client, rie, s3_server, s3_client, bucket,
                                             tmp_path) -> None:
    model = models[name]
    put_inputs(s3_client, bucket, model)
    env = aws_credentials(s3_server)
    good_event, bad_event = s3_event(bucket, [model.good[0]]), s3_event(bucket, [model.bad[0]])
    with LambdaContainer(client, model.image, rie, lambda_task(model, tmp_path, bucket, s3_server, bad=False),
                         env) as fn:
        record = succeeded(*fn.invoke(good_event), fn.log())
        model.check(s3_client, bucket)
        assert sorted(record["outputs"]) == [f"{bucket}/{k}" for k in keys(s3_client, bucket, "out/")]
        before = keys(s3_client, bucket)
        if model.bad_definition is None:  # the same warm container, an input the model fails on
            status, failure = fn.invoke(bad_event)
            log = fn.log_with_records(2)
            warm = [r["extra"].get("warm_start") for r in records(log.encode())]
            assert warm == [False, True], log  # the model was set up once, for the first invocation
    if model.bad_definition is not None:  # a deployment that fails: a container of its own
        with LambdaContainer(client, model.image, rie, lambda_task(model, tmp_path, bucket, s3_server, bad=True),
                             env) as fn:
            status, failure = fn.invoke(bad_event)
            log = fn.log()
    assert status == 200 and "errorType" in failure, (failure, log)  # a function error, as Lambda reports it
    assert model.bad_reason in failure["errorMessage"], failure
    assert keys(s3_client, bucket) == before, "a failed invocation uploaded something"


# -- sweeps: a folder sharded over an AWS Batch array job and a Kubernetes Indexed Job ------------------

SWEEP_INPUTS = [f"in/photo {i:02d}.png" for i in range(8)]


def sweep_definition(models, bucket: str, server: Any, provider: str) -> dict[str, Any]:
    definition = deployment(models["base"], bucket, server, provider, bad=False)
    definition["name"] = f"sweep-{uuid.uuid4().hex[:8]}"
    return definition


def each_processed_once(logs: list[str], s3, bucket: str) -> None:
    """Every input SUCCEEDED in exactly one of the shards' logs, and its outputs are in the bucket."""
    seen = [r["input"]["key"] for log in logs for r in records(log.encode())]
    assert sorted(seen) == SWEEP_INPUTS, seen
    assert all(r["status"] == "SUCCEEDED" for log in logs for r in records(log.encode()))
    assert all(any(r for r in records(log.encode())) for log in logs), "a shard processed nothing"
    out = keys(s3, bucket, "out/")
    for key in SWEEP_INPUTS:
        name = key.rsplit("/", 1)[1]
        assert f"out/{name}" in out, out


def test_sweep_over_a_kubernetes_indexed_job(models, client, s3_server, s3_client, bucket, tmp_path) -> None:
    """`conveyor sweep --manifest kubernetes`: each pod of the Indexed Job is run as Kubernetes would
    run it: the manifest's command and environment, JOB_COMPLETION_INDEX, the service's ConfigMap at
    /oscar/config and the MinIO keys OSCAR mounts. Both shards at once; each input once."""
    for key in SWEEP_INPUTS:
        s3_client.put_object(Bucket=bucket, Key=key, Body=PNG)
    definition = sweep_definition(models, bucket, s3_server, "minio")
    config = readable(tmp_path / "definition.yaml", yaml.safe_dump(definition))
    proc = subprocess.run([str(Path(sys.executable).parent / "conveyor"), "sweep", "--config", str(config),
                           "--manifest", "kubernetes", "--shards", "2", "--image", BASE],
                          capture_output=True, timeout=60, check=True)
    manifest = yaml.safe_load(proc.stdout)
    assert manifest["spec"]["completionMode"] == "Indexed" and manifest["spec"]["completions"] == 2
    [spec] = manifest["spec"]["template"]["spec"]["containers"]
    [mount] = spec["volumeMounts"]
    volumes = oscar_volumes(models["base"], tmp_path, s3_server, definition)
    config_dir = next(Path(host).parent for host, bind in volumes.items()
                      if bind["bind"].endswith("function_config.yaml"))
    volumes = {host: bind for host, bind in volumes.items() if not bind["bind"].startswith(mount["mountPath"])}
    volumes[str(config_dir)] = {"bind": mount["mountPath"], "mode": "ro"}
    env = {e["name"]: e["value"] for e in spec["env"]}
    pods = [client.containers.run(spec["image"], entrypoint=spec["command"], detach=True, network_mode="host",
                                  environment={**env, "JOB_COMPLETION_INDEX": str(index)}, volumes=volumes)
            for index in range(2)]
    try:
        logs = []
        for pod in pods:
            assert pod.wait(timeout=RUN_TIMEOUT)["StatusCode"] == 0, pod.logs().decode(errors="replace")
            logs.append(pod.logs(stdout=True, stderr=True).decode(errors="replace"))
    finally:
        for pod in pods:
            pod.remove(force=True)
    each_processed_once(logs, s3_client, bucket)


def test_sweep_submitted_as_an_aws_batch_array_job(models, client, batch_server, s3_server, s3_client, bucket,
                                                   tmp_path) -> None:
    """`conveyor sweep --submit batch --shards 2`: one array job on the function's queue and job
    definition (named as the Lambda hand-off names them); moto's Batch runs each child's container
    with this Docker engine, each child takes its shard from its `<parent>:<i>` job id."""
    for key in SWEEP_INPUTS:
        s3_client.put_object(Bucket=bucket, Key=key, Body=PNG)
    definition = sweep_definition(models, bucket, s3_server, "s3")
    name = definition["name"]
    batch = batch_server["batch"]
    env_arn = batch.describe_job_queues(jobQueues=[batch_server["queue"]])["jobQueues"][0][
        "computeEnvironmentOrder"][0]["computeEnvironment"]
    batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=1,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env_arn}])
    env = {"FUNCTION_CONFIG": base64.b64encode(yaml.safe_dump(definition).encode()).decode(),
           "SCRIPT": base64.b64encode(SCRIPT).decode(), **aws_credentials(s3_server)}
    batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties={
        "image": BASE, "vcpus": 1, "memory": 1024, "command": SCAR_BATCH_COMMAND,
        "environment": [{"name": k, "value": v} for k, v in env.items()]})
    config = readable(tmp_path / "definition.yaml", yaml.safe_dump(definition))
    endpoint = batch.meta.endpoint_url
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "conveyor"), "sweep", "--config", str(config), "--submit", "batch",
         "--shards", "2"],
        capture_output=True, timeout=60,
        env={"PATH": os.environ["PATH"], "AWS_ENDPOINT_URL_BATCH": endpoint, "AWS_ACCESS_KEY_ID": "testing",
             "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    parent = proc.stdout.decode().strip().splitlines()[-1]
    children = [f"{parent}:{i}" for i in range(2)]
    runs = wait_for_jobs(batch_server, children)
    for child in children:
        assert runs[child]["status"] == "SUCCEEDED", runs[child]["log"]
    each_processed_once([runs[child]["log"] for child in children], s3_client, bucket)
