"""Shared fixtures. Keep them generic: every test module may use them.

Real S3-compatible server (SeaweedFS `weed server`, bound to 127.0.0.1):
    s3_server           one server for the whole session (fast: tests share it, each in its own bucket)
    bucket              a fresh, uniquely named, empty bucket on s3_server
    s3_client           a boto3 client for s3_server (path-style), to arrange and inspect objects
    make_provider       make_provider("minio" | "s3", id="default", **fields) -> StorageProvider for s3_server
    s3_server_factory   s3_server_factory(**SeaweedServer kwargs) -> a private, started server, stopped at
                        teardown: for tests that stop/restart it or need a notification.toml
    closed_port         a 127.0.0.1 port with nothing listening (unreachable-endpoint tests)
    deploy              deploy(script, **conveyor) -> tests.support.pipeline.Deployment: a function
                        definition for s3_server, run with `conveyor run` as a real process

Markers (declared in setup.cfg): `heavy` is set by hand; `e2e` is set here, on every test that
uses a real server, emulator or engine (by its fixtures) or runs real processes (by its module),
so `pytest -m "not heavy and not e2e"` (make test-fast) is the in-process layer and pure logic.
`requires` (tests.support.requirements.requirement) skips a test whose requirement is missing,
or fails it when CI=true.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import ProviderRef, StorageProvider
from conveyor.local.s3server import SeaweedServer
from tests.support.pipeline import COPY_SCRIPT, Deployment
from tests.support.requirements import apply_marks, check_marks

# client and images: a Docker engine and Conveyor's images (tests/images, tests/models).
pytest_plugins = ["tests.support.images"]

# e2e: fixtures that start a real server, emulator or engine ...
E2E_FIXTURES = frozenset({
    "s3_server", "s3_server_factory",  # SeaweedFS (and everything built on it: bucket, deploy ...)
    "rie_binary", "rie", "moto_batch",  # the Lambda emulator, moto's Batch
    "client", "images",  # a Docker engine and Conveyor's images
    "cdmi", "dav", "wsgidav", "seaweed_dav", "tls_dav",  # Onedata and WebDAV servers
})  # fmt: skip
# ... and modules whose tests run `conveyor`, a real model or child process groups as processes.
E2E_MODULES = frozenset({
    "test_cli.py", "test_local.py", "test_s3server.py", "test_handlers_e2e.py",
    "test_darknet.py", "test_deepaas.py", "test_child.py", "test_script_handler.py",
})  # fmt: skip
E2E_DIRS = ("images", "models")  # tests/images, tests/models: Docker engines and real models


FAST = "not heavy and not e2e"
IMAGE_FIXTURES = {"client", "images"}  # tests/support/images.py: the Docker engine and the built images


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        help=f"the in-process layer and pure logic only: -m '{FAST}', without importing the e2e-only modules",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("fast"):
        config.option.markexpr = f"({config.option.markexpr}) and {FAST}" if config.option.markexpr else FAST


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if config.getoption("fast") and (
        collection_path.name in E2E_MODULES or (collection_path.is_dir() and collection_path.name in E2E_DIRS)
    ):
        return True
    return None


def pytest_itemcollected(item: pytest.Item) -> None:
    """`make test` runs the suite on two workers (pytest-xdist, --dist loadgroup): everything that
    needs the images goes to one of them, which builds them once while the other runs the rest.
    (Set as each test is collected, before any pytest_collection_modifyitems hook: xdist reads the
    group in one.)"""
    if IMAGE_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.parent.name in ("images", "models"):
        item.add_marker(pytest.mark.xdist_group("images"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path
        if (
            E2E_FIXTURES & set(getattr(item, "fixturenames", ()))
            or path.name in E2E_MODULES
            or path.parent.name in E2E_DIRS
        ):
            item.add_marker(pytest.mark.e2e)
    apply_marks(items)  # requirement(reason) marks: skip locally ...


def pytest_report_header(config: pytest.Config) -> str:
    """The free disk where the servers keep their data: SeaweedFS turns read-only below
    min_free_space and Docker needs room for the images; a CI log should show it first."""
    folder = tempfile.gettempdir()
    usage = shutil.disk_usage(folder)
    return f"disk: {usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.0f} GiB under {folder}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    check_marks(item)  # ... and fail under CI=true


def provider_for(server: SeaweedServer, kind: str = "minio", id: str = "default", **fields: Any) -> StorageProvider:
    """A StorageProvider of type `kind` ("minio" or "s3") pointing at `server`; `fields` override."""
    provider = StorageProvider(
        ref=ProviderRef(kind, id),
        access_key=server.access_key,
        secret_key=server.secret_key,
        endpoint=server.endpoint,
        verify=True,
        region="us-east-1",
    )
    return replace(provider, **fields)


def unique_bucket_name(hint: str = "") -> str:
    """A valid S3 bucket name (3-63 chars, lowercase, digits, hyphens), unique, readable in logs."""
    stem = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-")
    return f"t-{stem}-{uuid.uuid4().hex[:10]}" if stem else f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("s3server"), environ=os.environ) as server:
        yield server


@pytest.fixture(scope="session")
def s3_client(s3_server: SeaweedServer) -> Any:
    return s3_server.client()


@pytest.fixture
def bucket(s3_server: SeaweedServer, s3_client: Any, request: pytest.FixtureRequest) -> str:
    name = unique_bucket_name(request.node.name)
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_provider(s3_server: SeaweedServer) -> Callable[..., StorageProvider]:
    def make(kind: str = "minio", id: str = "default", **fields: Any) -> StorageProvider:
        return provider_for(s3_server, kind, id, **fields)

    return make


@pytest.fixture
def s3_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SeaweedServer]]:
    servers: list[SeaweedServer] = []

    def start(**kwargs: Any) -> SeaweedServer:
        server = SeaweedServer(tmp_path_factory.mktemp("s3server-private"), environ=os.environ, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def deploy(tmp_path, s3_server: SeaweedServer, bucket: str) -> Callable[..., Deployment]:
    """deploy(script=COPY_SCRIPT, **conveyor_settings) -> a function definition on disk for s3_server."""

    def make(script: str | None = COPY_SCRIPT, **conveyor: Any) -> Deployment:
        return Deployment(tmp_path, s3_server, bucket, script, **conveyor)

    return make
