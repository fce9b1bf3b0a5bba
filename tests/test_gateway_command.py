"""`conveyor gateway` as a real process: it prints its URL and a generated login, serves the page and
the API on 127.0.0.1, and refuses a bad catalogue or user with the configuration exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.e2e  # runs `conveyor` as a process (not in `make test-fast`)

CONVEYOR = [sys.executable, "-m", "conveyor"]


def catalogue(tmp_path: Path, server, bucket: str) -> Path:
    provider = {"endpoint": server.endpoint, "access_key": server.access_key, "secret_key": server.secret_key}
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump({"models": [{
        "name": "copy", "title": "Copy", "description": "Returns the file.", "platform": "local",
        "function": {"storage_providers": {"minio": {"default": provider}},
                     "input": [{"storage_provider": "minio.default", "path": f"{bucket}/in"}],
                     "conveyor": {"keep_input_folders": True,
                                  "status": {"storage_provider": "minio.default", "path": f"{bucket}/status"}}},
    }]}))
    return path


def test_the_command_serves_the_page_and_prints_a_generated_login(tmp_path, s3_server, bucket, s3_client) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONVEYOR_"))}
    proc = subprocess.Popen([*CONVEYOR, "gateway", "--catalogue", str(catalogue(tmp_path, s3_server, bucket)),
                             "--port", "0", "--max-upload-mb", "0.01"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("open http" in line for line in lines):
            line = proc.stderr.readline() if proc.stderr else ""
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        url = re.search(r"open (http://127\.0\.0\.1:\d+)", text)
        login = re.search(r"log in as (\S+) with password (\S+)", text)
        assert url and login, text
        base, auth = url.group(1), (login.group(1), login.group(2))
        assert requests.get(f"{base}/", timeout=10).status_code == 200
        assert requests.get(f"{base}/api/models", timeout=10).status_code == 401
        assert [m["name"] for m in requests.get(f"{base}/api/models", auth=auth, timeout=10).json()] == ["copy"]
        big = requests.post(f"{base}/api/models/copy/files", auth=auth, files={"file": ("a.bin", b"x" * 20000)},
                            timeout=10)
        assert big.status_code == 413
        small = requests.post(f"{base}/api/models/copy/files", auth=auth, files={"file": ("a.bin", b"x")}, timeout=10)
        assert small.status_code == 201
        assert len(s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])) == 1
        assert "conveyor_gateway_uploads_total" in requests.get(f"{base}/metrics", timeout=10).text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert login.group(2) not in "".join(proc.stderr.readlines() if proc.stderr else [])  # printed once only


def test_help_explains_the_catalogue_and_the_api() -> None:
    out = subprocess.run([*CONVEYOR, "gateway", "--help"], capture_output=True, text=True, check=True).stdout
    for words in ("--catalogue", "--user NAME:PASSWORD", "--max-upload-mb", "curl -u", "conveyor: status:"):
        assert words in out


def test_a_bad_catalogue_or_user_exits_with_the_configuration_code(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: 'Not OK'}]\n")
    proc = subprocess.run([*CONVEYOR, "gateway", "--catalogue", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 78 and "models[0].name" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"models": [{"name": "m", "function": {
        "input": [{"storage_provider": "minio.default", "path": "b/in"}],
        "storage_providers": {"minio": {"default": {"endpoint": "http://127.0.0.1:1", "access_key": "a",
                                                    "secret_key": "b"}}}}}]}))
    # without keep_input_folders two users' outputs of one file name would be one object
    proc = subprocess.run([*CONVEYOR, "gateway", "--catalogue", str(good)], capture_output=True, text=True)
    assert proc.returncode == 78 and "keep_input_folders: true" in proc.stderr, proc.stderr
    doc = yaml.safe_load(good.read_text())
    doc["models"][0]["function"]["conveyor"] = {"keep_input_folders": True}
    good.write_text(yaml.safe_dump(doc))
    proc = subprocess.run([*CONVEYOR, "gateway", "--catalogue", str(good), "--user", "../evil:pw"],
                          capture_output=True, text=True)
    assert proc.returncode == 78 and "not allowed" in proc.stderr and "pw" not in proc.stderr.split("'../evil'")[-1]
