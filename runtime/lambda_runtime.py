"""Conveyor under AWS Lambda: the real awslambdaric loop, with the pipeline as its handler.

The handler instance (and so a loaded model) lives across warm invocations; each invocation
gets a fresh request id, deadline (the context's, minus timeout_threshold), environment and
work directory, and whatever it left in the scratch dir (/tmp) is removed afterwards.

Responses (contract section 6): `{"statusCode", "headers", "body" (base64), "isBase64Encoded"}`.
- HTTP events (API Gateway, Function URLs) and inline payloads get the output back: the one
  output file, a zip of several, or the model's stdout; statusCode 500 when a record failed.
- Storage events (S3, SQS, SNS, EventBridge, MinIO): a failed record makes the invocation
  fail (an error of the failed record's kind), so Lambda's retries and on-failure
  destinations apply. The body of a successful one is the JSON list of result records.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.config import FunctionConfig
from conveyor.deadline import Deadline
from conveyor.delegate import LambdaContextInfo, batch_client, reason_to_delegate, submit_job
from conveyor.errors import error_for
from conveyor.events import Event, load_event
from conveyor.handler import Handler, load_handler
from conveyor.job import Job, Stores
from conveyor.logs import bound_request_id
from conveyor.platform import Platform
from conveyor.process import responds_inline, run_event, store_record
from conveyor.records import ResultRecord, Status
from conveyor.scratch import scratch_dir
from conveyor.storage import TransferOptions

log = logging.getLogger(__name__)


@dataclass
class Invoked:
    """One invocation's work, before it becomes the response."""

    event: Event
    records: list[ResultRecord]
    body: io.BytesIO | None  # the response body of an event answered inline; None otherwise
    info: LambdaContextInfo


class LambdaApp:
    """The Lambda handler: `app(event, context) -> response`. One instance per process.

    `conveyor local --platform lambda` drives one per warm environment, with its own scratch
    directory and the loop's shutdown event (under Lambda nothing sets it).
    """

    def __init__(
        self,
        config: FunctionConfig,
        environ: Mapping[str, str],
        handler: Handler | None = None,
        batch_client_factory: Callable[[], Any] = batch_client,
        scratch: Path | None = None,
        shutdown: threading.Event | None = None,
        transfer: TransferOptions | None = None,
    ) -> None:
        self.config = config
        self.base_env = dict(environ)
        self.handler = handler or load_handler(config)
        self.stores = Stores(config, options=transfer)
        self.scratch = scratch_dir(environ) if scratch is None else scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.batch_client_factory = batch_client_factory
        self.shutdown = shutdown or threading.Event()
        self.invocations = 0

    def __call__(self, raw_event: Any, context: Any) -> dict[str, Any]:
        return self._respond(self.invoke(raw_event, context))

    def invoke(self, raw_event: Any, context: Any) -> Invoked:
        """Process one invocation (records logged and stored); what the scratch dir gained is removed."""
        self.invocations += 1
        request_id = str(getattr(context, "aws_request_id", "") or "-")
        before = set(self.scratch.iterdir())
        with bound_request_id(request_id):
            try:
                return self._invoke(raw_event, context, request_id)
            finally:
                for leftover in set(self.scratch.iterdir()) - before:
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)

    def _invoke(self, raw_event: Any, context: Any, request_id: str) -> Invoked:
        event = load_event(raw_event)
        info = LambdaContextInfo.from_context(context)
        remaining_ms = context.get_remaining_time_in_millis()
        deadline = Deadline.after(max(0.0, remaining_ms / 1000 - self.config.timeout_threshold))
        job = Job(
            config=self.config,
            platform=Platform.LAMBDA,
            handler=self.handler,
            stores=self.stores,
            base_env=self.base_env,
            scratch_dir=self.scratch,
            request_id=request_id,
            deadline=deadline,
            shutdown=self.shutdown,
            extra={"function_name": info.function_name, "memory_limit_in_mb": info.memory_limit_in_mb},
            # The killed child must be gone before Lambda's own deadline (ours + timeout_threshold).
            grace_period=min(self.config.conveyor.grace_period, self.config.timeout_threshold / 2),
        )
        mode = self.config.execution_mode
        if mode == "batch":
            return self._delegate(job, event, info, "execution_mode is batch")
        if mode == "lambda-batch":
            free = shutil.disk_usage(self.scratch).free
            for inp in event.inputs:
                if reason := reason_to_delegate(inp, self.config, deadline.remaining(), free):
                    return self._delegate(job, event, info, reason)
        body = io.BytesIO() if responds_inline(event) else None
        records = run_event(job, event, response=body)
        timed_out = [r for r in records if (r.error or {}).get("kind") == "timeout" and deadline.expired()]
        if mode == "lambda-batch" and timed_out:
            job_id = submit_job(self.config, event, info, self.batch_client_factory)
            for record in timed_out:
                record.status, record.job_id = Status.DELEGATED, job_id
                record.extra["delegation_reason"] = "the Lambda deadline came first; the run was killed"
                store_record(job, record)  # over the FAILED (timeout) one at the status location
        return Invoked(event, records, body, info)

    def _delegate(self, job: Job, event: Event, info: LambdaContextInfo, reason: str) -> Invoked:
        log.info("handing the event to AWS Batch: %s", reason)
        job_id = submit_job(self.config, event, info, self.batch_client_factory)
        records = []
        for inp in event.inputs:
            record = job.new_record(inp, status=Status.DELEGATED, job_id=job_id, extra={"delegation_reason": reason})
            store_record(job, record)  # the status location (the gateway) follows the Batch job from it
            records.append(record)
        return Invoked(event, records, None, info)

    def _respond(self, invoked: Invoked) -> dict[str, Any]:
        event, records, body, info = invoked.event, invoked.records, invoked.body, invoked.info
        failed = [r for r in records if not r.ok]
        if failed and not event.wants_response:
            first = failed[0].error or {}
            summary = f"{len(failed)} of {len(records)} records failed: {first.get('message')}"
            raise error_for(first.get("kind"), summary)
        if body is not None and not failed and not any(r.status is Status.DELEGATED for r in records):
            payload = body.getvalue()  # already base64 (or the model's raw stdout)
            if records and records[-1].extra.get("response") == "stdout":
                payload = base64.b64encode(payload)
        else:
            payload = base64.b64encode(json.dumps([r.to_dict() for r in records], default=str).encode())
        return {
            "statusCode": 500 if failed else 200,
            "headers": {
                "amz-lambda-request-id": info.aws_request_id,
                "amz-log-group-name": info.log_group_name,
                "amz-log-stream-name": info.log_stream_name,
            },
            "body": payload.decode(),
            "isBase64Encoded": True,
        }


_APP: LambdaApp | None = None


def handle(event: Any, context: Any) -> dict[str, Any]:
    """The function awslambdaric calls (named as `conveyor.lambda_runtime.handle`)."""
    if _APP is None:
        raise RuntimeError("conveyor's Lambda app is not initialised: start it with `conveyor run`")
    if _APP.invocations == 0:
        _single_log_handler()
    return _APP(event, context)


def _single_log_handler() -> None:
    """awslambdaric adds its own root handler; keep one line per record: ours, whose formatter
    (conveyor.logs) carries the request id and masks credentials (Lambda always sets AWS_SESSION_TOKEN)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if not getattr(handler, "_conveyor", False):
            root.removeHandler(handler)


def serve(config: FunctionConfig, environ: Mapping[str, str], transfer: TransferOptions | None = None) -> None:
    """Run the Lambda Runtime API loop until the process is stopped."""
    global _APP
    from awslambdaric import bootstrap
    from awslambdaric.lambda_runtime_client import LambdaRuntimeClient

    _APP = LambdaApp(config, environ, transfer=transfer)
    bootstrap.run(f"{__name__}.handle", LambdaRuntimeClient(environ["AWS_LAMBDA_RUNTIME_API"]))
