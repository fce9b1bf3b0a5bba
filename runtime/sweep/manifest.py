"""`conveyor sweep --manifest kubernetes`: a Kubernetes Indexed Job whose pods are the shards.

Each pod runs `conveyor sweep` with CONVEYOR_SHARDS=N; Kubernetes gives it JOB_COMPLETION_INDEX.
The function's definition is mounted as OSCAR mounts it: the service's ConfigMap (named after
the service, holding function_config.yaml and script.sh) read-only at /oscar/config, so Conveyor
finds it at /oscar/config/function_config.yaml and knows it runs under OSCAR. A failed shard is
retried on its own (backoffLimitPerIndex) and a re-run skips what already SUCCEEDED.
"""

from __future__ import annotations

import re
from typing import Any

from conveyor.config import FunctionConfig
from conveyor.errors import ConfigError
from conveyor.platform import OSCAR_CONFIG_PATH
from conveyor.sweep.submit import sweep_command

CONFIG_VOLUME = "oscar-config"  # OSCAR's name for the volume of the service's ConfigMap
CONFIG_DIR = OSCAR_CONFIG_PATH.rsplit("/", 1)[0]  # /oscar/config
MAX_NAME = 52  # a Job's name must leave room for the pods' `-<index>-<suffix>` within 63 characters


def job_name(config: FunctionConfig) -> str:
    """`<function>-sweep`, as a DNS label."""
    stem = re.sub(r"[^a-z0-9-]+", "-", config.name.lower()).strip("-")[: MAX_NAME - len("-sweep")].strip("-")
    return f"{stem or 'conveyor'}-sweep"


def indexed_job(config: FunctionConfig, shards: int, image: str, *, parallelism: int | None = None,
                retries: int = 1, input_arg: str | None = None) -> dict[str, Any]:
    """The Indexed Job manifest (a dict: yaml.safe_dump it)."""
    if shards < 1:
        raise ConfigError(f"the number of shards must be at least 1, not {shards}", key="--shards")
    if not image:
        raise ConfigError("--manifest kubernetes needs --image (the function's image)", key="--image")
    name = job_name(config)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "conveyor"}
    container = {
        "name": "sweep",
        "image": image,
        "command": sweep_command(input_arg),
        "env": [{"name": "CONVEYOR_SHARDS", "value": str(shards)}],
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": min(shards, parallelism or shards),
            "backoffLimitPerIndex": retries,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [{"name": CONFIG_VOLUME, "configMap": {"name": config.name}}],
                },
            },
        },
    }
