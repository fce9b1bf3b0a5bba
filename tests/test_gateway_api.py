"""The gateway's JSON API against the real S3 server (SeaweedFS on 127.0.0.1), through Starlette's
TestClient (httpx, in process) and once through a real uvicorn on 127.0.0.1: every job state, the
401/403/404 rules, bad inputs (413, unsafe names, HTML in names and results, unknown model, store
down) and a DELEGATED job whose Batch state comes from moto's Batch.

Records are written the way the runtime writes them (ResultRecord.to_json at records.status_key),
and once by `conveyor run` itself.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml

with warnings.catch_warnings():  # Starlette 1.x would rather have httpx2 (not packaged here yet)
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient as _TestClient

from conveyor.config import IOSpec, ProviderRef
from conveyor.gateway.catalogue import Model, load_catalogue
from conveyor.gateway.server import Gateway, create_app
from conveyor.gateway.users import Users
from conveyor.records import ResultRecord, status_key
from tests.support.pipeline import COPY_SCRIPT, minio_event

ALICE, BOB = ("alice", "alice-password"), ("bob", "bob-password")
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2a1d5d60000000049454e44ae426082"
)


def TestClient(app: Any, auth: tuple[str, str] | None = None, **kwargs: Any) -> _TestClient:
    """Starlette's TestClient, sending HTTP Basic credentials when `auth` is given."""
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    return _TestClient(app, headers=headers, **kwargs)


def definition(server: Any, bucket: str, endpoint: str | None = None) -> dict[str, Any]:
    provider = {"endpoint": endpoint or server.endpoint, "access_key": server.access_key,
                "secret_key": server.secret_key, "verify": False, "region": "us-east-1"}
    return {
        "name": "copy",
        "storage_providers": {"minio": {"default": provider}},
        "input": [{"storage_provider": "minio.default", "path": f"{bucket}/in"}],
        "output": [{"storage_provider": "minio.default", "path": f"{bucket}/out"}],
        "conveyor": {"status": {"storage_provider": "minio.default", "path": f"{bucket}/status"},
                     "keep_input_folders": True, "timeout": 30, "grace_period": 1},
    }


def catalogue_file(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


@pytest.fixture
def models(tmp_path, s3_server, bucket) -> list[Model]:
    (tmp_path / "example.png").write_bytes(PNG)
    (tmp_path / "copy.yaml").write_text(yaml.safe_dump(definition(s3_server, bucket)))
    return load_catalogue(catalogue_file(tmp_path, [
        {"name": "copy", "title": "Copy", "description": "Returns the file.", "accepts": [".png", "jpg"],
         "example": "example.png", "platform": "oscar", "definition": "copy.yaml"},
        {"name": "inline", "title": "Inline", "description": "Defined inline.", "platform": "local",
         "function": {**definition(s3_server, bucket), "input": [
             {"storage_provider": "minio.default", "path": f"{bucket}/in2"}]}},
    ]), {})


@pytest.fixture
def users() -> Users:
    return Users.from_specs([":".join(ALICE), ":".join(BOB)])


@pytest.fixture
def app(models, users):
    return create_app(models, users, max_upload_bytes=4096, secret=b"test-secret")


@pytest.fixture
def alice(app) -> TestClient:
    return TestClient(app, auth=ALICE)


@pytest.fixture
def bob(app) -> TestClient:
    return TestClient(app, auth=BOB)


def upload(client: TestClient, *files: tuple[str, bytes], model: str = "copy", **kwargs: Any) -> Any:
    return client.post(f"/api/models/{model}/files", files=[("file", f) for f in files], **kwargs)


def only_job(client: TestClient, *files: tuple[str, bytes]) -> dict[str, Any]:
    answer = upload(client, *files)
    assert answer.status_code == 201, answer.text
    return answer.json()["jobs"][0]


def input_key(s3_client, bucket: str, job_id: str) -> str:
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="in/").get("Contents", [])]
    return next(k for k in keys if f"/{job_id}/" in k)


def write_record(s3_client, bucket: str, key: str, status: str, **fields: Any) -> dict[str, Any]:
    """A result record for the input bucket/key, at the runtime's status key, as the runtime writes it."""
    record = ResultRecord(input={"bucket": bucket, "key": key}, platform="oscar", request_id="req-1",
                          handler="script", **fields)
    data = record.to_dict()
    data["status"] = status  # RUNNING is the start record's status (not a final one)
    spec = IOSpec(ProviderRef("minio"), f"{bucket}/status")
    record_bucket, record_key = status_key(spec, record)
    s3_client.put_object(Bucket=record_bucket, Key=record_key, Body=json.dumps(data).encode())
    return data


def keys(s3_client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


# -- the catalogue and the accounts -----------------------------------------------------------------


def test_catalogue_reads_definitions_from_a_file_and_inline(models, bucket) -> None:
    copy, inline = models
    assert (copy.name, copy.title, copy.accepts, copy.platform) == ("copy", "Copy", (".png", ".jpg"), "oscar")
    assert copy.example is not None and copy.example.name == "example.png"
    assert copy.config.inputs[0].path == f"{bucket}/in" and copy.config.conveyor.status is not None
    assert inline.config.inputs[0].path == f"{bucket}/in2" and inline.accepts == ()


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"name": "Bad Name", "definition": "d.yaml"}, "models[0].name"),
        ({"name": "m", "platform": "kubernetes", "definition": "d.yaml"}, "models[0].platform"),
        ({"name": "m"}, "either as `definition: FILE`"),
        ({"name": "m", "definition": "missing.yaml"}, "config file not found"),
        ({"name": "m", "function": {"name": "x"}}, "no `input` entry"),
        ({"name": "m", "example": "nope.jpg", "definition": "d.yaml"}, "example file not found"),
    ],
)
def test_a_bad_catalogue_entry_is_named(tmp_path, entry, words) -> None:
    from conveyor.errors import ConfigError

    (tmp_path / "d.yaml").write_text("input: [{storage_provider: minio.default, path: b/in}]\n")
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_catalogue(catalogue_file(tmp_path, [entry]), {})


def test_passwords_are_salted_scrypt_hashes() -> None:
    users = Users.from_specs(["ann:pa:ss:word", "ben:pa:ss:word"])
    assert users.verify("ann", "pa:ss:word") and not users.verify("ann", "pa:ss:wore")
    assert not users.verify("nobody", "pa:ss:word")
    accounts = users._accounts
    assert accounts["ann"].digest != accounts["ben"].digest  # same password, different salts
    assert b"pa:ss:word" not in accounts["ann"].digest
    generated, password = Users.generated()
    assert generated.verify("scientist", password) and len(password) >= 12


@pytest.mark.parametrize("spec", ["../x:pw", "a/b:pw", "nopassword", ".hidden:pw", "a:"])
def test_a_bad_user_spec_is_refused(spec) -> None:
    from conveyor.errors import ConfigError

    with pytest.raises(ConfigError):
        Users.from_specs([spec])


# -- credentials, sessions and CSRF -----------------------------------------------------------------


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/models"), ("GET", "/api/jobs"), ("POST", "/api/models/copy/files"),
    ("GET", "/api/jobs/20261203T223000000Z-00000000"), ("DELETE", "/api/jobs/20261203T223000000Z-00000000"),
    ("GET", "/api/models/copy/stats"), ("GET", "/api/models/copy/example"),
])
def test_no_or_wrong_credentials_answer_401(app, method, path) -> None:
    for auth in (None, ("alice", "wrong"), ("mallory", "alice-password")):
        answer = TestClient(app, auth=auth).request(method, path)
        assert answer.status_code == 401, (auth, answer.text)
        assert "error" in answer.json()
    assert TestClient(app).get("/api/models", headers={"Authorization": "Bearer x"}).status_code == 401


def test_healthz_and_the_page_need_no_credentials(app) -> None:
    client = TestClient(app)
    assert client.get("/healthz").json()["ok"] is True
    page = client.get("/")
    assert page.status_code == 200 and 'id="login"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/app.js").status_code == 200


def test_login_sets_a_strict_httponly_cookie_and_state_changes_need_the_csrf_token(app, bucket, s3_client) -> None:
    client = TestClient(app)
    assert client.post("/login", json={"username": "alice", "password": "nope"}).status_code == 401
    answer = client.post("/login", json={"username": "alice", "password": ALICE[1]})
    assert answer.status_code == 200, answer.text
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert ALICE[1] not in answer.headers["set-cookie"]
    token = answer.json()["csrf_token"]
    assert client.get("/api/session").json()["user"] == "alice"

    refused = upload(client, ("a.png", PNG))
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    assert upload(client, ("a.png", PNG), headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert keys(s3_client, bucket) == []
    assert upload(client, ("a.png", PNG), headers={"X-CSRF-Token": token}).status_code == 201

    cross = upload(client, ("a.png", PNG), headers={"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert client.post("/logout").status_code == 403  # logging out changes state too
    assert client.post("/logout", headers={"X-CSRF-Token": token}).status_code == 204
    assert client.get("/api/session").json() == {"user": None, "csrf_token": None}
    assert client.get("/api/jobs").status_code == 401
    assert TestClient(client.app, auth=("alice", "wrong")).get("/api/session").status_code == 401


def test_a_form_login_redirects_to_the_page(app) -> None:
    client = TestClient(app, follow_redirects=False)
    answer = client.post("/login", data={"username": "bob", "password": BOB[1]}, headers={"Accept": "text/html"})
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    assert client.get("/api/session").json()["user"] == "bob"


def test_basic_credentials_need_no_csrf_token_and_the_page_gets_no_basic_challenge(app, alice) -> None:
    assert upload(alice, ("a.png", PNG)).status_code == 201
    assert TestClient(app, auth=("alice", ALICE[1] + "x")).get("/api/jobs").status_code == 401  # after a good one
    assert TestClient(app, auth=("bob", ALICE[1])).get("/api/jobs").status_code == 401
    assert alice.get("/api/jobs").status_code == 200
    assert "basic" in TestClient(app).get("/api/jobs").headers["www-authenticate"].lower()
    from_page = TestClient(app).get("/api/jobs", headers={"X-Requested-With": "conveyor"})
    assert from_page.status_code == 401 and "www-authenticate" not in from_page.headers


# -- models and uploads -----------------------------------------------------------------------------


def test_models_are_listed_with_their_example(alice) -> None:
    listed = alice.get("/api/models").json()
    assert [m["name"] for m in listed] == ["copy", "inline"]
    assert listed[0]["accepts"] == [".png", ".jpg"] and listed[0]["platform"] == "oscar"
    example = alice.get(listed[0]["example_url"])
    assert example.status_code == 200 and example.content == PNG
    assert listed[1]["example_url"] is None


def test_an_upload_lands_in_the_users_own_folder_and_is_pending(alice, bucket, s3_client) -> None:
    answer = upload(alice, ("dog.png", PNG), ("cat.jpg", b"jpeg"))
    assert answer.status_code == 201
    jobs = answer.json()["jobs"]
    assert [(j["file"], j["status"]) for j in jobs] == [("dog.png", "PENDING"), ("cat.jpg", "PENDING")]
    assert jobs[0]["id"] != jobs[1]["id"]
    assert keys(s3_client, bucket) == sorted([f"in/alice/{jobs[0]['id']}/dog.png", f"in/alice/{jobs[1]['id']}/cat.jpg"])
    listed = alice.get("/api/jobs", params={"model": "copy"}).json()
    assert [j["id"] for j in listed["jobs"]] == [jobs[1]["id"], jobs[0]["id"]]  # newest first
    assert all(j["status"] == "PENDING" and j["wait_s"] is not None for j in listed["jobs"])
    # the same name twice: two jobs, two keys
    again = only_job(alice, ("dog.png", PNG))
    assert again["id"] not in {j["id"] for j in jobs}


def test_an_unknown_model_answers_404(alice, bucket, s3_client) -> None:
    assert upload(alice, ("a.png", PNG), model="nope").status_code == 404
    assert alice.get("/api/jobs", params={"model": "nope"}).status_code == 404
    assert alice.get("/api/models/nope/stats").status_code == 404
    assert alice.get("/api/models/nope/example").status_code == 404
    assert keys(s3_client, bucket) == []


def test_a_file_type_the_model_does_not_accept_is_refused(alice, bucket, s3_client) -> None:
    answer = upload(alice, ("a.png", PNG), ("notes.txt", b"x"))
    assert answer.status_code == 415 and "notes.txt" in answer.json()["error"]
    assert keys(s3_client, bucket) == []


def test_a_file_over_the_limit_answers_413_and_nothing_is_stored(alice, bucket, s3_client) -> None:
    answer = upload(alice, ("small.png", PNG), ("big.png", b"x" * 5000))
    assert answer.status_code == 413 and "4096" in answer.json()["error"]
    assert keys(s3_client, bucket) == []
    # refused from the declared length alone, before the body is read
    huge = alice.post("/api/models/copy/files", content=b"x" * 10,
                      headers={"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(10**12)})
    assert huge.status_code == 413
    assert upload(alice, ("exact.png", b"x" * 4096)).status_code == 201


def test_a_request_without_files_is_a_400(alice) -> None:
    assert alice.post("/api/models/copy/files", data={"other": "x"}).status_code == 400
    assert alice.post("/api/models/copy/files", json={"file": "x"}).status_code == 400


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd.png", "/abs/path.png", "a\x00b.png", "tab\tand\x1bescape.png", "..png", "x" * 1024 + ".png",
     "C:\\fakepath\\dog.png", '<img src=x onerror="alert(1)">.png', "caf\u00e9 \u2028.png"],
)
def test_unsafe_names_are_stored_under_a_safe_name_and_shown_escaped(alice, bucket, s3_client, name) -> None:
    answer = upload(alice, (name, PNG))
    assert answer.status_code == 201, answer.text
    job = answer.json()["jobs"][0]
    stored = input_key(s3_client, bucket, job["id"])
    assert stored == f"in/alice/{job['id']}/{job['stored_name']}"
    segment = job["stored_name"]
    assert "/" not in segment and "\\" not in segment and segment not in (".", "..")
    assert all(32 < ord(ch) < 127 for ch in segment) and len(segment.encode()) <= 200
    shown = job["file"]
    assert all(ord(ch) >= 32 for ch in shown)  # control characters written as escapes
    if len(name) < 100 and "\x00" not in name and "\t" not in name:
        # as browsers send them: a Windows path cut to its last part, a quote as %22 (the HTML standard's form encoding)
        assert shown == name.rsplit("\\", 1)[-1].replace('"', "%22")
    detail = alice.get(f"/api/jobs/{job['id']}").json()
    assert detail["file"] == shown
    assert alice.get(detail["input_url"]).content == PNG


# -- states -----------------------------------------------------------------------------------------


def test_every_state_is_read_from_the_record(alice, bucket, s3_client) -> None:
    pending = only_job(alice, ("p.png", PNG))
    running = only_job(alice, ("r.png", PNG))
    done = only_job(alice, ("s.png", PNG))
    failed = only_job(alice, ("f.png", PNG))
    now = datetime.now(UTC)
    write_record(s3_client, bucket, input_key(s3_client, bucket, running["id"]), "RUNNING", started_at=iso(now))
    s3_client.put_object(Bucket=bucket, Key="out/s.json", Body=b'{"label": "<script>alert(1)</script>"}')
    s3_client.put_object(Bucket=bucket, Key="out/s.png", Body=PNG)
    write_record(s3_client, bucket, input_key(s3_client, bucket, done["id"]), "SUCCEEDED",
                 started_at=iso(now + timedelta(seconds=1)), timings={"total": 2.5},
                 outputs=[f"{bucket}/out/s.json", f"{bucket}/out/s.png"])
    write_record(s3_client, bucket, input_key(s3_client, bucket, failed["id"]), "FAILED",
                 started_at=iso(now), error={"kind": "handler", "message": "the model exited with 3"},
                 log_tail="Traceback ...\nValueError: <b>bad</b>\n", extra={"finished_at": "ignored"})

    states = {j["id"]: j for j in alice.get("/api/jobs").json()["jobs"]}
    assert {i: states[i]["status"] for i in states} == {
        pending["id"]: "PENDING", running["id"]: "RUNNING", done["id"]: "SUCCEEDED", failed["id"]: "FAILED"}

    detail = alice.get(f"/api/jobs/{done['id']}").json()
    assert detail["status"] == "SUCCEEDED" and detail["run_s"] == 2.5 and detail["wait_s"] >= 0
    assert detail["finished_at"] is not None and detail["error"] is None
    assert [(o["name"], o["size"], o["media_type"]) for o in detail["outputs"]] == [
        ("s.json", 38, "application/json"), ("s.png", len(PNG), "image/png")]
    result = alice.get(detail["outputs"][0]["url"])
    assert result.headers["content-type"].startswith("application/json")  # data, not a page
    assert result.json() == {"label": "<script>alert(1)</script>"}
    image = alice.get(detail["outputs"][1]["url"])
    assert image.content == PNG and image.headers["content-disposition"].startswith("inline")
    download = alice.get(detail["outputs"][1]["url"], params={"download": "1"})
    assert download.headers["content-disposition"].startswith("attachment")
    zipped = zipfile.ZipFile(io.BytesIO(alice.get(detail["zip_url"]).content))
    assert sorted(zipped.namelist()) == ["s.json", "s.png"] and zipped.read("s.png") == PNG

    failure = alice.get(f"/api/jobs/{failed['id']}").json()
    assert failure["error"] == {"kind": "handler", "message": "the model exited with 3"}
    assert "ValueError: <b>bad</b>" in failure["log_tail"] and failure["outputs"] == []

    # the start record is overwritten by the final one: RUNNING -> SUCCEEDED, with finished_at read
    key = input_key(s3_client, bucket, running["id"])
    write_record(s3_client, bucket, key, "SUCCEEDED", started_at=iso(now), timings={"total": 9.0},
                 extra={}, outputs=[])
    data = write_record(s3_client, bucket, key, "SUCCEEDED", started_at=iso(now), timings={"total": 9.0})
    data["finished_at"] = iso(now + timedelta(seconds=4))
    record_bucket, record_key = bucket, f"status/{bucket}/{key}.json"
    s3_client.put_object(Bucket=record_bucket, Key=record_key, Body=json.dumps(data).encode())
    finished = alice.get(f"/api/jobs/{running['id']}").json()
    assert finished["status"] == "SUCCEEDED" and finished["run_s"] == 4.0  # finished_at wins over timings.total


def test_html_and_svg_outputs_are_never_served_as_a_page(alice, bucket, s3_client) -> None:
    job = only_job(alice, ("x.png", PNG))
    for name, body in (("evil.html", b"<script>alert(1)</script>"), ("evil.svg", b"<svg onload='alert(1)'/>")):
        s3_client.put_object(Bucket=bucket, Key=f"out/{name}", Body=body, ContentType="text/html")
    write_record(s3_client, bucket, input_key(s3_client, bucket, job["id"]), "SUCCEEDED",
                 outputs=[f"{bucket}/out/evil.html", f"{bucket}/out/evil.svg"])
    for output in alice.get(f"/api/jobs/{job['id']}").json()["outputs"]:
        answer = alice.get(output["url"])
        assert answer.headers["content-disposition"].startswith("attachment"), output
        assert answer.headers["content-type"].split(";")[0] in ("application/octet-stream", "text/plain")
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in answer.headers["content-security-policy"]


def test_a_delegated_job_shows_the_batch_state_from_describe_jobs(models, users, bucket, s3_client, moto_batch) -> None:
    endpoint, batch = moto_batch
    job_id = batch.submit_job(jobName="conveyor-test", jobQueue="conveyor-test", jobDefinition="conveyor-test")["jobId"]
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    app = create_app(models, users, batch_client_factory=lambda: boto3.client("batch", endpoint_url=endpoint, **creds))
    alice = TestClient(app, auth=ALICE)
    job = only_job(alice, ("big.png", PNG))
    write_record(s3_client, bucket, input_key(s3_client, bucket, job["id"]), "DELEGATED", job_id=job_id,
                 started_at=iso(datetime.now(UTC)))
    expected = batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"]
    listed = alice.get("/api/jobs").json()["jobs"][0]
    assert listed["status"] == "DELEGATED"
    assert listed["batch_state"] in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
    assert listed["batch_state"] in (expected, "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED")
    assert alice.get(f"/api/jobs/{job['id']}").json()["job_id"] == job_id

    # Batch unreachable: the job is still DELEGATED, its Batch state unknown
    closed = create_app(models, users, batch_client_factory=lambda: boto3.client(
        "batch", endpoint_url="http://127.0.0.1:9", **creds))
    assert TestClient(closed, auth=ALICE).get("/api/jobs").json()["jobs"][0]["batch_state"] is None


# -- other users, deletion, paging, the timing panel ------------------------------------------------


def test_another_users_job_answers_404_whatever_is_asked(alice, bob, bucket, s3_client) -> None:
    job = only_job(alice, ("mine.png", PNG))
    s3_client.put_object(Bucket=bucket, Key="out/mine.png", Body=PNG)
    write_record(s3_client, bucket, input_key(s3_client, bucket, job["id"]), "SUCCEEDED",
                 outputs=[f"{bucket}/out/mine.png"])
    assert bob.get("/api/jobs").json()["jobs"] == []
    base = f"/api/jobs/{job['id']}"
    for path in (base, f"{base}/input", f"{base}/outputs/mine.png", f"{base}/outputs.zip",
                 f"{base}/outputs/../../alice/{job['id']}/mine.png"):
        assert bob.get(path).status_code == 404, path
    assert bob.delete(base).status_code == 404
    for guess in ("../alice", "..%2Falice", "*", "20261203T223000000Z-0000000g"):
        assert bob.get(f"/api/jobs/{guess}").status_code == 404
    assert alice.get(f"{base}/outputs/mine.png").content == PNG
    assert len(keys(s3_client, bucket)) == 3  # nothing of alice's was touched


def test_delete_removes_input_outputs_and_record(alice, bucket, s3_client) -> None:
    job = only_job(alice, ("gone.png", PNG))
    keep = only_job(alice, ("kept.png", PNG))
    s3_client.put_object(Bucket=bucket, Key="out/gone.png", Body=PNG)
    s3_client.put_object(Bucket=bucket, Key=f"out/alice/{job['id']}/extra.txt", Body=b"x")
    write_record(s3_client, bucket, input_key(s3_client, bucket, job["id"]), "SUCCEEDED",
                 outputs=[f"{bucket}/out/gone.png"])
    assert alice.get(f"/api/jobs/{job['id']}").json()["status"] == "SUCCEEDED"  # its record is cached now
    assert alice.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert keys(s3_client, bucket) == [input_key(s3_client, bucket, keep["id"])]
    assert alice.get(f"/api/jobs/{job['id']}").status_code == 404
    assert [j["id"] for j in alice.get("/api/jobs").json()["jobs"]] == [keep["id"]]


def test_jobs_are_paginated_newest_first(alice) -> None:
    ids = [only_job(alice, (f"{n}.png", PNG))["id"] for n in range(5)]
    first = alice.get("/api/jobs", params={"per_page": 2}).json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2] and first["next_page"] == 2 and first["total"] == 5
    last = alice.get("/api/jobs", params={"per_page": 2, "page": 3}).json()
    assert [j["id"] for j in last["jobs"]] == [ids[0]] and last["next_page"] is None
    assert alice.get("/api/jobs", params={"page": "x"}).status_code == 400


def test_the_timing_panel_has_wait_and_run_per_job_with_median_and_p95(alice, bucket, s3_client) -> None:
    start = datetime.now(UTC)
    runs = [1.0, 2.0, 3.0, 4.0, 10.0]
    for n, run in enumerate(runs):
        job = only_job(alice, (f"{n}.png", PNG))
        write_record(s3_client, bucket, input_key(s3_client, bucket, job["id"]), "FAILED" if n == 4 else "SUCCEEDED",
                     started_at=iso(start + timedelta(seconds=60)), timings={"total": run})
    only_job(alice, ("waiting.png", PNG))
    stats = alice.get("/api/models/copy/stats").json()
    assert (stats["count"], stats["finished"], stats["failures"]) == (6, 5, 1)
    assert (stats["median"], stats["p95"]) == (3.0, 10.0)
    assert [j["run_s"] for j in stats["jobs"]] == [*runs, None]  # oldest first
    assert all(j["wait_s"] is not None and 30 <= j["wait_s"] <= 60 for j in stats["jobs"][:5])
    assert stats["jobs"][-1]["status"] == "PENDING"
    metrics = TestClient(alice.app).get("/metrics").text
    assert 'conveyor_gateway_uploads_total{model="copy"} 6.0' in metrics
    assert 'conveyor_gateway_jobs{model="copy",state="SUCCEEDED"} 4.0' in metrics
    assert "conveyor_gateway_request_seconds_bucket" in metrics


# -- the store down ---------------------------------------------------------------------------------


def test_the_store_down_answers_503_and_nothing_is_half_written(tmp_path, s3_server, users, closed_port) -> None:
    (tmp_path / "down.yaml").write_text(
        yaml.safe_dump(definition(s3_server, "any-bucket", endpoint=f"http://127.0.0.1:{closed_port}")))
    models = load_catalogue(catalogue_file(tmp_path, [{"name": "down", "definition": "down.yaml"}]), {})
    alice = TestClient(create_app(models, users), auth=ALICE)
    answer = upload(alice, ("a.png", PNG), model="down")
    assert answer.status_code == 503 and answer.json()["store"] is True
    assert "nothing was stored" in answer.json()["error"]
    assert alice.get("/api/jobs").status_code == 503
    assert alice.get("/api/models").status_code == 200  # the page still loads and says so


def test_an_upload_the_store_refuses_half_way_takes_back_what_it_stored(tmp_path, s3_server, s3_client, users) -> None:
    from tests.conftest import unique_bucket_name

    good, missing = unique_bucket_name("good"), unique_bucket_name("missing")
    s3_client.create_bucket(Bucket=good)
    spec = definition(s3_server, good)
    spec["input"].append({"storage_provider": "minio.default", "path": f"{missing}/in"})
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(spec))
    models = load_catalogue(catalogue_file(tmp_path, [{"name": "m", "definition": "d.yaml"}]), {})
    app = create_app(models, users)
    jobs = app.state.jobs
    real_store_input = jobs.store_input
    calls = []

    def store_input(model, user, upload_id, name, src):  # the second file goes to the missing bucket
        calls.append(name)
        if len(calls) == 2:
            broken = Model(**{**model.__dict__, "config": model.config.__class__(
                **{**model.config.__dict__, "inputs": (model.config.inputs[1],)})})
            return real_store_input(broken, user, upload_id, name, src)
        return real_store_input(model, user, upload_id, name, src)

    jobs.store_input = store_input
    answer = upload(TestClient(app, auth=ALICE), ("a.png", PNG), ("b.png", PNG), model="m")
    assert answer.status_code == 503 and calls == ["a.png", "b.png"]
    assert keys(s3_client, good) == []


# -- a real `conveyor run` and a real server --------------------------------------------------------


@pytest.mark.parametrize("name", ["dog.png", "my dog (1)+%.png"])
def test_a_record_written_by_conveyor_run_shows_as_succeeded(tmp_path, deploy, s3_server, s3_client, bucket,
                                                             name) -> None:
    d = deploy(COPY_SCRIPT, status={"storage_provider": "minio.default", "path": f"{bucket}/status"},
               keep_input_folders=True)
    config = d.write()
    models = load_catalogue(catalogue_file(tmp_path, [{"name": "copy", "definition": str(config)}]), {})
    gateway = Gateway(models, Users.from_specs([":".join(ALICE)]))
    url = gateway.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        session = requests.Session()
        session.auth = ALICE
        created = session.post(f"{url}/api/models/copy/files", files={"file": (name, PNG)}, timeout=10)
        assert created.status_code == 201, created.text
        job = created.json()["jobs"][0]
        key = input_key(s3_client, bucket, job["id"])
        proc = d.run(minio_event(bucket, key, len(PNG)))
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        detail = session.get(f"{url}/api/jobs/{job['id']}", timeout=10).json()
        assert detail["status"] == "SUCCEEDED" and detail["run_s"] is not None
        names = {o["name"]: o for o in detail["outputs"]}
        assert "key.txt" in names
        # the outputs lie in the upload's own folder: another upload of the same name cannot touch them
        stored = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", [])]
        assert stored and all(k.startswith(f"out/{ALICE[0]}/{job['id']}/") for k in stored), stored
        assert session.get(f"{url}{names['key.txt']['url']}", timeout=10).text == key
        assert detail["file"] == name
        assert requests.get(f"{url}/api/jobs", timeout=10).status_code == 401
    finally:
        gateway.stop()


@pytest.fixture
def moto_batch():
    """moto's Batch (tests/support/batch.py) with a queue and a job definition named conveyor-test."""
    from tests.support.batch import moto_batch_server

    moto = moto_batch_server()
    moto.queue("conveyor-test", ["true"])
    return moto.endpoint, moto.batch


def test_uploads_made_outside_the_gateway_show_up_without_a_full_listing(app, alice, bucket, s3_client) -> None:
    from conveyor.gateway.names import new_upload_id

    first = only_job(alice, ("a.png", PNG))
    assert [j["id"] for j in alice.get("/api/jobs").json()["jobs"]] == [first["id"]]  # a full listing, cached
    outside = new_upload_id()
    s3_client.put_object(Bucket=bucket, Key=f"in/alice/{outside}/b.png", Body=PNG)  # e.g. another gateway
    s3_client.put_object(Bucket=bucket, Key=f"in/bob/{new_upload_id()}/c.png", Body=PNG)
    listed = alice.get("/api/jobs").json()
    assert [j["id"] for j in listed["jobs"]] == [outside, first["id"]] and listed["total"] == 2
