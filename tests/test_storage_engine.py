"""The obstore transfer engine's own traps (tests/test_storage.py runs the shared suite with every
engine), against the real S3 server: what the environment must not change for an explicit
provider, keys obstore cannot address as they are, the error kinds of a refused key and a stopped
server, large create-only writes, the timeouts it is given, and the `transfer_engine` key."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import load_config
from conveyor.errors import ConfigError, CredentialsError, StorageError
from conveyor.job import Stores
from conveyor.platform import Platform
from conveyor.storage import ObstoreStore, TransferOptions, is_not_found, is_permanent, is_taken, open_store

MiB = 1024 * 1024
KINDS = ["s3", "minio"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_foreign_aws_variables_do_not_reach_an_explicit_provider(
    kind: str, make_provider, bucket: str, s3_client, monkeypatch, closed_port: int, tmp_path: Path
) -> None:
    """Under Lambda the environment holds the function's own AWS session (keys and a token); an
    endpoint variable may point elsewhere. A provider with its own keys and endpoint uses those
    alone: obstore's builder would attach the token to the provider's keys (the server refuses
    the mix) and send every request to AWS_ENDPOINT_URL_S3."""
    elsewhere = f"http://127.0.0.1:{closed_port}"
    for name, value in {
        "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLETOKEN",
        "AWS_ACCESS_KEY_ID": "ASIAFOREIGNKEY",
        "AWS_SECRET_ACCESS_KEY": "foreign-secret",
        "AWS_ENDPOINT_URL_S3": elsewhere,
        "AWS_ENDPOINT_URL": elsewhere,
        "AWS_ENDPOINT": elsewhere,
        "AWS_REGION": "eu-west-3",
        "AWS_DEFAULT_REGION": "eu-west-3",
        "AWS_SKIP_SIGNATURE": "true",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true",
    }.items():
        monkeypatch.setenv(name, value)
    store = open_store(make_provider(kind), max_attempts=1)
    assert isinstance(store, ObstoreStore)
    src = tmp_path / "x.txt"
    src.write_bytes(b"mine")
    assert store.upload(src, bucket, "in/x.txt") == 4
    assert s3_client.get_object(Bucket=bucket, Key="in/x.txt")["Body"].read() == b"mine"
    assert store.download(bucket, "in/x.txt", tmp_path / "back.txt") == 4
    assert store.list_keys(bucket) == ["in/x.txt"]


# Keys the test server stores as they are (SeaweedFS itself folds "a//b", "/a" and "a\\b", refuses
# "." and ".." segments and keeps no body under "a/"); obstore alone would refuse these.
ODD_KEYS = ["tab\tx.txt", "in/bell\x07.txt"]


def test_which_keys_obstore_addresses() -> None:
    from conveyor.storage.objstore import addressable

    for key in ("a/b.txt", "in/dir with space/naïve café+plus 1 ümlaut.txt", "a%20b", "x#y?z", ".x", "a/.../b"):
        assert addressable(key), key
    for key in ("a//b", "/a", "a/", "", ".", "a/./b", "a/../b", "a\\b", "a\tb", "a\x7fb"):
        assert not addressable(key), key


@pytest.mark.parametrize("key", ODD_KEYS)
def test_keys_obstore_cannot_address_keep_their_exact_name(
    kind: str, make_provider, bucket: str, s3_client, tmp_path: Path, key: str
) -> None:
    """obstore's path type refuses empty, '.' and '..' segments and control characters, and
    rewrites a leading or trailing '/' and a backslash: those keys go through the SDK store, unchanged."""
    store = open_store(make_provider(kind))
    src = tmp_path / "odd.bin"
    src.write_bytes(b"odd")
    with open(src, "rb") as file:
        written = store.put_file(file, bucket, key, create_only=True)
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    assert store.version(bucket, key) == written.etag and store.exists(bucket, key)
    assert store.download(bucket, key, tmp_path / "back.bin") == 3
    assert (tmp_path / "back.bin").read_bytes() == b"odd"
    assert store.delete(bucket, key, if_match=written.etag) is True
    assert store.version(bucket, key) is None


def test_a_key_obstore_cannot_parse_does_not_break_a_listing(kind: str, make_provider, bucket: str, s3_client) -> None:
    """obstore fails a whole listing on one key it cannot parse (a newline): a sweep
    of a folder holding one such upload would stop. The SDK lists them instead, every key kept."""
    store = open_store(make_provider(kind))
    for key in ("in/a.txt", "in/new\nline.txt", "in/z.txt"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert store.list_keys(bucket, "in/") == ["in/a.txt", "in/new\nline.txt", "in/z.txt"]


def test_a_list_prefix_need_not_end_at_a_folder(kind: str, make_provider, bucket: str) -> None:
    """obstore lists whole path segments; list_keys keeps S3's character prefixes."""
    store = open_store(make_provider(kind))
    for key in ("in/abc.txt", "in/abd/1.txt", "in/x.txt", "inbox/y.txt", "top.txt"):
        store.put_bytes(b"x", bucket, key)
    assert store.list_keys(bucket, "in/ab") == ["in/abc.txt", "in/abd/1.txt"]
    assert store.list_keys(bucket, "in") == ["in/abc.txt", "in/abd/1.txt", "in/x.txt", "inbox/y.txt"]
    assert store.list_keys(bucket, "in/") == ["in/abc.txt", "in/abd/1.txt", "in/x.txt"]
    assert store.list_keys(bucket, "t") == ["top.txt"]


def test_a_refused_key_is_a_credentials_error_without_the_secret(kind: str, make_provider, bucket: str,
                                                                 tmp_path: Path) -> None:
    provider = make_provider(kind, secret_key="not-the-secret-key-0123456789")
    store = open_store(provider, max_attempts=1)
    for call in (
        lambda: store.version(bucket, "k.txt"),
        lambda: store.delete(bucket, "k.txt"),
        lambda: store.download(bucket, "k.txt", tmp_path / "k.txt"),
    ):
        with pytest.raises(CredentialsError) as info:
            call()
        error = info.value
        assert error.exit_code == 77 and is_permanent(error) and not is_not_found(error)
        assert "credentials refused" in error.message and "\n" not in error.message
        assert provider.secret_key not in error.message and provider.secret_key not in repr(error.context)
        assert f"{kind}.default" in error.message and bucket in error.message


def test_a_stopped_server_is_a_transient_storage_error(kind: str, s3_server_factory, tmp_path: Path,
                                                       make_provider) -> None:
    """The store was working; then its server stops: each call ends, after the bounded retries,
    with a StorageError (74) naming the endpoint, transient, neither 'not found' nor credentials."""
    server = s3_server_factory(buckets=["kept"])
    provider = make_provider(kind, endpoint=server.endpoint, access_key=server.access_key,
                             secret_key=server.secret_key)
    store = open_store(provider, max_attempts=2, backoff_factor=0.05, connect_timeout=1.0)
    store.put_bytes(b"{}", "kept", "k.json")
    server.stop()
    outcome: dict[str, Any] = {}

    def calls() -> None:
        errors = []
        for call in (lambda: store.download("kept", "k.json", tmp_path / "k.json"),
                     lambda: store.put_bytes(b"{}", "kept", "k2.json"),
                     lambda: store.version("kept", "k.json")):
            try:
                call()
            except StorageError as exc:
                errors.append(exc)
        outcome["errors"] = errors

    worker = threading.Thread(target=calls, daemon=True)
    worker.start()
    worker.join(60)  # a bound, not a timing: obstore's own default would retry for 3 minutes
    assert not worker.is_alive(), "the calls to a stopped server did not end"
    errors = outcome["errors"]
    assert len(errors) == 3
    for error in errors:
        assert type(error) is StorageError and error.exit_code == 74
        assert not is_permanent(error) and not is_not_found(error) and not is_taken(error)
        assert server.endpoint in error.message and "after 2 attempts" in error.message
        assert "\n" not in error.message
    assert not (tmp_path / "k.json").exists()


def test_a_large_create_only_write_is_atomic_with_bounded_memory(kind: str, make_provider, bucket: str,
                                                                 s3_client, tmp_path: Path) -> None:
    """obstore sends If-None-Match only in a single PUT (the whole body in memory): a create-only
    file larger than one part goes through the SDK store, in parts, and still refuses a taken key."""
    store = open_store(make_provider(kind), part_size=5 * MiB, multipart_threshold=5 * MiB)
    assert isinstance(store, ObstoreStore) and store.part_size(6 * MiB) == 5 * MiB
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(6 * MiB))
    with open(src, "rb") as file:
        written = store.put_file(file, bucket, "out/big.bin", create_only=True)
    assert written.size == 6 * MiB and store.version(bucket, "out/big.bin") == written.etag
    assert written.etag and written.etag.strip('"').endswith("-2")  # sent in two parts, not held whole
    with open(src, "rb") as file, pytest.raises(StorageError) as caught:
        store.put_file(file, bucket, "out/big.bin", create_only=True)
    assert is_taken(caught.value)


def test_the_engine_is_given_explicit_timeouts_and_retries(make_provider, bucket: str) -> None:
    """obstore's default whole-request timeout (30 s, body included) would cut a large transfer:
    it is lifted, and the connect and read timeouts and the retries come from TransferOptions."""
    store = open_store(make_provider("minio"), connect_timeout=1.5, read_timeout=20, max_attempts=4,
                       backoff_factor=0.3, backoff_max=2)
    assert isinstance(store, ObstoreStore)
    bucket_store = store._store(bucket)
    client = bucket_store.client_options  # obstore gives them back as duration strings
    assert (client["connect_timeout"], client["read_timeout"], client["timeout"]) == ("1s 500ms", "20s", "1day")
    retry = bucket_store.retry_config
    assert retry["max_retries"] == 3
    assert (retry["backoff"]["init_backoff"].total_seconds(), retry["backoff"]["max_backoff"].total_seconds()) == (
        0.3, 2.0)


def test_a_ca_bundle_that_cannot_be_read_is_a_config_error(make_provider, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle"):
        open_store(make_provider("s3"), ca_bundle=str(tmp_path / "missing.pem"))


def test_transfer_engine_key_reaches_the_stores(tmp_path: Path) -> None:
    definition = tmp_path / "f.yaml"
    base = ("name: f\nstorage_providers:\n"
            "  {minio: {default: {endpoint: 'http://127.0.0.1:9', access_key: a, secret_key: b}}}\n")
    seen: list[TransferOptions] = []

    def opener(provider: Any, options: TransferOptions) -> Any:
        seen.append(options)
        return object()

    for text, engine in (("", "obstore"), ("conveyor: {transfer_engine: sdk}\n", "sdk"),
                         ("conveyor: {transfer_engine: OBSTORE}\n", "obstore")):
        definition.write_text(base + text)
        config = load_config({}, Platform.LOCAL, path=definition, secrets_dir=None)
        assert config.conveyor.transfer_engine == engine
        assert config.conveyor.redacted()["transfer_engine"] == engine
        Stores(config, opener, TransferOptions(max_attempts=7)).get(config.inputs[0].provider if config.inputs
                                                                     else _minio_default())
        assert (seen[-1].engine, seen[-1].max_attempts) == (engine, 7)
    definition.write_text(base + "conveyor: {transfer_engine: boto}\n")
    with pytest.raises(ConfigError, match=r"conveyor\.transfer_engine"):
        load_config({}, Platform.LOCAL, path=definition, secrets_dir=None)


def _minio_default() -> Any:
    from conveyor.config import ProviderRef

    return ProviderRef("minio", "default")


def test_a_create_only_write_whose_answer_was_lost_is_not_taken_for_another_writers(
    kind: str, make_provider, bucket: str, s3_client, tmp_path: Path
) -> None:
    """The server stored the object, its answer never came. obstore would send the PUT again, the
    server would refuse it (412: the key exists, by this very write) and the record would take its
    own object for another writer's (kept, not withdrawn). A create-only write is asked again only
    when it cannot have landed: here it fails as an unreachable store, not as a taken key."""
    from tests.support.lossy import LostAnswers

    proxy = LostAnswers(make_provider(kind).endpoint, method="PUT", path_part=f"/{bucket}/out/x.bin")
    try:
        store = open_store(make_provider(kind, endpoint=proxy.endpoint))
        src = tmp_path / "x.bin"
        src.write_bytes(b"mine")
        with open(src, "rb") as file, pytest.raises(StorageError) as caught:
            store.put_file(file, bucket, "out/x.bin", create_only=True)
    finally:
        proxy.close()
    assert not is_taken(caught.value) and not is_permanent(caught.value), caught.value.message
    assert len(proxy.dropped) == 1, proxy.dropped  # sent once, stored once
    assert s3_client.get_object(Bucket=bucket, Key="out/x.bin")["Body"].read() == b"mine"


def test_aws_s3_gets_the_platforms_region_and_its_own_endpoint() -> None:
    """An s3 provider with no endpoint is AWS S3: its region, else the platform's (AWS_REGION at
    the edge), since obstore does not follow S3's redirects to a bucket's region; the endpoint is
    pinned (virtual-hosted where the bucket name allows), so AWS_ENDPOINT_URL_S3 cannot move it."""
    from conveyor.config import ProviderRef, StorageProvider
    from conveyor.storage import transfer_options

    options = transfer_options({"AWS_REGION": "eu-west-3", "SSL_CERT_FILE": ""})
    assert options.default_region == "eu-west-3" and options.ca_bundle is None
    assert transfer_options({"AWS_DEFAULT_REGION": "us-west-2"}).default_region == "us-west-2"
    aws = open_store(StorageProvider(ProviderRef("s3", "default")), options)
    assert isinstance(aws, ObstoreStore)
    config = aws._config("my-bucket")
    assert config["region"] == "eu-west-3" and config["virtual_hosted_style_request"] is True
    assert config["endpoint"] == config["aws_endpoint_url_s3"] == "https://my-bucket.s3.eu-west-3.amazonaws.com"
    dotted = aws._config("my.dotted.bucket")
    assert dotted["endpoint"] == "https://s3.eu-west-3.amazonaws.com" and not dotted["virtual_hosted_style_request"]
    named = open_store(StorageProvider(ProviderRef("s3", "x"), region="ap-south-1"), options)
    assert named._config("b")["region"] == "ap-south-1"  # type: ignore[attr-defined]
    minio = open_store(StorageProvider(ProviderRef("minio", "x"), access_key="a", secret_key="b",
                                       endpoint="http://127.0.0.1:9"), options)
    assert minio._config("b")["region"] == "us-east-1"  # type: ignore[attr-defined]  # not the platform's


def test_a_bucket_in_another_region_is_a_clear_error(make_provider) -> None:
    from obstore.exceptions import GenericError

    store = open_store(make_provider("s3"))
    assert isinstance(store, ObstoreStore)
    answer = GenericError(
        "Generic S3 error: Error performing GET https://b.s3.us-east-1.amazonaws.com/k in 20ms - Server returned "
        'non-2xx status code: 400 Bad Request: <?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
        "AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; the region "
        "'us-east-1' is wrong; expecting 'eu-west-1'</Message><Region>eu-west-1</Region></Error>\n\nDebug source: ..."
    )
    with pytest.raises(StorageError) as caught, store._errors("download", "b", "k"):
        raise answer
    error = caught.value
    assert "region eu-west-1" in error.message and "give the provider's region" in error.message
    assert is_permanent(error) and type(error) is StorageError and "\n" not in error.message


def test_a_create_only_write_the_server_refused_with_503_is_asked_again(
    kind: str, make_provider, bucket: str, s3_client, tmp_path: Path
) -> None:
    """A 503 (SlowDown) says nothing was stored: that create-only write is sent again."""
    import socket

    from tests.support.lossy import LostAnswers, _content_length, _read_head

    class SlowDownOnce(LostAnswers):  # forwards every request (losing none) but answers the first 503
        def __init__(self, upstream: str) -> None:
            self.refused: list[bytes] = []
            super().__init__(upstream, method="NONE")

        def _proxy(self, client: socket.socket) -> None:
            if self.refused:
                return super()._proxy(client)
            head, body = _read_head(client)
            while len(body) < _content_length(head):
                body += client.recv(1 << 20)
            self.refused.append(head.split(b"\r\n", 1)[0])
            xml = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: "
                           + str(len(xml)).encode() + b"\r\nConnection: close\r\n\r\n" + xml)

    proxy = SlowDownOnce(make_provider(kind).endpoint)
    try:
        store = open_store(make_provider(kind, endpoint=proxy.endpoint), backoff_factor=0.01)
        src = tmp_path / "x.bin"
        src.write_bytes(b"mine")
        with open(src, "rb") as file:
            written = store.put_file(file, bucket, "out/x.bin", create_only=True)
    finally:
        proxy.close()
    assert proxy.refused[0].startswith(b"PUT ") and written.size == 4, proxy.errors
    assert proxy.seen[-1].startswith(b"PUT ")  # sent again, and stored
    assert s3_client.get_object(Bucket=bucket, Key="out/x.bin")["Body"].read() == b"mine"


@pytest.mark.parametrize("engine", ["obstore", "sdk"])
@pytest.mark.parametrize("endpoint", ["ftp://store.example:9000", "http://store.example:9000/bucket", "http://"])
def test_an_endpoint_that_is_not_host_and_port_is_a_config_error(engine: str, endpoint: str) -> None:
    """Both engines check a MinIO endpoint alike (conveyor.storage.base.endpoint_parts), before any request."""
    from conveyor.config import ProviderRef, StorageProvider

    provider = StorageProvider(ProviderRef("minio", "default"), endpoint=endpoint, access_key="a", secret_key="b")
    with pytest.raises(ConfigError, match="is not a MinIO endpoint URL") as caught:
        open_store(provider, engine=engine)
    assert caught.value.context["key"] == "storage_providers.minio.default.endpoint"
