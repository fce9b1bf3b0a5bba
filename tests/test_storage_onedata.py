"""The Onedata store against a CDMI stand-in.

No Onedata server can run here (a Oneprovider needs a Onezone, Couchbase and a cluster manager),
so these tests run against the small CDMI-subset server below (http.server on 127.0.0.1, files
in a temporary folder). It is a stand-in, not Onedata: it enforces only what the store relies on,
as Oneprovider's CDMI 1.1.1 interface defines it, and refuses anything else:

- every request carries `X-Auth-Token: <token>` (else 401, with Onedata's JSON error body);
- paths are `/cdmi/<space>/<path>`, URL-encoded (another space: 404);
- a folder is made with PUT `<path>/` + `Content-Type: application/cdmi-container` +
  `X-CDMI-Specification-Version: 1.1.1`, inside an existing folder (else 404);
- file content is a plain (non-CDMI) PUT or GET body; a PUT inside a missing folder is 404;
- CDMI reads: `?objectType`, and `?children:<from>-<to>` on a folder URL ending in '/'.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from conveyor.config import ProviderRef, StorageProvider, load_config
from conveyor.errors import ConfigError, CredentialsError, StorageError
from conveyor.storage import ObjectStore, open_store
from conveyor.storage.onedata import OnedataStore

MiB = 1024 * 1024
ODD_KEY = "in/dir with space/naïve café+plus 1 ümlaut.txt"
TOKEN, SPACE = "MDAxY2xvY2F0aW9uIG9uZXpvbmUK-test-token", "plants space"
CDMI_VERSION = "1.1.1"
CONTAINER, OBJECT = "application/cdmi-container", "application/cdmi-object"


def strays(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "part" in p.name)


# -- the CDMI stand-in --------------------------------------------------------------------------
class CdmiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CdmiServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def answer(self, status: int, body: Any = None, content_type: str = "application/json") -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: int, id: str, description: str) -> None:
        self.answer(status, {"error": {"id": id, "description": description}})

    def resolve(self) -> tuple[Path, bool, str] | None:
        """(file path, URL ends with '/', query), or None once an error was answered."""
        raw, _, query = self.path.partition("?")
        self.server.seen.append((self.command, raw, query, dict(self.headers)))
        if self.headers.get("X-Auth-Token") != TOKEN:
            self.error(401, "tokenInvalid", "Provided token is not valid.")
            return None
        parts = unquote(raw).split("/")
        if len(parts) < 3 or parts[1] != "cdmi" or parts[2] != SPACE:
            self.error(404, "notFound", "The resource could not be found.")
            return None
        rest = [part for part in parts[3:] if part]
        if any(part in (".", "..") for part in rest):
            self.error(400, "badValue", "Bad path.")
            return None
        return self.server.root.joinpath(*rest), raw.endswith("/"), query

    def cdmi(self) -> bool:
        return self.headers.get("X-CDMI-Specification-Version") == CDMI_VERSION

    def do_GET(self) -> None:
        found = self.resolve()
        if found is None:
            return
        path, slash, query = found
        if query and not self.cdmi():
            return self.error(400, "missingCdmiVersion", "CDMI requests need X-CDMI-Specification-Version.")
        if not path.exists():
            return self.error(404, "notFound", "The resource could not be found.")
        if query == "objectType":
            if path.is_dir() and not slash:  # CDMI: a container's URI ends with '/'
                self.send_response(301)
                self.send_header("Location", self.path.replace("?", "/?", 1))
                self.send_header("Content-Length", "0")
                return self.end_headers()
            return self.answer(200, {"objectType": CONTAINER if path.is_dir() else OBJECT})
        if query.startswith("children:"):
            if not (path.is_dir() and slash):
                return self.error(400, "badValue", "children of a container only")
            first, last = (int(n) for n in query.removeprefix("children:").split("-"))
            names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
            page = names[first : last + 1]
            return self.answer(200, {"children": page, "childrenrange": f"{first}-{first + len(page) - 1}"})
        if query or self.cdmi() or not path.is_file():
            return self.error(400, "badValue", "the stand-in serves file content as plain GET only")
        self.send_response(200)
        self.send_header("Content-Type", self.server.content_types.get(path, "application/octet-stream"))
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with open(path, "rb") as source:
            shutil.copyfileobj(source, self.wfile, 64 * 1024)

    def do_PUT(self) -> None:
        found = self.resolve()
        if found is None:
            return
        path, slash, query = found
        length = self.headers.get("Content-Length")
        if length is None:
            return self.error(411, "lengthRequired", "Content-Length required.")
        if slash:  # a container
            self.rfile.read(int(length))
            if not self.cdmi() or self.headers.get("Content-Type") != CONTAINER:
                return self.error(400, "badValue", "a container needs the CDMI version and content type")
            if not path.parent.is_dir():
                return self.error(404, "notFound", "Parent directory does not exist.")
            if path.is_dir():
                return self.answer(204)
            path.mkdir()
            return self.answer(201, {"objectType": CONTAINER})
        if self.cdmi() or query or "cdmi" in self.headers.get("Content-Type", ""):
            return self.error(400, "badValue", "the stand-in takes file content as a plain PUT only")
        remaining = int(length)
        if not path.parent.is_dir():
            self.rfile.read(remaining)
            return self.error(404, "notFound", "Parent directory does not exist.")
        existed = path.is_file()
        partial = path.parent / f".upload-{threading.get_ident()}"
        with open(partial, "wb") as target:
            while remaining:
                block = self.rfile.read(min(64 * 1024, remaining))
                if not block:
                    break
                target.write(block)
                remaining -= len(block)
        os.replace(partial, path)
        self.server.content_types[path] = self.headers.get("Content-Type", "application/octet-stream")
        self.answer(204 if existed else 201)


class CdmiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), CdmiHandler)
        self.root = root
        self.seen: list[tuple[str, str, str, dict[str, str]]] = []  # method, raw path, query, headers
        self.content_types: dict[Path, str] = {}

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def cdmi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CdmiServer]:
    root = tmp_path_factory.mktemp("onedata") / SPACE  # the space's root folder
    root.mkdir()
    server = CdmiServer(root)
    threading.Thread(target=server.serve_forever, name="cdmi", daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def provider(server: CdmiServer, **fields: Any) -> StorageProvider:
    base = StorageProvider(ref=ProviderRef("onedata", "egi"), host=server.host, token=TOKEN, space=SPACE)
    return replace(base, **fields)


@pytest.fixture
def store(cdmi: CdmiServer) -> OnedataStore:
    opened = open_store(provider(cdmi))
    assert isinstance(opened, OnedataStore)
    return opened


@pytest.fixture
def bucket(request: pytest.FixtureRequest) -> str:
    return f"b-{request.node.name[:40]}-{time.monotonic_ns() % 10**9}"


# -- tests ----------------------------------------------------------------------------------------
def test_open_store_dispatches_onedata(store: OnedataStore, cdmi: CdmiServer) -> None:
    assert isinstance(store, ObjectStore)
    assert store.base_url == f"{cdmi.host}/cdmi/plants%20space"
    assert TOKEN not in repr(store)
    default = open_store(StorageProvider(ProviderRef("onedata"), host="op.example.org", token="t", space="s"))
    assert default.base_url == "https://op.example.org/cdmi/s"  # as faas-supervisor: https://<host>/cdmi/<space>


def test_round_trip_with_odd_key_creates_the_folders(
    store: OnedataStore, cdmi: CdmiServer, bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "photo.JPG"
    src.write_bytes("héllo wörld\n".encode() * 1000)
    key = ODD_KEY.replace(".txt", ".JPG")
    start = len(cdmi.seen)
    assert store.upload(src, bucket, key) == src.stat().st_size
    assert (cdmi.root / bucket / key).read_bytes() == src.read_bytes()
    assert cdmi.content_types[cdmi.root / bucket / key] == "image/jpeg"

    mine = cdmi.seen[start:]
    assert all(headers.get("X-Auth-Token") == TOKEN for *_, headers in mine)
    made = [unquote(raw) for method, raw, _, _ in mine if method == "PUT" and raw.endswith("/")]
    space = f"/cdmi/{SPACE}"
    assert made == [f"{space}/{bucket}/", f"{space}/{bucket}/in/", f"{space}/{bucket}/in/dir with space/"]
    [put] = [(raw, headers) for method, raw, _, headers in mine if method == "PUT" and not raw.endswith("/")]
    assert unquote(put[0]) == f"{space}/{bucket}/{key}"
    assert "X-CDMI-Specification-Version" not in put[1]  # file content: a plain PUT

    assert store.exists(bucket, key)
    assert store.list_keys(bucket) == [key]
    dest = tmp_path / "out" / "back.jpg"
    assert store.download(bucket, key, dest) == src.stat().st_size
    assert dest.read_bytes() == src.read_bytes() and strays(dest.parent) == []


def test_folders_are_made_once(store: OnedataStore, cdmi: CdmiServer, bucket: str) -> None:
    store.put_bytes(b"1", bucket, "out/a.json")
    start = len(cdmi.seen)
    store.put_bytes(b"2", bucket, "out/b.json")  # the folder is known: one request
    assert [(method, query) for method, _, query, _ in cdmi.seen[start:]] == [("PUT", "")]


def test_folder_removed_behind_the_stores_back_is_made_again(
    store: OnedataStore, cdmi: CdmiServer, bucket: str
) -> None:
    store.put_bytes(b"1", bucket, "out/deep/a.json")
    shutil.rmtree(cdmi.root / bucket / "out")  # another client cleaned up: the remembered folder is gone
    store.put_bytes(b"2", bucket, "out/deep/b.json")  # PUT 404 -> folders probed and made -> PUT again
    assert (cdmi.root / bucket / "out" / "deep" / "b.json").read_bytes() == b"2"


def test_nested_listing_pages_and_exists(store: OnedataStore, bucket: str) -> None:
    for key in ("a/1.txt", "a/2.txt", "a/3.txt", "b/3.txt", "a/sub/deeper/4.txt", "top.txt"):
        store.put_bytes(key.encode(), bucket, key)
    store.list_page = 2  # several pages per folder
    assert store.list_keys(bucket) == ["a/1.txt", "a/2.txt", "a/3.txt", "a/sub/deeper/4.txt", "b/3.txt", "top.txt"]
    assert store.list_keys(bucket, "a/") == ["a/1.txt", "a/2.txt", "a/3.txt", "a/sub/deeper/4.txt"]
    assert store.list_keys(bucket, "a/sub/d") == ["a/sub/deeper/4.txt"]
    assert store.list_keys(bucket, "zzz") == [] and store.list_keys(bucket, "no/such/folder/") == []
    assert store.exists(bucket, "a/sub/deeper/4.txt")
    assert not store.exists(bucket, "a/missing.txt")
    assert not store.exists(bucket, "a")  # a folder is not an object
    assert not store.exists("no-such-bucket", "x.txt")
    with pytest.raises(StorageError, match="bucket folder not found"):
        store.list_keys("no-such-bucket")


def test_ensure_bucket_is_idempotent(cdmi: CdmiServer, bucket: str) -> None:
    open_store(provider(cdmi)).ensure_bucket(bucket)
    open_store(provider(cdmi)).ensure_bucket(bucket)
    assert (cdmi.root / bucket).is_dir()


def test_missing_object_is_not_found_and_leaves_nothing(store: OnedataStore, bucket: str, tmp_path: Path) -> None:
    store.ensure_bucket(bucket)
    dest = tmp_path / "in" / "missing.jpg"
    with pytest.raises(StorageError) as info:
        store.download(bucket, "no/such key.jpg", dest)
    error = info.value
    assert not isinstance(error, CredentialsError)
    assert "not found" in error.message and "The resource could not be found" in error.message
    assert "onedata.egi" in error.message and bucket in error.message and "no/such key.jpg" in error.message
    assert not dest.exists() and strays(dest.parent) == []
    keep = tmp_path / "keep.txt"
    keep.write_bytes(b"previous")
    with pytest.raises(StorageError):
        store.download(bucket, "missing.txt", keep)
    assert keep.read_bytes() == b"previous" and strays(tmp_path) == []


def test_wrong_token(cdmi: CdmiServer, store: OnedataStore, bucket: str, tmp_path: Path) -> None:
    store.put_bytes(b"x", bucket, "k/x.txt")
    wrong = open_store(provider(cdmi, token="not-the-token"), max_attempts=1)
    src = tmp_path / "f.txt"
    src.write_text("x")
    dest = tmp_path / "dest.txt"
    for call in (
        lambda: wrong.download(bucket, "k/x.txt", dest),
        lambda: wrong.upload(src, bucket, "k/y.txt"),
        lambda: wrong.put_bytes(b"{}", bucket, "k/z.json"),
        lambda: wrong.list_keys(bucket),
        lambda: wrong.exists(bucket, "k/x.txt"),
        lambda: wrong.ensure_bucket(bucket),
    ):
        with pytest.raises(CredentialsError) as info:
            call()
        assert info.value.exit_code == 77
        assert "HTTP 401" in info.value.message and "Provided token is not valid" in info.value.message
    assert not dest.exists() and strays(tmp_path) == []
    assert not (cdmi.root / bucket / "k" / "y.txt").exists()


def test_unknown_space(cdmi: CdmiServer, bucket: str) -> None:
    with pytest.raises(StorageError, match="not found") as info:
        open_store(provider(cdmi, space="no such space")).put_bytes(b"x", bucket, "x.txt")
    assert not isinstance(info.value, CredentialsError)


@pytest.mark.parametrize("attempts", [1, None])
def test_unreachable_provider_fails_fast(closed_port: int, tmp_path: Path, attempts: int | None) -> None:
    unreachable = StorageProvider(ProviderRef("onedata"), host=f"http://127.0.0.1:{closed_port}", token="t", space="s")
    store = open_store(unreachable) if attempts is None else open_store(unreachable, max_attempts=attempts)
    dest = tmp_path / "dest.txt"
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.download("bucket", "key.txt", dest)
    elapsed = time.monotonic() - started
    assert not isinstance(info.value, CredentialsError)
    assert f"cannot reach http://127.0.0.1:{closed_port}/cdmi/s" in info.value.message
    assert elapsed < (1.0 if attempts == 1 else 6.0), f"took {elapsed:.1f}s"
    assert not dest.exists() and strays(tmp_path) == []


def test_10_mb_streams_with_bounded_memory(store: OnedataStore, cdmi: CdmiServer, bucket: str, tmp_path: Path) -> None:
    # tracemalloc sees the stand-in's thread too; it moves 64 KiB at a time. A store that read the
    # file or the response into memory would peak at 10 MB or more.
    size = 10 * MiB + 777
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(size))
    expected = hashlib.sha256(src.read_bytes()).hexdigest()
    store.put_bytes(b"{}", bucket, "m/warm.json")
    store.download(bucket, "m/warm.json", tmp_path / "warm.json")
    dest = tmp_path / "back.bin"
    tracemalloc.start()
    try:
        assert store.upload(src, bucket, "m/model weights.bin") == size
        assert store.download(bucket, "m/model weights.bin", dest) == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB, f"peak {peak / MiB:.1f} MiB of Python memory for a {size / MiB:.0f} MiB object"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == expected
    assert (cdmi.root / bucket / "m" / "model weights.bin").stat().st_size == size


@pytest.mark.parametrize("missing", ["oneprovider_host", "token", "space"])
def test_config_errors_name_the_key(missing: str) -> None:
    fields = {"oneprovider_host": "op.example.org", "token": "t", "space": "s"}
    attribute = {"oneprovider_host": "host"}.get(missing, missing)
    complete = StorageProvider(ProviderRef("onedata", "egi"), host="op.example.org", token="t", space="s")
    with pytest.raises(ConfigError) as info:
        open_store(replace(complete, **{attribute: None}))
    assert info.value.context["key"] == f"storage_providers.onedata.egi.{missing}"

    del fields[missing]
    definition = "storage_providers:\n  onedata:\n    egi: " + json.dumps(fields) + "\n"
    with pytest.raises(ConfigError) as info:
        load_config({}, "local", path="/f.yaml", read_file=lambda path: definition)
    assert f"storage_providers.onedata.egi.{missing}" in info.value.message
