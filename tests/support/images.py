"""Fixtures for the tests that run Conveyor's images: a Docker engine and the images, built once
per session. A pytest plugin (tests/conftest.py loads it), so tests/images and tests/models share
one build.

    client   a docker.DockerClient for the engine DOCKER_HOST (or /var/run/docker.sock) names;
             every test that uses it is skipped, with the reason, when none answers (failed when CI=true)
    images   runs images/tools/build.py (cached: seconds when nothing changed) and returns its
             summary: {"base_image", "sizes_mb", "seconds", ...}
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.requirements import import_or_missing, missing

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "images" / "tools" / "build.py"
LOCK = REPO / ".cache" / "images.lock"

BASE = "conveyor/base"
YOLO = "conveyor/yolo"
DEEPAAS = "conveyor/deepaas-demo"
MODEL = "conveyor/deepaas-demo-model"
# The example DEEPaaS models, images/<name>/ built as conveyor/<name>.
EXAMPLES = {name: f"conveyor/{name}" for name in ("pose", "classify", "birds")}


@pytest.fixture(scope="session")
def client():
    docker = import_or_missing("docker", "the docker SDK is not installed (pip install -e '.[docker]')")
    try:
        engine = docker.from_env(timeout=600)
        engine.ping()
    except Exception as exc:  # no socket, refused, wrong permissions: all mean "no engine"
        missing(
            f"no Docker engine reachable via DOCKER_HOST or /var/run/docker.sock ({type(exc).__name__}); "
            "start one with: export DOCKER_HOST=$(images/tools/dockerd.sh start)"
        )
    return engine


@pytest.fixture(scope="session")
def images(client):
    """Build every image from the working tree (a cached rebuild takes seconds). One build at a time
    on this machine: two test processes that both need the images wait for each other (the second
    build then finds everything cached)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # .ci/run sets CONVEYOR_IMAGES_PRUNE=1: a one-shot machine keeps no builder stage for later.
        prune = ["--prune"] if os.environ.get("CONVEYOR_IMAGES_PRUNE") == "1" else []
        proc = subprocess.run(
            [sys.executable, str(BUILD), "--no-lint", *prune], capture_output=True, text=True, timeout=2400,
            check=False,
        )
    if proc.returncode:
        pytest.fail(f"images/tools/build.py failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def image_file(client, image: str, path: str) -> bytes:
    """A regular file's bytes from an image, read without running it."""
    container = client.containers.create(image, entrypoint=["/bin/true"], network_disabled=True)
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            assert member is not None and member.isreg(), f"{path} in {image} is not a regular file"
            return tar.extractfile(member).read()
    finally:
        container.remove(force=True)
