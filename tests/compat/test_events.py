"""Issue 15, events: `$EVENT` of an OSCAR delegated event, and the event shapes OSCAR added since
faas-supervisor 1.5.8 (dCache, Rucio, OneTrigger), through a real `conveyor run` launched as OSCAR
launches its jobs: `/bin/sh -c 'echo $EVENT | supervisor'` (/bin/sh is dash here), the definition in
FUNCTION_CONFIG (base64), the user script in the definition's `script`, JOB_UUID set.

The services are real-shaped copies written for these tests: OSCAR's fire-detection example reads
the event time with `echo $EVENT | jq .Records[0].eventTime`; a dCache service fed by DCNiOS reads
its input over WebDAV; a Rucio service (OSCAR's rucio example) names a rucio.rucio input.
"""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import unique_bucket_name
from tests.support.pipeline import CONVEYOR, Deployment, body, keys, minio_event, records

# The servers of the storage tests, as fixtures of this module too: the CDMI stand-in (Onedata), and
# SeaweedFS's WebDAV gateway and WsgiDAV (basic authentication).
from tests.test_storage_onedata import SPACE, TOKEN, CdmiServer, cdmi  # noqa: F401
from tests.test_storage_webdav import Dav, seaweed, seaweed_dav, wsgidav  # noqa: F401

EVENTS = Path(__file__).parent.parent / "events"


@pytest.fixture(params=["seaweedfs", "wsgidav"])
def dcache(request: pytest.FixtureRequest) -> Dav:
    """A WebDAV server standing for dCache's WebDAV door."""
    return request.getfixturevalue("seaweed" if request.param == "seaweedfs" else "wsgidav")


@pytest.fixture
def onedata(request: pytest.FixtureRequest) -> CdmiServer:
    return request.getfixturevalue("cdmi")


def oscar_job(d: Deployment, script: str, event: str, **env: str) -> subprocess.CompletedProcess:
    """Run `conveyor run` as OSCAR's Kubernetes Job does, with EVENT holding the event's text."""
    d.definition["script"] = script
    definition = base64.b64encode(yaml.safe_dump(d.definition).encode()).decode()
    job_env = d.env(EVENT=event, FUNCTION_CONFIG=definition, JOB_UUID="job-0042", **env)
    command = f"echo $EVENT | {shlex.join(CONVEYOR)} run"
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, env=job_env, timeout=120)


def delegated(bucket: str, key: str, event_time: str) -> str:
    """What OSCAR's resource manager forwards: the original event as a JSON *string* under "event"."""
    inner = minio_event(bucket, key)
    inner["Records"][0]["eventTime"] = event_time
    return json.dumps({"storage_provider": "minio.default", "event": json.dumps(inner)}, separators=(",", ":"))


# -- $EVENT of a delegated event is the inner event ------------------------------------------------
EVENT_TIME_SCRIPT = """#!/bin/bash
echo "$EVENT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Records"][0]["eventTime"])' \\
  > "$TMP_OUTPUT_DIR/event-time.txt"
"""

JQ_SCRIPT = """#!/bin/bash
# As OSCAR's fire-detection example reads it: $EVENT unquoted, through jq.
echo $EVENT | jq .Records[0].eventTime > "$TMP_OUTPUT_DIR/event-time.txt"
"""


@pytest.mark.parametrize("script", [EVENT_TIME_SCRIPT, JQ_SCRIPT], ids=["python3", "jq"])
def test_delegated_event_gives_the_script_the_inner_event(deploy, s3_client, bucket, script) -> None:
    if script is JQ_SCRIPT and shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    d = deploy(script=None)
    s3_client.put_object(Bucket=bucket, Key="in/smoke.jpg", Body=b"\xff\xd8\xff\xe0 not really a jpeg")
    proc = oscar_job(d, script, delegated(bucket, "in/smoke.jpg", "2026-08-14T06:31:07.250Z"))
    assert proc.returncode == 0, proc.stderr.decode()
    expected = b'"2026-08-14T06:31:07.250Z"\n' if script is JQ_SCRIPT else b"2026-08-14T06:31:07.250Z\n"
    assert body(s3_client, bucket, "out/event-time.txt") == expected


# -- dCache: a DCNiOS event, the file fetched over WebDAV --------------------------------------------
DCACHE_SCRIPT = """#!/bin/bash
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"
printf '%s|%s' "$(basename "$INPUT_FILE_PATH")" "$STORAGE_OBJECT_KEY" > "$TMP_OUTPUT_DIR/seen.txt"
"""


def dcache_event(name: str) -> str:
    event = json.loads((EVENTS / "dcache_inotify.json").read_text())
    event["event"]["name"] = name
    return json.dumps(event)


def test_dcache_event_is_fetched_over_webdav(deploy, s3_client, bucket, dcache: Dav, tmp_path: Path) -> None:
    # The service watches <new_bucket>/watched on the dCache (WebDAV) server; DCNiOS forwards the
    # inotify event, which names only the file: the folder is the definition's webdav.dcache input.
    source = tmp_path / "src.tif"
    source.write_bytes(b"II*\x00 a tiff from the beamline")
    new_bucket = unique_bucket_name("dcache-watched")
    dcache.store().upload(source, new_bucket, "watched/run 7.tif")
    d = deploy(script=None)
    d.definition["storage_providers"]["webdav"] = {
        "dcache": {"hostname": dcache.url, "login": dcache.login or "anon", "password": dcache.password or "x"}
    }
    d.definition["input"] = [{"storage_provider": "webdav.dcache", "path": f"{new_bucket}/watched"}]
    proc = oscar_job(d, DCACHE_SCRIPT, dcache_event("run 7.tif"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert keys(s3_client, bucket, "out/") == ["out/run 7.tif", "out/seen.txt"]
    assert body(s3_client, bucket, "out/run 7.tif") == source.read_bytes()
    assert body(s3_client, bucket, "out/seen.txt") == b"run 7.tif|watched/run 7.tif"
    [record] = records(proc.stderr)
    assert record["status"] == "SUCCEEDED"
    assert (record["input"]["provider"], record["input"]["bucket"]) == ("webdav.dcache", new_bucket)


# -- OneTrigger: the file fetched through the Onedata store (the CDMI stand-in) ---------------------
def test_onetrigger_event_is_fetched_from_onedata(deploy, s3_client, bucket, onedata: CdmiServer) -> None:
    folder = onedata.root / "incoming"
    folder.mkdir(exist_ok=True)
    (folder / "leaf 07.jpg").write_bytes(b"\xff\xd8\xff\xe0 leaf")
    d = deploy(script=None)
    d.definition["storage_providers"]["onedata"] = {
        "egi": {"oneprovider_host": onedata.host, "token": TOKEN, "space": SPACE}
    }
    d.definition["input"] = [{"storage_provider": "onedata.egi", "path": "incoming"}]
    event = (EVENTS / "onetrigger_put.json").read_text().replace("plants space", SPACE)
    proc = oscar_job(d, DCACHE_SCRIPT, json.dumps(json.loads(event)))
    assert proc.returncode == 0, proc.stderr.decode()
    assert body(s3_client, bucket, "out/leaf 07.jpg") == b"\xff\xd8\xff\xe0 leaf"
    # STORAGE_OBJECT_KEY is the event's Key, as faas-supervisor sets it for Onedata
    assert body(s3_client, bucket, "out/seen.txt") == f"leaf 07.jpg|/{SPACE}/incoming/leaf 07.jpg".encode()


# -- Rucio: parsed, then a clear error (no Rucio store in this build) -------------------------------
RUCIO_SCRIPT = """#!/bin/bash
touch "$MARKERS/ran"
ls "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/listing.txt"
"""


def rucio_service(d: Deployment) -> None:
    d.definition["input"] = [{"storage_provider": "rucio.rucio", "path": "rucio/input"}]
    d.definition["storage_providers"]["rucio"] = {
        "rucio": {
            "host": "rucio.example.org",
            "auth_host": "https://rucio-auth.example.org",
            "account": "fishwatch",
            "rse": "DESY-DCACHE",
            "refresh_token": "not-a-real-token",
            "oidc_audience": "rucio-testbed",
        }
    }


@pytest.mark.parametrize("event_file", ["rucio_close.json", "rucio_records.json"])
def test_rucio_event_ends_with_a_clear_config_error(deploy, s3_client, bucket, event_file: str) -> None:
    d = deploy(script=None)
    rucio_service(d)
    event: dict[str, Any] = json.loads((EVENTS / event_file).read_text())
    proc = oscar_job(d, RUCIO_SCRIPT, json.dumps(event))
    stderr = proc.stderr.decode()
    assert proc.returncode == 78, stderr
    assert "rucio storage is not available in this build" in stderr
    assert "not-a-real-token" not in stderr
    assert not (d.markers / "ran").exists()  # the script never ran on a missing input
    assert keys(s3_client, bucket, "out/") == []
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "config"
    assert (record["input"]["source"], record["input"]["provider"]) == ("rucio", "rucio.rucio")


# -- the in-process layer (no server, no subprocess) -----------------------------------------------
def test_inprocess_rucio_event_fails_its_record_with_a_config_error(tmp_path: Path) -> None:
    from tests.support.inprocess import Pipeline

    pipe = Pipeline(tmp_path)
    pipe.definition["input"] = [{"storage_provider": "rucio.rucio", "path": "rucio/input"}]
    pipe.definition["storage_providers"]["rucio"] = {"rucio": {"host": "rucio.example.org", "account": "a"}}
    [record] = pipe.run(json.loads((EVENTS / "rucio_close.json").read_text()))
    assert record.status.value == "FAILED" and record.error is not None
    assert record.error["kind"] == "config"
    assert "rucio storage is not available in this build" in record.error["message"]
    assert pipe.handler.calls == []


def test_inprocess_dcache_folder_event_runs_nothing(tmp_path: Path) -> None:
    from tests.support.inprocess import Pipeline

    pipe = Pipeline(tmp_path)
    event = json.loads((EVENTS / "dcache_inotify.json").read_text())
    event["event"]["mask"] = ["IN_CREATE", "IN_ISDIR"]
    assert pipe.run(event) == [] and pipe.handler.calls == []
