"""Lambda -> AWS Batch hand-off (contract section 7).

`batch` mode inside Lambda submits at once; `lambda-batch` runs in Lambda unless it can tell
in advance that the work will not fit (object larger than the scratch space or than
`conveyor: lambda_max_size`, or `conveyor: expected_duration` longer than the time left),
and hands off after the fact when the deadline kills the run (whose outputs are never
uploaded). The job carries the original event, so Batch processes it from scratch.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.config import FunctionConfig
from conveyor.errors import DelegationError
from conveyor.events import Event, Input, ObjectRef

log = logging.getLogger(__name__)

# Lambda scratch (/tmp) must also hold the outputs: keep a margin beside the input itself.
SPACE_MARGIN = 0.9


@dataclass(frozen=True)
class LambdaContextInfo:
    function_name: str
    memory_limit_in_mb: str
    aws_request_id: str
    log_group_name: str
    log_stream_name: str

    @classmethod
    def from_context(cls, context: Any) -> LambdaContextInfo:
        return cls(
            function_name=str(getattr(context, "function_name", "")),
            memory_limit_in_mb=str(getattr(context, "memory_limit_in_mb", "")),
            aws_request_id=str(getattr(context, "aws_request_id", "")),
            log_group_name=str(getattr(context, "log_group_name", "")),
            log_stream_name=str(getattr(context, "log_stream_name", "")),
        )

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def reason_to_delegate(
    inp: Input, config: FunctionConfig, remaining: float | None, free_bytes: int | None
) -> str | None:
    """Why this input should go to Batch before anything is downloaded, or None to run it here."""
    settings = config.conveyor
    size = inp.size if isinstance(inp, ObjectRef) else None
    if size is not None and free_bytes is not None and size > free_bytes * SPACE_MARGIN:
        return f"the object ({size} bytes) does not fit the free scratch space ({free_bytes} bytes)"
    if size is not None and settings.lambda_max_size is not None and size > settings.lambda_max_size:
        return f"the object ({size} bytes) is over conveyor.lambda_max_size ({settings.lambda_max_size})"
    if settings.expected_duration is not None and remaining is not None and settings.expected_duration > remaining:
        return (
            f"the expected duration ({settings.expected_duration:g} s) is over the time left "
            f"({remaining:.1f} s, after timeout_threshold)"
        )
    return None


def job_environment(event: Event, context: LambdaContextInfo) -> list[dict[str, str]]:
    env = {
        "EVENT": json.dumps(event.raw) if not isinstance(event.raw, bytes | bytearray) else event.raw.decode(),
        "CONTEXT": context.to_json(),
        "AWS_LAMBDA_REQUEST_ID": context.aws_request_id,
    }
    if event.script is not None:
        env["SCRIPT"] = base64.b64encode(event.script).decode()
    return [{"name": k, "value": v} for k, v in env.items()]


def submit_job(
    config: FunctionConfig,
    event: Event,
    context: LambdaContextInfo,
    client_factory: Callable[[], Any],
) -> str:
    """Submit the whole event as one Batch job named after the function; return the job id."""
    name = context.function_name or config.name
    environment = job_environment(event, context)
    request: dict[str, Any] = job_names(name)
    if config.multi_node_parallel:
        request["nodeOverrides"] = {
            "nodePropertyOverrides": [{"targetNodes": "0:", "containerOverrides": {"environment": environment}}]
        }
    else:
        request["containerOverrides"] = {"environment": environment}
    job_id = submit_request(request, client_factory)
    log.info("handed off to AWS Batch: job %s (queue %s)", job_id, name)
    return job_id


def job_names(name: str) -> dict[str, Any]:
    """A function's Batch job: the job, its job definition and its queue all named after the
    function (SCAR creates the definition and the queue under that name)."""
    return {"jobName": name, "jobDefinition": name, "jobQueue": name}


def submit_request(request: dict[str, Any], client_factory: Callable[[], Any]) -> str:
    """Send a submit_job request (job_names plus overrides); the job id, or DelegationError."""
    name = request["jobName"]
    try:
        response = client_factory().submit_job(**request)
    except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoCredentialsError ...
        raise DelegationError(f"AWS Batch refused the job for {name!r}: {exc}", job_queue=name) from exc
    job_id = response.get("jobId")
    if not job_id:
        raise DelegationError(f"AWS Batch answered without a job id for {name!r}", job_queue=name)
    return str(job_id)


def batch_client() -> Any:
    """boto3's Batch client; AWS_ENDPOINT_URL_BATCH (read by boto3 itself) points it elsewhere."""
    import boto3

    return boto3.client("batch")
