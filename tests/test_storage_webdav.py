"""The WebDAV store against two real WebDAV servers on loopback:

- SeaweedFS's WebDAV gateway (`SeaweedServer(webdav=True)`): rooted at the S3 buckets, so what the
  store writes is checked through the S3 view. It has no authentication at all.
- WsgiDAV (PyPI `wsgidav`, a complete WebDAV server) under cheroot, in a thread, with HTTP basic
  authentication, over plain HTTP and over TLS with a self-signed certificate. A small WSGI
  middleware in front of it records what reached the server and can answer 503 on demand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import ProviderRef, StorageProvider, load_config
from conveyor.errors import ConfigError, CredentialsError, StorageError
from conveyor.local.s3server import SeaweedServer
from conveyor.storage import ObjectStore, http_base_url, open_store
from conveyor.storage.webdav import WebDavStore
from tests.conftest import unique_bucket_name
from tests.support.pipeline import PNG, keys, oscar_event, records

MiB = 1024 * 1024
ODD_KEY = "in/dir with space/naïve café+plus 1 ümlaut.txt"
USER, PASSWORD = "alice", "wonder land+1"


def strays(folder: Path) -> list[str]:
    """Anything in `folder` that looks like a leftover temporary download."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "part" in p.name)


# -- the servers --------------------------------------------------------------------------------
FINITE_DEPTH = b'<?xml version="1.0" encoding="utf-8"?><D:error xmlns:D="DAV:"><D:propfind-finite-depth/></D:error>'


class Recorder:
    """WSGI middleware: remembers (method, path, Content-Type, has Authorization) of each request,
    answers 503 to the next `fail_next` requests, and treats a PROPFIND with Depth: infinity as
    real servers do: `infinity` = "serve" (WsgiDAV, SeaweedFS), "refuse" (403 propfind-finite-depth:
    Apache mod_dav's default), or "as-1" (answered as Depth 1: SabreDAV's default, in ownCloud and
    Nextcloud)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str, str | None, bool]] = []
        self.fail_next = 0
        self.infinity = "serve"
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"].encode("latin-1").decode("utf-8", "replace")
        seen = (environ["REQUEST_METHOD"], path, environ.get("CONTENT_TYPE"), "HTTP_AUTHORIZATION" in environ)
        with self.lock:
            self.seen.append(seen)
            failing = self.fail_next > 0
            self.fail_next -= failing
        if environ["REQUEST_METHOD"] == "PROPFIND" and environ.get("HTTP_DEPTH") == "infinity":
            if self.infinity == "refuse":
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(FINITE_DEPTH)))]
                start_response("403 Forbidden", headers)
                return [FINITE_DEPTH]
            if self.infinity == "as-1":
                environ["HTTP_DEPTH"] = "1"
        if failing:
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))  # drain the request body
            start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Content-Length", "4")])
            return [b"busy"]
        return self.app(environ, start_response)


@dataclass
class Dav:
    """A running WebDAV server: where it is, how to log in, and a way to read what it holds."""

    name: str
    url: str
    login: str | None = None
    password: str | None = None
    read: Callable[[str, str], bytes | None] = lambda bucket, key: None  # the server's own view
    recorder: Recorder | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def store(self, **fields: Any) -> WebDavStore:
        options = {k: fields.pop(k) for k in ("max_attempts", "connect_timeout", "read_timeout") if k in fields}
        provider = StorageProvider(
            ref=ProviderRef("webdav", "test"), host=self.url, login=self.login, password=self.password
        )
        store = open_store(replace(provider, **fields), **options)
        assert isinstance(store, WebDavStore)
        return store


def start_wsgidav(root: Path, *, tls: tuple[Path, Path] | None = None) -> tuple[Any, Recorder, str]:
    from cheroot import wsgi
    from wsgidav.wsgidav_app import WsgiDAVApp

    config = {
        "host": "127.0.0.1",
        "port": 0,
        "provider_mapping": {"/": str(root)},
        "simple_dc": {"user_mapping": {"*": {USER: {"password": PASSWORD}}}},
        "http_authenticator": {"accept_basic": True, "accept_digest": False, "default_to_digest": False},
        "dir_browser": {"enable": False},
        "verbose": 0,
        "logging": {"enable": False},
    }
    recorder = Recorder(WsgiDAVApp(config))
    server = wsgi.Server(("127.0.0.1", 0), recorder, numthreads=4)
    if tls is not None:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(str(tls[0]), str(tls[1]))
    server.prepare()
    threading.Thread(target=server.serve, name="wsgidav", daemon=True).start()
    port = server.bind_addr[1]
    scheme = "https" if tls else "http"
    return server, recorder, f"{scheme}://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def seaweed_dav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("weed-webdav"), environ=os.environ, webdav=True) as server:
        yield server


@pytest.fixture(scope="module")
def wsgidav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dav]:
    root = tmp_path_factory.mktemp("wsgidav-root")
    server, recorder, url = start_wsgidav(root)

    def read(bucket: str, key: str) -> bytes | None:
        path = root / bucket / key
        return path.read_bytes() if path.is_file() else None

    yield Dav("wsgidav", url, USER, PASSWORD, read, recorder, {"root": root})
    server.stop()


@pytest.fixture(scope="module")
def seaweed(seaweed_dav: SeaweedServer) -> Dav:
    client = seaweed_dav.client()

    def read(bucket: str, key: str) -> bytes | None:
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None

    return Dav("seaweedfs", seaweed_dav.webdav_url, None, None, read, extra={"client": client})


@pytest.fixture(params=["seaweedfs", "wsgidav"])
def dav(request: pytest.FixtureRequest) -> Dav:
    return request.getfixturevalue("seaweed" if request.param == "seaweedfs" else "wsgidav")


@pytest.fixture
def new_bucket(request: pytest.FixtureRequest) -> str:
    """A bucket name nobody has used: the store creates its folder."""
    return unique_bucket_name(request.node.name)


# -- behaviour on both servers ------------------------------------------------------------------
def test_open_store_dispatches_webdav(wsgidav: Dav) -> None:
    store = wsgidav.store()
    assert isinstance(store, ObjectStore)
    assert store.base_url == wsgidav.url
    assert PASSWORD not in repr(store) and "webdav.test" in repr(store)


def test_round_trip_with_odd_key_creates_the_folders(dav: Dav, new_bucket: str, tmp_path: Path) -> None:
    store = dav.store()
    src = tmp_path / "src.txt"
    src.write_bytes("héllo wörld\n".encode() * 1000)

    assert store.upload(src, new_bucket, ODD_KEY) == src.stat().st_size
    assert dav.read(new_bucket, ODD_KEY) == src.read_bytes()  # the server's own view: the exact key
    assert store.exists(new_bucket, ODD_KEY)
    assert store.list_keys(new_bucket) == [ODD_KEY]

    dest = tmp_path / "out" / "naïve café+plus 1.txt"
    assert store.download(new_bucket, ODD_KEY, dest) == src.stat().st_size
    assert dest.read_bytes() == src.read_bytes()
    assert strays(dest.parent) == []


def test_seaweedfs_bucket_folders_are_s3_buckets(seaweed: Dav, new_bucket: str) -> None:
    seaweed.store().put_bytes(b"{}", new_bucket, "a/b/c.json")
    assert keys(seaweed.extra["client"], new_bucket) == ["a/b/c.json"]


@pytest.mark.parametrize("depth_infinity", [True, False], ids=["depth-infinity", "depth-1-walk"])
def test_nested_folders_exists_and_list_keys(dav: Dav, new_bucket: str, depth_infinity: bool) -> None:
    store = dav.store()
    for key in ("a/1.txt", "a/2.txt", "b/3.txt", "a/sub/deeper/4.txt", "top.txt"):
        store.put_bytes(key.encode(), new_bucket, key)
    store.depth_infinity = depth_infinity
    assert store.list_keys(new_bucket) == ["a/1.txt", "a/2.txt", "a/sub/deeper/4.txt", "b/3.txt", "top.txt"]
    assert store.list_keys(new_bucket, "a/") == ["a/1.txt", "a/2.txt", "a/sub/deeper/4.txt"]
    assert store.list_keys(new_bucket, "a/sub/de") == ["a/sub/deeper/4.txt"]
    assert store.list_keys(new_bucket, "a/1") == ["a/1.txt"]
    assert store.list_keys(new_bucket, "zzz") == []
    assert store.list_keys(new_bucket, "no/such/folder/") == []
    assert store.exists(new_bucket, "a/sub/deeper/4.txt")
    assert not store.exists(new_bucket, "a/missing.txt")
    assert not store.exists(new_bucket, "a")  # a folder is not an object
    assert not store.exists("t-no-such-bucket-conveyor", "a.txt")
    assert dav.read(new_bucket, "a/sub/deeper/4.txt") == b"a/sub/deeper/4.txt"


@pytest.mark.parametrize("infinity", ["serve", "refuse", "as-1"])
def test_listing_whatever_the_server_does_with_depth_infinity(wsgidav: Dav, new_bucket: str, infinity: str) -> None:
    assert wsgidav.recorder is not None
    store = wsgidav.store()
    for key in ("a/1.txt", "a/sub/deeper/4.txt", "b/3.txt", "top.txt"):
        store.put_bytes(b"x", new_bucket, key)
    wsgidav.recorder.infinity = infinity
    try:
        assert store.list_keys(new_bucket) == ["a/1.txt", "a/sub/deeper/4.txt", "b/3.txt", "top.txt"]
        assert store.list_keys(new_bucket, "a/") == ["a/1.txt", "a/sub/deeper/4.txt"]
    finally:
        wsgidav.recorder.infinity = "serve"
    # A refusal is remembered: the second listing went straight to Depth 1.
    assert store.depth_infinity is (infinity != "refuse")


def test_upload_overwrites(dav: Dav, new_bucket: str, tmp_path: Path) -> None:
    store = dav.store()
    src = tmp_path / "f.txt"
    src.write_bytes(b"first version, the longer one")
    store.upload(src, new_bucket, "out/f.txt")
    src.write_bytes(b"second")
    store.upload(src, new_bucket, "out/f.txt")  # a redelivered event overwrites its outputs
    assert dav.read(new_bucket, "out/f.txt") == b"second"


def test_empty_file(dav: Dav, new_bucket: str, tmp_path: Path) -> None:
    store = dav.store()
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    assert store.upload(src, new_bucket, "e/empty.txt") == 0
    assert store.download(new_bucket, "e/empty.txt", tmp_path / "back.txt") == 0
    assert (tmp_path / "back.txt").read_bytes() == b""


def test_ensure_bucket_is_idempotent(dav: Dav, new_bucket: str) -> None:
    store = dav.store()
    store.ensure_bucket(new_bucket)
    dav.store().ensure_bucket(new_bucket)  # a fresh store: it finds the folder, does not fail on it
    assert store.list_keys(new_bucket) == []


def test_missing_object_is_not_found_and_leaves_nothing(dav: Dav, new_bucket: str, tmp_path: Path) -> None:
    store = dav.store()
    store.ensure_bucket(new_bucket)
    dest = tmp_path / "in" / "missing.jpg"
    with pytest.raises(StorageError) as info:
        store.download(new_bucket, "no/such key.jpg", dest)
    error = info.value
    assert not isinstance(error, CredentialsError)
    assert "not found" in error.message and "404" in error.message
    assert "webdav.test" in error.message and new_bucket in error.message and "no/such key.jpg" in error.message
    assert "\n" not in error.message
    assert error.context["bucket"] == new_bucket and error.context["key"] == "no/such key.jpg"
    assert not dest.exists() and strays(dest.parent) == []

    keep = tmp_path / "keep.txt"
    keep.write_bytes(b"previous")
    with pytest.raises(StorageError):
        store.download(new_bucket, "missing.txt", keep)
    assert keep.read_bytes() == b"previous" and strays(tmp_path) == []


def test_missing_bucket_cannot_be_listed(dav: Dav) -> None:
    with pytest.raises(StorageError, match="bucket folder not found"):
        dav.store().list_keys("t-no-such-bucket-conveyor")


@pytest.mark.parametrize("key", ["../escape.txt", "a/../../x", "/etc/passwd", "a//b", "./a", "dir/", "", "a\0b"])
def test_hostile_keys_refused_before_any_request(wsgidav: Dav, key: str, tmp_path: Path) -> None:
    store = wsgidav.store()
    assert wsgidav.recorder is not None
    before = len(wsgidav.recorder.seen)
    with pytest.raises(StorageError, match="refused"):
        store.put_bytes(b"x", "bucket", key)
    with pytest.raises(StorageError, match="refused"):
        store.download("bucket", key, tmp_path / "x")
    with pytest.raises(StorageError, match="invalid bucket"):
        store.ensure_bucket("..")
    assert len(wsgidav.recorder.seen) == before


# -- what reaches the server (WsgiDAV) ----------------------------------------------------------
def test_content_type_and_basic_auth_reach_the_server(wsgidav: Dav, new_bucket: str, tmp_path: Path) -> None:
    store = wsgidav.store()
    assert wsgidav.recorder is not None
    src = tmp_path / "photo.JPG"
    src.write_bytes(PNG)
    store.upload(src, new_bucket, "a/photo.JPG")
    store.upload(src, new_bucket, "a/custom.bin", content_type="application/x-custom")
    store.put_bytes(b"{}", new_bucket, "status/r.json")
    puts = {path: ctype for method, path, ctype, _ in wsgidav.recorder.seen if method == "PUT" and new_bucket in path}
    assert puts == {
        f"/{new_bucket}/a/photo.JPG": "image/jpeg",
        f"/{new_bucket}/a/custom.bin": "application/x-custom",
        f"/{new_bucket}/status/r.json": "application/json",
    }
    mine = [seen for seen in wsgidav.recorder.seen if new_bucket in seen[1]]
    assert all(auth for *_, auth in mine)
    # Folders made once each, top-down, and remembered: later uploads to them cost no MKCOL.
    mkcols = [path for method, path, *_ in mine if method == "MKCOL"]
    assert mkcols == [f"/{new_bucket}/", f"/{new_bucket}/a/", f"/{new_bucket}/status/"]


def test_folder_removed_behind_the_stores_back_is_made_again(wsgidav: Dav, new_bucket: str) -> None:
    store = wsgidav.store()
    store.put_bytes(b"1", new_bucket, "out/deep/a.json")
    shutil.rmtree(wsgidav.extra["root"] / new_bucket / "out")  # the remembered folder is gone
    store.put_bytes(b"2", new_bucket, "out/deep/b.json")  # PUT 409 Conflict -> folders made -> PUT again
    assert wsgidav.read(new_bucket, "out/deep/b.json") == b"2"


def test_hostname_with_a_base_path(wsgidav: Dav, new_bucket: str) -> None:
    # dCache-style: hostname carries a path (host:2880/pnfs/data); buckets are folders below it.
    (wsgidav.extra["root"] / "pnfs" / "data").mkdir(parents=True, exist_ok=True)
    store = wsgidav.store(host=wsgidav.url + "/pnfs/data/")
    store.put_bytes(b"deep", new_bucket, "k/v.txt")
    assert (wsgidav.extra["root"] / "pnfs" / "data" / new_bucket / "k" / "v.txt").read_bytes() == b"deep"
    assert store.list_keys(new_bucket) == ["k/v.txt"]


def test_retry_schedule_is_a_transfer_option() -> None:
    provider = StorageProvider(ref=ProviderRef("webdav", "x"), host="http://127.0.0.1:9")
    store = open_store(provider, max_attempts=4, backoff_factor=0.01, backoff_max=0.5)
    assert isinstance(store, WebDavStore)
    retry = store.session.get_adapter("http://127.0.0.1:9/").max_retries
    assert (retry.total, retry.backoff_factor, retry.backoff_max) == (3, 0.01, 0.5)


def test_5xx_is_retried_with_backoff(wsgidav: Dav, new_bucket: str, tmp_path: Path) -> None:
    store = wsgidav.store()
    store.ensure_bucket(new_bucket)
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(300_000))
    assert wsgidav.recorder is not None
    wsgidav.recorder.fail_next = 2  # two 503s, then the real server: the third attempt succeeds
    store.upload(src, new_bucket, "r/f.bin")
    assert wsgidav.read(new_bucket, "r/f.bin") == src.read_bytes()  # the retried PUT re-sent the whole body

    wsgidav.recorder.fail_next = 1
    with pytest.raises(StorageError, match="HTTP 503") as info:
        wsgidav.store(max_attempts=1).download(new_bucket, "r/f.bin", tmp_path / "d.bin")
    assert not isinstance(info.value, CredentialsError)
    assert not (tmp_path / "d.bin").exists() and strays(tmp_path) == []
    wsgidav.recorder.fail_next = 0


# -- credentials ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "credentials", [{"password": "wrong"}, {"login": "mallory"}, {"login": None, "password": None}]
)
def test_refused_credentials(wsgidav: Dav, new_bucket: str, tmp_path: Path, credentials: dict[str, Any]) -> None:
    wsgidav.store().put_bytes(b"x", new_bucket, "k/x.txt")
    store = wsgidav.store(max_attempts=1, **credentials)
    src = tmp_path / "f.txt"
    src.write_text("x")
    dest = tmp_path / "dest.txt"
    for call in (
        lambda: store.download(new_bucket, "k/x.txt", dest),
        lambda: store.upload(src, new_bucket, "k/y.txt"),
        lambda: store.put_bytes(b"{}", new_bucket, "k/z.json"),
        lambda: store.list_keys(new_bucket),
        lambda: store.exists(new_bucket, "k/x.txt"),
        lambda: store.ensure_bucket(new_bucket),
    ):
        with pytest.raises(CredentialsError) as info:
            call()
        assert info.value.exit_code == 77
        assert "webdav.test" in info.value.message and new_bucket in info.value.message
        assert "401" in info.value.message
    assert not dest.exists() and strays(tmp_path) == []
    assert wsgidav.read(new_bucket, "k/y.txt") is None


def test_seaweedfs_webdav_has_no_authentication(seaweed: Dav, new_bucket: str) -> None:
    # A fact of the test server, pinned: whatever credentials are sent, weed's WebDAV accepts them.
    seaweed.store(login="anyone", password="anything").put_bytes(b"x", new_bucket, "x.txt")
    assert seaweed.read(new_bucket, "x.txt") == b"x"


# -- transport ------------------------------------------------------------------------------------
@pytest.mark.parametrize("attempts", [1, None])
def test_unreachable_server_fails_fast(closed_port: int, tmp_path: Path, attempts: int | None) -> None:
    provider = StorageProvider(ref=ProviderRef("webdav", "test"), host=f"http://127.0.0.1:{closed_port}")
    store = open_store(provider) if attempts is None else open_store(provider, max_attempts=attempts)
    src = tmp_path / "f.txt"
    src.write_text("x")
    dest = tmp_path / "dest.txt"
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.download("bucket", "key.txt", dest)
    elapsed = time.monotonic() - started
    assert not isinstance(info.value, CredentialsError)
    assert f"cannot reach http://127.0.0.1:{closed_port}" in info.value.message
    assert "Connection refused" in info.value.message and "object at 0x" not in info.value.message
    assert elapsed < (1.0 if attempts == 1 else 6.0), f"took {elapsed:.1f}s"
    with pytest.raises(StorageError):
        store.upload(src, "bucket", "key.txt")
    assert not dest.exists() and strays(tmp_path) == []


@pytest.fixture(scope="module")
def tls_dav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dav, Path]]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a self-signed certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("wsgidav-tls-root")
    server, recorder, url = start_wsgidav(root, tls=(cert, key))
    yield Dav("wsgidav-tls", url.removeprefix("https://"), USER, PASSWORD, recorder=recorder), cert
    server.stop()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_is_verified_and_https_is_the_default(tls_dav, new_bucket: str, monkeypatch) -> None:
    dav, cert = tls_dav
    assert "://" not in dav.url  # "127.0.0.1:<port>", as SCAR/OSCAR write a hostname: https implied
    with pytest.raises(StorageError, match="TLS failure") as info:
        dav.store(max_attempts=1).put_bytes(b"x", new_bucket, "x.txt")  # self-signed: refused
    assert not isinstance(info.value, CredentialsError)

    dav.store(verify=False).put_bytes(b"insecure", new_bucket, "x.txt")  # verify: false in the definition
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # or trust its CA: verified, and accepted
    store = dav.store()
    assert store.base_url.startswith("https://")
    store.put_bytes(b"verified", new_bucket, "y.txt")
    assert sorted(store.list_keys(new_bucket)) == ["x.txt", "y.txt"]


# -- streaming ------------------------------------------------------------------------------------
def test_10_mb_streams_with_bounded_memory(seaweed: Dav, new_bucket: str, tmp_path: Path) -> None:
    # SeaweedFS runs in its own process, so tracemalloc sees only the client: a store that read the
    # file, or the response, into memory would peak at 10 MB or more.
    size = 10 * MiB + 12345
    src = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(src, "wb") as handle:
        for index in range(size // MiB + 1):
            chunk = index.to_bytes(8, "big") + os.urandom(min(MiB, size - index * MiB) - 8)
            handle.write(chunk)
            digest.update(chunk)
    store = seaweed.store()
    store.put_bytes(b"{}", new_bucket, "warm/up.json")  # imports, connection, folders: not measured
    store.download(new_bucket, "warm/up.json", tmp_path / "warm.json")

    dest = tmp_path / "back.bin"
    tracemalloc.start()
    try:
        assert store.upload(src, new_bucket, "warm/big model.bin") == size
        assert store.download(new_bucket, "warm/big model.bin", dest) == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB, f"peak {peak / MiB:.1f} MiB of Python memory for a {size / MiB:.0f} MiB object"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest.hexdigest()
    head = seaweed.extra["client"].head_object(Bucket=new_bucket, Key="warm/big model.bin")
    assert head["ContentLength"] == size


# -- configuration ---------------------------------------------------------------------------------
def test_hostname_forms() -> None:
    assert http_base_url("my_dcache.com", "k") == "https://my_dcache.com"
    assert http_base_url("dcache.example.org:2880/pnfs/data/", "k") == "https://dcache.example.org:2880/pnfs/data"
    assert http_base_url("http://127.0.0.1:8080/", "k") == "http://127.0.0.1:8080"
    with pytest.raises(ConfigError, match="'k'"):
        http_base_url("ftp://example.org", "k")


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(StorageProvider(ref=ProviderRef("webdav", "dcache")))
    assert info.value.context["key"] == "storage_providers.webdav.dcache.hostname"
    with pytest.raises(ConfigError) as info:
        open_store(StorageProvider(ref=ProviderRef("webdav", "dcache"), host="ftp://dcache.example.org"))
    assert info.value.context["key"] == "storage_providers.webdav.dcache.hostname"

    definition = "storage_providers:\n  webdav:\n    dcache: {login: u, password: p}\n"
    with pytest.raises(ConfigError) as info:
        load_config({}, "local", path="/f.yaml", read_file=lambda path: definition)
    assert "storage_providers.webdav.dcache.hostname" in info.value.message


# -- end to end ------------------------------------------------------------------------------------
def test_conveyor_run_uploads_outputs_to_webdav(deploy, s3_client, bucket, seaweed: Dav, new_bucket: str) -> None:
    # Input on minio.default (the session's S3 server), one output entry on webdav.<id> (another
    # server, WebDAV only): what the function writes lands on the WebDAV server.
    d = deploy()
    d.definition["storage_providers"]["webdav"] = {"dcache": {"hostname": seaweed.url, "login": "u", "password": "p"}}
    d.definition["output"] = [
        {"storage_provider": "minio.default", "path": f"{bucket}/out", "suffix": [".txt"]},
        {"storage_provider": "webdav.dcache", "path": f"{new_bucket}/results/run 1"},
    ]
    s3_client.put_object(Bucket=bucket, Key="in/photo été.png", Body=PNG)
    proc = d.run(oscar_event(bucket, "in/photo été.png"))
    assert proc.returncode == 0, proc.stderr.decode()
    store = seaweed.store()
    assert store.list_keys(new_bucket) == ["results/run 1/key.txt", "results/run 1/photo été.png"]
    assert seaweed.read(new_bucket, "results/run 1/photo été.png") == PNG
    assert seaweed.read(new_bucket, "results/run 1/key.txt") == b"in/photo \xc3\xa9t\xc3\xa9.png"
    assert keys(s3_client, bucket, "out/") == ["out/key.txt"]
    [record] = records(proc.stderr)
    assert record["status"] == "SUCCEEDED"
    assert f"{new_bucket}/results/run 1/photo été.png" in record["outputs"]


def test_delete_removes_the_object_and_tolerates_a_missing_one(dav: Dav, new_bucket: str, tmp_path: Path) -> None:
    store = dav.store()
    src = tmp_path / "src.txt"
    src.write_bytes(b"soon withdrawn")
    store.upload(src, new_bucket, ODD_KEY)
    assert store.exists(new_bucket, ODD_KEY)
    store.delete(new_bucket, ODD_KEY)
    assert not store.exists(new_bucket, ODD_KEY)
    store.delete(new_bucket, ODD_KEY)
