"""The real AWS Lambda Runtime Interface Emulator (RIE), taken from the aws-sam-cli wheel on PyPI,
run on loopback in front of a command (here: Conveyor's single entrypoint).

    with LambdaEmulator(["python", "-m", "conveyor", "run", "--config", cfg], env=..., timeout=30) as rie:
        status, headers, body = rie.invoke({"Records": [...]})
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

WHEEL_MEMBER = "samcli/local/rapid/aws-lambda-rie-x86_64"
CACHE = Path(os.environ.get("CONVEYOR_CACHE", Path(__file__).resolve().parents[2] / ".cache")) / "rie"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_rie(cache: Path = CACHE) -> Path:
    """The emulator binary, extracted once from `pip download --no-deps aws-sam-cli`."""
    binary = cache / "aws-lambda-rie-x86_64"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "aws-sam-cli", "-d", tmp],
            check=True,
            timeout=600,
        )
        [wheel] = Path(tmp).glob("aws_sam_cli-*.whl")
        with zipfile.ZipFile(wheel) as zf, zf.open(WHEEL_MEMBER) as src:
            partial = Path(tmp) / binary.name  # private to this process: xdist workers may race here
            partial.write_bytes(src.read())
        partial.chmod(0o755)
        partial.replace(binary)
    return binary


class LambdaEmulator:
    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        timeout: int = 30,
        log_path: Path | None = None,
        function_name: str = "conveyor-test",
    ) -> None:
        self.command = list(command)
        self.port = free_port()
        self.api_port = free_port()
        self.env = {
            **env,
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(timeout),
            "AWS_LAMBDA_FUNCTION_NAME": function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2026/11/24/[$LATEST]test",
        }
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="rie-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{INVOKE_PATH}"

    def __enter__(self) -> LambdaEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                str(ensure_rie()),
                "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
                "--runtime-api-address", f"127.0.0.1:{self.api_port}",
                *self.command,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the Lambda emulator did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def invoke(self, event: Any, timeout: float = 120) -> tuple[int, dict[str, str], Any]:
        data = event if isinstance(event, bytes) else json.dumps(event).encode()
        request = urllib.request.Request(self.url, data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, headers, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            status, headers, raw = exc.code, dict(exc.headers), exc.read()
        try:
            return status, headers, json.loads(raw)
        except ValueError:
            return status, headers, raw
