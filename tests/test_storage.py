"""The ObjectStore implementations against a real S3-compatible server (SeaweedFS on loopback),
and the local-folder store against a real folder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.config import ProviderRef, StorageProvider
from conveyor.errors import ConfigError, CredentialsError, StorageError
from conveyor.storage import (
    PART_SUFFIX,
    LocalStore,
    MinioStore,
    ObjectStore,
    ObstoreStore,
    S3Store,
    guess_content_type,
    is_taken,
    open_store,
)

MiB = 1024 * 1024
BIG = 100 * 1000 * 1000  # "a 100 MB object"
ODD_KEY = "in/dir with space/naïve café+plus 1 ümlaut.txt"
KINDS = ["s3", "minio"]
ENGINES = ["obstore", "sdk"]  # every test of the s3 and minio providers runs with each transfer engine


def strays(folder: Path) -> list[str]:
    """Anything in `folder` that looks like a leftover temporary download."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "part" in p.name)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(kind: str, engine: str, make_provider) -> ObjectStore:
    return open_store(make_provider(kind), engine=engine)


# -- both providers against the real server ------------------------------------------------------
def test_open_store_picks_the_implementation(make_provider, tmp_path: Path) -> None:
    assert isinstance(open_store(make_provider("s3")), ObstoreStore)  # the default engine
    assert isinstance(open_store(make_provider("minio")), ObstoreStore)
    assert isinstance(open_store(make_provider("s3"), engine="sdk"), S3Store)
    assert isinstance(open_store(make_provider("minio"), engine="sdk"), MinioStore)
    with pytest.raises(ConfigError, match="transfer_engine"):
        open_store(make_provider("s3"), engine="boto4")
    local = open_store(StorageProvider(ref=ProviderRef("local"), root=str(tmp_path)))
    assert isinstance(local, LocalStore)
    for store in (open_store(make_provider("s3")), local):
        assert isinstance(store, ObjectStore)


def test_round_trip_with_odd_key(store: ObjectStore, bucket: str, s3_client, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes("héllo wörld\n".encode() * 1000)

    assert store.upload(src, bucket, ODD_KEY) == src.stat().st_size
    assert store.exists(bucket, ODD_KEY)
    assert store.list_keys(bucket) == [ODD_KEY]
    # The raw S3 view agrees on the exact key (no double encoding, '+' kept as '+').
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]] == [ODD_KEY]

    dest = tmp_path / "out" / "naïve café+plus 1.txt"  # parent created on demand
    assert store.download(bucket, ODD_KEY, dest) == src.stat().st_size
    assert dest.read_bytes() == src.read_bytes()
    assert strays(dest.parent) == []


def test_download_overwrites_existing_file(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    store.put_bytes(b"new", bucket, "k.bin")
    dest = tmp_path / "k.bin"
    dest.write_bytes(b"old content, longer than the new one")
    assert store.download(bucket, "k.bin", dest) == 3
    assert dest.read_bytes() == b"new"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a/photo.JPG", "image/jpeg"),
        ("a/result.json", "application/json"),
        ("a/table.csv", "text/csv"),
        ("a/archive.tar.gz", "application/gzip"),
        ("a/no_extension", "application/octet-stream"),
        ("a/weights.weird-ext", "application/octet-stream"),
    ],
)
def test_upload_sets_content_type(
    store: ObjectStore, bucket: str, s3_client, tmp_path: Path, key: str, expected: str
) -> None:
    src = tmp_path / "payload"
    src.write_bytes(b"x" * 10)
    store.upload(src, bucket, key)
    assert s3_client.head_object(Bucket=bucket, Key=key)["ContentType"] == expected


def test_explicit_content_type_wins(store: ObjectStore, bucket: str, s3_client, tmp_path: Path) -> None:
    src = tmp_path / "payload.txt"
    src.write_text("hi")
    store.upload(src, bucket, "x.txt", content_type="application/x-custom")
    assert s3_client.head_object(Bucket=bucket, Key="x.txt")["ContentType"] == "application/x-custom"


def test_put_bytes(store: ObjectStore, bucket: str, s3_client) -> None:
    store.put_bytes(b'{"status": "SUCCEEDED"}', bucket, "status/record.json")
    obj = s3_client.get_object(Bucket=bucket, Key="status/record.json")
    assert obj["Body"].read() == b'{"status": "SUCCEEDED"}'
    assert obj["ContentType"] == "application/json"


def test_exists_and_list_keys(store: ObjectStore, bucket: str) -> None:
    for key in ("a/1.txt", "a/2.txt", "b/3.txt", "a/sub/4.txt"):
        store.put_bytes(b"x", bucket, key)
    assert store.list_keys(bucket) == ["a/1.txt", "a/2.txt", "a/sub/4.txt", "b/3.txt"]
    assert store.list_keys(bucket, "a/") == ["a/1.txt", "a/2.txt", "a/sub/4.txt"]
    assert store.list_keys(bucket, "zzz") == []
    assert store.exists(bucket, "a/1.txt")
    assert not store.exists(bucket, "a/missing.txt")
    assert not store.exists(bucket, "a")  # a "folder" is not an object


def test_ensure_bucket_is_idempotent(store: ObjectStore, s3_client, kind: str) -> None:
    name = f"t-ensure-{kind}-{os.getpid()}-{time.monotonic_ns() % 10**8}"
    store.ensure_bucket(name)
    store.ensure_bucket(name)
    s3_client.head_bucket(Bucket=name)
    assert store.list_keys(name) == []


def test_missing_key_is_not_found_and_leaves_nothing(store: ObjectStore, bucket: str, kind: str, tmp_path) -> None:
    dest = tmp_path / "in" / "missing.jpg"
    with pytest.raises(StorageError) as info:
        store.download(bucket, "no/such key.jpg", dest)
    error = info.value
    assert not isinstance(error, CredentialsError)
    assert "not found" in error.message
    assert f"{kind}.default" in error.message and bucket in error.message and "no/such key.jpg" in error.message
    assert "\n" not in error.message
    assert error.context["bucket"] == bucket and error.context["key"] == "no/such key.jpg"
    assert not dest.exists()
    assert strays(dest.parent) == []


def test_failed_download_keeps_previous_file_intact(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    dest = tmp_path / "keep.txt"
    dest.write_bytes(b"previous")
    with pytest.raises(StorageError):
        store.download(bucket, "missing.txt", dest)
    assert dest.read_bytes() == b"previous"
    assert strays(tmp_path) == []


def test_missing_bucket(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "f.txt"
    src.write_text("x")
    with pytest.raises(StorageError, match="not found"):
        store.download("t-no-such-bucket-conveyor", "k.txt", tmp_path / "k.txt")
    with pytest.raises(StorageError) as info:
        store.upload(src, "t-no-such-bucket-conveyor", "k.txt")
    assert not isinstance(info.value, CredentialsError)
    assert not (tmp_path / "k.txt").exists()


def test_missing_source_file(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="local file"):
        store.upload(tmp_path / "nope.txt", bucket, "k.txt")


@pytest.mark.parametrize("which", ["secret", "access"])
def test_wrong_credentials(kind: str, engine: str, make_provider, bucket: str, tmp_path: Path, which: str) -> None:
    wrong = {"secret_key": "not-the-secret-key"} if which == "secret" else {"access_key": "NOSUCHACCESSKEY"}
    store = open_store(make_provider(kind, **wrong), max_attempts=1, engine=engine)
    src = tmp_path / "f.txt"
    src.write_text("x")
    dest = tmp_path / "dest.txt"
    for call in (
        lambda: store.download(bucket, "k.txt", dest),
        lambda: store.upload(src, bucket, "k.txt"),
        lambda: store.put_bytes(b"{}", bucket, "k.json"),
        lambda: store.list_keys(bucket),
    ):
        with pytest.raises(CredentialsError) as info:
            call()
        assert info.value.exit_code == 77
        assert f"{kind}.default" in info.value.message and bucket in info.value.message
    assert not dest.exists() and strays(tmp_path) == []


def test_s3_without_any_credentials(monkeypatch, engine: str, make_provider, bucket: str, tmp_path: Path,
                                   closed_port: int) -> None:
    # The default chain finds nothing: no env keys, no files, no instance metadata (never leave
    # loopback: obstore asks the metadata endpoint whatever AWS_EC2_METADATA_DISABLED says).
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    store = open_store(make_provider("s3", access_key=None, secret_key=None), max_attempts=1, engine=engine)
    with pytest.raises(CredentialsError, match="no credentials"):
        store.download(bucket, "k.txt", tmp_path / "k.txt")


def test_s3_half_credentials_fail_at_open(engine: str, make_provider) -> None:
    with pytest.raises(CredentialsError, match="together"):
        open_store(make_provider("s3", secret_key=None), engine=engine)


def test_minio_without_credentials_fails_at_open(engine: str, make_provider) -> None:
    with pytest.raises(CredentialsError, match=r"minio\.default"):
        open_store(make_provider("minio", access_key=None, secret_key=None), engine=engine)


@pytest.mark.parametrize("attempts", [1, None])
def test_unreachable_endpoint(kind: str, engine: str, make_provider, closed_port: int, tmp_path: Path,
                              attempts) -> None:
    provider = make_provider(kind, endpoint=f"http://127.0.0.1:{closed_port}")
    store = open_store(provider, engine=engine) if attempts is None else open_store(
        provider, max_attempts=attempts, engine=engine)
    src = tmp_path / "f.txt"
    src.write_text("x")
    dest = tmp_path / "dest.txt"
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.download("bucket", "key.txt", dest)
    elapsed = time.monotonic() - started
    assert not isinstance(info.value, CredentialsError)
    assert f"127.0.0.1:{closed_port}" in info.value.message
    assert elapsed < (1.0 if attempts == 1 else 6.0), f"took {elapsed:.1f}s"
    with pytest.raises(StorageError):
        store.upload(src, "bucket", "key.txt")
    assert not dest.exists() and strays(tmp_path) == []


def test_webdav_provider_without_hostname_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"webdav\.x\.hostname"):
        open_store(StorageProvider(ref=ProviderRef("webdav", "x")))


def test_unknown_option_is_rejected(make_provider) -> None:
    with pytest.raises(TypeError):
        open_store(make_provider("s3"), max_atempts=1)


def test_minio_endpoint_must_be_a_url(engine: str, make_provider) -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        open_store(make_provider("minio", endpoint="ftp://127.0.0.1:9"), engine=engine)


def test_transfer_options_reach_the_minio_client(make_provider, monkeypatch, tmp_path: Path) -> None:
    # The CA bundle and the retry schedule are passed in (the edges read SSL_CERT_FILE); the store
    # reads no environment of its own.
    import certifi

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ignored.pem"))
    default = open_store(make_provider("minio"), engine="sdk").client._http.connection_pool_kw
    assert default["ca_certs"] == certifi.where()
    assert (default["retries"].backoff_factor, default["retries"].backoff_max) == (0.2, 5.0)
    bundle = str(tmp_path / "ca.pem")
    store = open_store(make_provider("minio"), ca_bundle=bundle, backoff_factor=0.01, backoff_max=0.5, engine="sdk")
    pool = store.client._http.connection_pool_kw
    assert pool["ca_certs"] == bundle
    assert (pool["retries"].backoff_factor, pool["retries"].backoff_max) == (0.01, 0.5)


def test_the_seam_loads_no_store_until_asked() -> None:
    probe = (
        "import sys, conveyor.storage as s\n"
        "before = sorted(m for m in sys.modules if m.startswith('conveyor.storage.'))\n"
        "s.S3Store\n"
        "print(before, 'conveyor.storage.s3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['conveyor.storage.base'] True"


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 100 MB file of varied content, and its sha256."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    with open(path, "wb") as handle:
        written = 0
        while written < BIG:
            chunk = written.to_bytes(8, "big") + block[8 : min(MiB, BIG - written)]  # every MiB differs
            handle.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    return path, digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.heavy
def test_large_object_multipart_round_trip(
    store: ObjectStore, bucket: str, s3_client, tmp_path: Path, big_file: tuple[Path, str]
) -> None:
    src, expected = big_file
    key = "big/model weights.bin"
    assert store.upload(src, bucket, key) == BIG

    # Uploaded in parts: S3 says how many, and the ETag of a multipart object ends with "-<parts>".
    whole = s3_client.head_object(Bucket=bucket, Key=key)
    first = s3_client.head_object(Bucket=bucket, Key=key, PartNumber=1)
    parts = first.get("PartsCount")
    assert parts and parts > 1, f"not a multipart object: {first}"
    assert whole["ETag"].strip('"').endswith(f"-{parts}")
    assert whole["ContentLength"] == BIG and first["ContentLength"] < BIG
    assert s3_client.get_object(Bucket=bucket, Key=key, Range="bytes=0-7")["Body"].read() == bytes(8)

    dest = tmp_path / "down" / "big.bin"
    assert store.download(bucket, key, dest) == BIG
    assert sha256_of(dest) == expected
    assert strays(dest.parent) == []


MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
from conveyor.config import ProviderRef, StorageProvider
from conveyor.storage import open_store

kind, engine, endpoint, access_key, secret_key, bucket, src, dest = sys.argv[1:]
provider = StorageProvider(ref=ProviderRef(kind), access_key=access_key, secret_key=secret_key, endpoint=endpoint)
MiB = 1024 * 1024
BIG = 100 * 1000 * 1000  # "a 100 MB object"
store = open_store(provider, multipart_threshold=8 * MiB, part_size=8 * MiB, max_concurrency=2, engine=engine)
store.put_bytes(b"{}", bucket, "warm-up.json")  # imports, connections, first request done
store.download(bucket, "warm-up.json", Path(dest))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
store.upload(Path(src), bucket, "memory/big.bin")
store.download(bucket, "memory/big.bin", Path(dest))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mib": (after - before) / 1024}))
"""


@pytest.mark.heavy
def test_transfers_stream_with_bounded_memory(
    kind: str, engine: str, s3_server, bucket: str, tmp_path: Path, big_file: tuple[Path, str]
) -> None:
    # In a fresh interpreter, so the peak RSS is this transfer's: a store that held the object in
    # memory would grow by at least its 100 MB; parts of 8 MiB, two in flight, stay far below.
    src, expected = big_file
    dest = tmp_path / "dest.bin"
    args = [kind, engine, s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket, str(src), str(dest)]
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    growth = json.loads(done.stdout)["growth_mib"]
    assert growth < 50, f"peak RSS grew by {growth:.0f} MiB for a {BIG // MiB} MiB object"
    assert sha256_of(dest) == expected


# -- conditional writes and removals (issue 14: never destroy what another writer published) ------
@pytest.fixture(params=[*(f"{kind}/{engine}" for kind in KINDS for engine in ENGINES), "local"])
def any_store(request: pytest.FixtureRequest, make_provider, s3_client, bucket: str, tmp_path: Path):
    """(store, read(key) -> bytes | None, write(key, data)) for each store with its own raw view."""
    if request.param == "local":
        root = tmp_path / "root"
        (root / bucket).mkdir(parents=True)
        store = open_store(StorageProvider(ref=ProviderRef("local"), root=str(root)))
        path = lambda key: root / bucket / key  # noqa: E731

        def read_local(key: str) -> bytes | None:
            return path(key).read_bytes() if path(key).exists() else None

        def write_local(key: str, data: bytes) -> None:
            path(key).parent.mkdir(parents=True, exist_ok=True)
            tmp = path(key).with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path(key))  # a new file, as every writer of the store makes

        return store, read_local, write_local

    def read(key: str) -> bytes | None:
        try:
            return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3_client.exceptions.NoSuchKey:
            return None

    def write(key: str, data: bytes) -> None:
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)

    kind, engine = request.param.split("/")
    return open_store(make_provider(kind), engine=engine), read, write


def test_create_only_put_refuses_a_taken_key(any_store, bucket: str, tmp_path: Path) -> None:
    store, read, write = any_store
    src = tmp_path / "mine.bin"
    src.write_bytes(b"mine")
    assert store.version(bucket, "out/x.bin") is None
    with open(src, "rb") as file:
        written = store.put_file(file, bucket, "out/x.bin", create_only=True)
    assert written.size == 4 and store.version(bucket, "out/x.bin") == written.etag
    write("out/x.bin", b"theirs")
    with open(src, "rb") as file, pytest.raises(StorageError) as caught:
        store.put_file(file, bucket, "out/x.bin", create_only=True)
    assert is_taken(caught.value), caught.value.context
    assert read("out/x.bin") == b"theirs"


def test_conditional_delete_removes_only_the_version_it_names(any_store, bucket: str, tmp_path: Path) -> None:
    store, read, write = any_store
    src = tmp_path / "mine.bin"
    src.write_bytes(b"mine")
    with open(src, "rb") as file:
        mine = store.put_file(file, bucket, "out/x.bin").etag
    assert mine
    write("out/x.bin", b"theirs!")  # another writer replaced it
    assert store.delete(bucket, "out/x.bin", if_match=mine) is False
    assert read("out/x.bin") == b"theirs!"
    theirs = store.version(bucket, "out/x.bin")
    assert theirs and store.delete(bucket, "out/x.bin", if_match=theirs) is True
    assert read("out/x.bin") is None and store.version(bucket, "out/x.bin") is None


def test_a_failed_multipart_upload_leaves_no_parts(kind: str, engine: str, make_provider, s3_client, bucket,
                                                   tmp_path) -> None:
    """A large upload cut mid-way (the file stops being readable after its first parts): the
    store aborts the multipart upload, so the server lists none in progress."""
    store = open_store(make_provider(kind), multipart_threshold=5 * MiB, part_size=5 * MiB, engine=engine)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(16 * MiB))

    class Cut:
        def __init__(self, file) -> None:
            self.file, self.sent = file, 0

        def read(self, size: int = -1) -> bytes:
            if self.sent >= 10 * MiB:
                raise OSError("cut mid-way")
            data = self.file.read(size)
            self.sent += len(data)
            return data

        def __getattr__(self, name: str):
            return getattr(self.file, name)

    with open(src, "rb") as file, pytest.raises(StorageError, match="cut mid-way"):
        store.put_file(Cut(file), bucket, "big/cut.bin")  # type: ignore[arg-type]
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert store.version(bucket, "big/cut.bin") is None


# -- local folder store ---------------------------------------------------------------------------
@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    store = open_store(StorageProvider(ref=ProviderRef("local"), root=str(tmp_path / "root")))
    assert isinstance(store, LocalStore)
    store.ensure_bucket("inputs")
    return store


def test_local_round_trip(local: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(b"data" * 1000)
    assert local.upload(src, "inputs", ODD_KEY) == 4000
    assert (local.root / "inputs" / ODD_KEY).read_bytes() == src.read_bytes()
    assert local.exists("inputs", ODD_KEY)
    assert local.list_keys("inputs") == [ODD_KEY]
    assert local.list_keys("inputs", "in/dir") == [ODD_KEY]
    assert local.list_keys("inputs", "other") == []
    dest = tmp_path / "dest" / "x.txt"
    assert local.download("inputs", ODD_KEY, dest) == 4000
    assert dest.read_bytes() == src.read_bytes()
    local.put_bytes(b"{}", "inputs", "status/r.json")
    assert (local.root / "inputs" / "status" / "r.json").read_bytes() == b"{}"
    local.ensure_bucket("inputs")  # idempotent


def test_local_missing_key_and_bucket(local: LocalStore, tmp_path: Path) -> None:
    dest = tmp_path / "d" / "x.txt"
    with pytest.raises(StorageError, match="not found"):
        local.download("inputs", "missing.txt", dest)
    with pytest.raises(StorageError, match="bucket not found"):
        local.download("nobucket", "x.txt", dest)
    with pytest.raises(StorageError, match="bucket not found"):
        local.put_bytes(b"x", "nobucket", "x.txt")
    assert not dest.exists()
    assert not local.exists("inputs", "missing.txt")


@pytest.mark.parametrize(
    "key",
    [
        "../escape.txt",
        "a/../../escape.txt",
        "..",
        "/etc/passwd",
        "a\0b",
        "",
        "a//b",
        "./a",
        "dir/",
    ],
)
def test_local_hostile_keys_refused(local: LocalStore, tmp_path: Path, key: str) -> None:
    src = tmp_path / "src.txt"
    src.write_text("x")
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(StorageError, match="refused"):
        local.upload(src, "inputs", key)
    with pytest.raises(StorageError, match="refused"):
        local.download("inputs", key, tmp_path / "dest.txt")
    with pytest.raises(StorageError, match="refused"):
        local.exists("inputs", key)
    assert sorted(p for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "a\0b"])
def test_local_hostile_buckets_refused(local: LocalStore, name: str) -> None:
    with pytest.raises(StorageError, match="invalid bucket"):
        local.ensure_bucket(name)
    with pytest.raises(StorageError, match="invalid bucket"):
        local.put_bytes(b"x", name, "k.txt")


def test_local_symlink_escape_refused(local: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (local.root / "inputs" / "link").symlink_to(outside)
    with pytest.raises(StorageError, match="outside"):
        local.put_bytes(b"x", "inputs", "link/pwned.txt")
    assert list(outside.iterdir()) == []


def test_local_list_skips_partial_files(local: LocalStore) -> None:
    local.put_bytes(b"x", "inputs", "a.txt")
    (local.root / "inputs" / f".a.txt.abc{PART_SUFFIX}").write_bytes(b"partial")
    assert local.list_keys("inputs") == ["a.txt"]


def test_local_needs_a_root() -> None:
    with pytest.raises(ConfigError, match="root"):
        open_store(StorageProvider(ref=ProviderRef("local")))


def test_guess_content_type() -> None:
    assert guess_content_type("x/y/photo.png") == "image/png"
    assert guess_content_type("weird#name?.txt") == "text/plain"
    assert guess_content_type("data:image/png") == "application/octet-stream"
    assert guess_content_type("") == "application/octet-stream"


def test_delete_removes_the_object_and_tolerates_a_missing_one(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "gone.txt"
    src.write_bytes(b"soon withdrawn")
    store.upload(src, bucket, ODD_KEY)
    assert store.exists(bucket, ODD_KEY)
    store.delete(bucket, ODD_KEY)
    assert not store.exists(bucket, ODD_KEY)
    store.delete(bucket, ODD_KEY)  # already gone: no error


def test_local_delete(local: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(b"x")
    local.upload(src, "inputs", ODD_KEY)
    local.delete("inputs", ODD_KEY)
    assert not local.exists("inputs", ODD_KEY)
    local.delete("inputs", ODD_KEY)
    with pytest.raises(StorageError):
        local.delete("inputs", "../escape")


def test_rucio_is_a_clear_config_error_when_opened() -> None:
    # OSCAR definitions name rucio providers; this build has no Rucio store: it says so, exit 78.
    with pytest.raises(ConfigError) as info:
        open_store(StorageProvider(ProviderRef("rucio", "rucio"), host="rucio.example.org"))
    assert "rucio storage is not available in this build" in info.value.message
    assert info.value.exit_code == 78


@pytest.mark.parametrize(
    ("context", "permanent"),
    [
        ({"status": 404, "cause": "NoSuchBucket"}, True),
        ({"status": 403, "cause": "AccessDenied"}, True),
        ({"status": 400, "cause": "InvalidRequest"}, True),
        ({"status": 400, "cause": "RequestTimeout"}, False),
        ({"status": 429}, False),
        ({"status": 408}, False),
        ({"status": 503, "cause": "SlowDown"}, False),
        ({"status": 500}, False),
        ({"cause": "ConnectionRefusedError"}, False),  # no answer at all
    ],
)
def test_only_a_final_4xx_answer_is_permanent(context, permanent) -> None:
    from conveyor.errors import StorageError
    from conveyor.storage import is_permanent

    assert is_permanent(StorageError("x", **context)) is permanent
