"""The in-process pipeline: a Job (or a LambdaApp) over the local folder store with a recording
handler, so a test runs one event through `run_event` in milliseconds, no server, no subprocess.

Every construction of Conveyor's objects (config, Job, Stores, LambdaApp) happens in this module
only, so a change of their signatures is adapted here, once.

    pipe = Pipeline(tmp_path)                       # buckets "in", "out" and "status" under tmp_path
    pipe.put("in", "a.txt", b"hello")
    records = pipe.run(pipe.storage_event("in", ["a.txt"]))
    pipe.handler.calls[0].input_bytes == b"hello"; pipe.keys("out") == ["a.txt"]
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import yaml

from conveyor.config import FunctionConfig, load_config
from conveyor.deadline import Deadline
from conveyor.events import Event, load_event
from conveyor.handler import Handler, HandlerResult, Invocation
from conveyor.job import Job, Stores
from conveyor.lambda_runtime import LambdaApp
from conveyor.platform import Platform
from conveyor.process import run_event
from conveyor.records import ResultRecord

DEFINITION_PATH = "/inprocess/function_config.yaml"  # never on disk: load_config reads it through read_file
HANDLER_NAME = "tests.support.inprocess:RecordingHandler"
PROVIDER = "local.default"

Outputs = Mapping[str, bytes] | Callable[[Invocation], Mapping[str, bytes]]
Raises = BaseException | Callable[[Invocation], BaseException | None] | None


# -- the recording handler -------------------------------------------------------------------------


@dataclass
class Call:
    """What the handler saw for one record (copied: the pipeline removes the folders afterwards)."""

    input: Any  # the ObjectRef / InlineInput, or None
    input_name: str | None  # the local file's name
    input_bytes: bytes | None
    input_dir_listing: list[str]  # every file in TMP_INPUT_DIR: one record, one input
    env: dict[str, str]
    request_id: str
    deadline_remaining: float | None
    dirs: tuple[Path, Path, Path]  # input_dir, output_dir, work_dir


class RecordingHandler(Handler):
    """Records each Invocation, then writes `outputs` (default: a copy of the input under its own
    name), appends `log` to the record's log file, and raises `raises` if given (an exception, or a
    function of the Invocation returning one or None). `on_call(inv)` runs first, for side effects."""

    name = "recording"

    def __init__(self, config: FunctionConfig, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(config, options or {})
        self.calls: list[Call] = []
        self.setups = 0
        self.outputs: Outputs | None = None
        self.raises: Raises = None
        self.stdout: bytes | None = None  # kept as the model's stdout (sync response without a file)
        self.log = "recording handler ran\n"
        self.details: dict[str, Any] = {}
        self.exit_code = 0
        self.on_call: Callable[[Invocation], None] | None = None

    def setup(self) -> None:
        self.setups += 1

    def handle(self, inv: Invocation) -> HandlerResult:
        path = inv.input_path
        self.calls.append(
            Call(
                input=inv.input,
                input_name=path.name if path is not None else None,
                input_bytes=path.read_bytes() if path is not None and path.is_file() else None,
                input_dir_listing=sorted(p.name for p in inv.input_dir.iterdir()),
                env=dict(inv.env),
                request_id=inv.request_id,
                deadline_remaining=inv.deadline.remaining(),
                dirs=(inv.input_dir, inv.output_dir, inv.work_dir),
            )
        )
        if self.on_call is not None:
            self.on_call(inv)
        with open(inv.log_file, "a", encoding="utf-8") as fh:
            fh.write(self.log)
        outputs = self.outputs(inv) if callable(self.outputs) else self.outputs
        if outputs is None:
            outputs = {path.name: path.read_bytes()} if path is not None else {}
        for rel, data in outputs.items():
            target = inv.output_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        stdout_path = None
        if self.stdout is not None:
            stdout_path = inv.work_dir / "stdout"
            stdout_path.write_bytes(self.stdout)
        error = self.raises(inv) if callable(self.raises) else self.raises
        if error is not None:
            raise error
        return HandlerResult(exit_code=self.exit_code, stdout_path=stdout_path, details=dict(self.details))


# -- Lambda and Batch stand-ins -----------------------------------------------------------------------


@dataclass
class FakeContext:
    """The Lambda context object awslambdaric passes: the attributes Conveyor reads."""

    aws_request_id: str = "req-1"
    remaining_ms: int = 60_000
    function_name: str = "inprocess-fn"
    memory_limit_in_mb: str = "1024"
    log_group_name: str = "/aws/lambda/inprocess-fn"
    log_stream_name: str = "2026/12/03/[$LATEST]inprocess"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class FakeBatch:
    """A Batch client that records submit_job requests (moto covers the real API elsewhere)."""

    submitted: list[dict[str, Any]] = field(default_factory=list)
    error: Exception | None = None

    def submit_job(self, **request: Any) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        self.submitted.append(request)
        return {"jobId": f"job-{len(self.submitted)}", "jobName": request.get("jobName")}

    def factory(self) -> FakeBatch:
        return self


# -- events ------------------------------------------------------------------------------------------


def storage_record(
    bucket: str, key: str, size: int | None = None, event_name: str = "s3:ObjectCreated:Put"
) -> dict[str, Any]:
    """One MinIO notification record (the key URL-encoded as MinIO sends it)."""
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "eTag": "etag"}
    if size is not None:
        obj["size"] = size
    return {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventTime": "2026-12-03T10:00:00.000Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "alice"},
        "requestParameters": {"principalId": "alice"},
        "s3": {"bucket": {"name": bucket}, "object": obj},
    }


def http_event(
    body: bytes, content_type: str = "application/octet-stream", query: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """An API Gateway v2 (HTTP API) request carrying `body` as base64."""
    return {
        "version": "2.0",
        "routeKey": "POST /predict",
        "rawPath": "/predict",
        "headers": {"content-type": content_type},
        "queryStringParameters": dict(query or {}),
        "requestContext": {"http": {"method": "POST", "path": "/predict"}, "requestId": "apigw-1"},
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }


# -- the pipeline ------------------------------------------------------------------------------------


class Pipeline:
    """A function definition over a folder standing for the buckets, and ways to run events in-process.

    `definition` is the function definition as a dict (edit it before the first run/job/app call);
    `handler` is the RecordingHandler every Job and LambdaApp built here uses (one per Pipeline, so
    warm starts are visible).
    """

    def __init__(self, tmp: Path, buckets: Iterable[str] = ("in", "out", "status")) -> None:
        self.root = tmp / "buckets"
        self.scratch = tmp / "scratch"
        self.scratch.mkdir(parents=True)
        for bucket in buckets:
            (self.root / bucket).mkdir(parents=True)
        self.base_env: dict[str, str] = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "LANG": "C.UTF-8"}
        self.definition: dict[str, Any] = {
            "name": "inprocess",
            "storage_providers": {"local": {"default": {"root": str(self.root)}}},
            "input": [{"storage_provider": PROVIDER, "path": "in"}],
            "output": [{"storage_provider": PROVIDER, "path": "out"}],
            "environment": {"variables": {"MODEL_MODE": "test"}},
            "conveyor": {"handler": {"name": HANDLER_NAME}, "grace_period": 1, "withdraw_timeout": 1},
        }
        self._config: FunctionConfig | None = None
        self._text = ""
        self._handler: RecordingHandler | None = None

    # -- the folder store
    def put(self, bucket: str, key: str, data: bytes) -> Path:
        path = self.root / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        base = self.root / bucket
        found = (p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in found if k.startswith(prefix))

    def read(self, bucket: str, key: str) -> bytes:
        return (self.root / bucket / key).read_bytes()

    # -- events
    def storage_event(
        self,
        bucket: str,
        keys: Iterable[str],
        *,
        sizes: Mapping[str, int] | None = None,
        event_name: str = "s3:ObjectCreated:Put",
    ) -> dict[str, Any]:
        """An OSCAR-delegated MinIO notification naming the local provider, one record per key.
        The size of each object is taken from the folder when it exists (else `sizes`, else none)."""
        records = []
        for key in keys:
            path = self.root / bucket / key
            size = (sizes or {}).get(key, path.stat().st_size if path.is_file() else None)
            records.append(storage_record(bucket, key, size, event_name))
        return {"storage_provider": PROVIDER, "event": {"Records": records}}

    # -- Conveyor's objects
    @property
    def config(self) -> FunctionConfig:
        """The definition loaded as `conveyor run` loads it (through load_config's read_file seam)."""
        text = yaml.safe_dump(self.definition)
        if self._config is None:
            self._config, self._text = (
                load_config(
                    {},
                    Platform.OSCAR,
                    path=DEFINITION_PATH,
                    read_file=lambda path: text if path == DEFINITION_PATH else None,
                    secrets_dir=None,
                ),
                text,
            )
        assert text == self._text, "the definition was changed after the config was built: change it first"
        return self._config

    @property
    def handler(self) -> RecordingHandler:
        if self._handler is None:
            self._handler = RecordingHandler(self.config)
        return self._handler

    def job(self, platform: Platform = Platform.OSCAR, **fields: Any) -> Job:
        """A Job as the CLI builds one; `fields` override (request_id, deadline, shutdown, job_id, extra)."""
        values: dict[str, Any] = {
            "config": self.config,
            "platform": platform,
            "handler": self.handler,
            "stores": Stores(self.config),
            "base_env": dict(self.base_env),
            "scratch_dir": self.scratch,
            "request_id": "req-inprocess",
            "deadline": Deadline.after(60),
        }
        values.update(fields)
        return Job(**values)

    def run(
        self, event: Any, *, job: Job | None = None, response: io.BytesIO | None = None, **fields: Any
    ) -> list[ResultRecord]:
        """Parse `event` (a dict, bytes or an Event) and run it through run_event."""
        parsed = event if isinstance(event, Event) else load_event(event)
        return run_event(job or self.job(**fields), parsed, response=response)

    def lambda_app(self, batch: FakeBatch | None = None, **environ: str) -> LambdaApp:
        """A LambdaApp (one per warm container) with the recording handler and the scratch folder as /tmp."""
        env = {**self.base_env, "CONVEYOR_SCRATCH": str(self.scratch), **environ}
        kwargs: dict[str, Any] = {"handler": self.handler}
        if batch is not None:
            kwargs["batch_client_factory"] = batch.factory
        return LambdaApp(self.config, env, **kwargs)


def decode_body(response: Mapping[str, Any]) -> bytes:
    """A Lambda response's body, base64-decoded (Conveyor always answers in base64)."""
    assert response["isBase64Encoded"] is True
    return base64.b64decode(response["body"], validate=True)


def body_records(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    return json.loads(decode_body(response))


def wait_past(deadline: Deadline, margin: float = 0.02) -> None:
    """Sleep until `deadline` has passed (for the after-the-fact hand-off)."""
    remaining = deadline.remaining()
    if remaining is not None:
        time.sleep(remaining + margin)

