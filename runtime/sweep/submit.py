"""`conveyor sweep --submit batch`: one AWS Batch array job of N children, each a shard.

The job is the function's, named as the Lambda -> Batch hand-off names it (conveyor.delegate:
job, job definition and queue after the function), so it runs the function's image with the
function's definition (the job definition carries it, as it does for a hand-off). Each child runs
`conveyor sweep` with CONVEYOR_SHARDS=N; its index is AWS Batch's AWS_BATCH_JOB_ARRAY_INDEX (or,
under moto, the `:<i>` of its AWS_BATCH_JOB_ID).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conveyor.config import FunctionConfig
from conveyor.delegate import job_names, submit_request
from conveyor.errors import ConfigError

MAX_ARRAY = 10_000  # AWS Batch's largest array job


def sweep_command(input_arg: str | None) -> list[str]:
    """The command of every shard: `conveyor sweep`, with the --input the sweep was given."""
    return ["conveyor", "sweep", *(["--input", input_arg] if input_arg else [])]


def array_request(config: FunctionConfig, shards: int, input_arg: str | None = None) -> dict[str, Any]:
    """The submit_job request: the function's job, an array of `shards` children (one shard: a plain job)."""
    if not 1 <= shards <= MAX_ARRAY:
        raise ConfigError(f"an AWS Batch array job has 2 to {MAX_ARRAY} children (1 shard: a plain job); "
                          f"--shards {shards} cannot be submitted", key="--shards")
    if config.multi_node_parallel:
        raise ConfigError("a multi-node parallel job cannot be an array job: sweep with --manifest or "
                          "without batch.multi_node_parallel", key="batch.multi_node_parallel.enabled")
    request = job_names(config.name)
    request["jobName"] = f"{config.name}-sweep"
    request["containerOverrides"] = {
        "command": sweep_command(input_arg),
        "environment": [{"name": "CONVEYOR_SHARDS", "value": str(shards)}],
    }
    if shards > 1:
        request["arrayProperties"] = {"size": shards}
    return request


def submit_sweep(config: FunctionConfig, shards: int, client_factory: Callable[[], Any],
                 input_arg: str | None = None) -> str:
    """Submit the sweep; the (parent) job id."""
    return submit_request(array_request(config, shards, input_arg), client_factory)
