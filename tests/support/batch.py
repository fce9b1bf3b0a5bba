"""moto's Batch control plane on 127.0.0.1, one server per test process, shared by every test.

moto keeps its state per process (every ThreadedMotoServer of a pytest worker sees the same
queues, definitions and IAM roles), so the tests do not each start and reset their own: that
reset would wipe what another module's fixture set up on the same worker. `queue(name, command)`
makes a queue, a compute environment and a job definition all named `name` (as SCAR names them
after the function) once per process; a second call with the same name finds them.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@dataclass
class MotoBatch:
    endpoint: str
    batch: Any  # boto3's Batch client on the server
    _queues: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def queue(self, name: str, command: list[str], image: str = "conveyor/base") -> str:
        """A queue, compute environment and job definition named `name` (made once); `name`."""
        import boto3

        with self._lock:
            if name in self._queues:
                return name
            iam = boto3.client("iam", endpoint_url=self.endpoint, **CREDENTIALS)
            role = iam.create_role(RoleName=f"batch-{uuid.uuid4().hex[:8]}",
                                   AssumeRolePolicyDocument="{}")["Role"]["Arn"]
            env_arn = self.batch.create_compute_environment(
                computeEnvironmentName=name, type="UNMANAGED", state="ENABLED", serviceRole=role
            )["computeEnvironmentArn"]
            self.batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=1,
                                        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env_arn}])
            self.batch.register_job_definition(
                jobDefinitionName=name, type="container",
                containerProperties={"image": image, "vcpus": 1, "memory": 512, "command": command},
            )
            self._queues.add(name)
            return name


_SERVER: MotoBatch | None = None


def moto_batch_server() -> MotoBatch:
    """This process's moto server (started on first use, stopped with the process), Batch without Docker."""
    global _SERVER
    if _SERVER is None:
        import boto3
        import requests
        from moto.server import ThreadedMotoServer

        from tests.support.emulator import free_port

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        requests.post(f"{endpoint}/moto-api/config", json={"batch": {"use_docker": False}}, timeout=10)
        _SERVER = MotoBatch(endpoint, boto3.client("batch", endpoint_url=endpoint, **CREDENTIALS))
    return _SERVER
