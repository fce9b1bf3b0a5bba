"""`conveyor serve` as a real process on 127.0.0.1: the OSCAR sync contract over HTTP with the model
kept warm, its slots (429; 503 for storage events), the deadline (408), failures (500), SIGTERM
drain, health while the model loads, storage-event webhooks and /metrics.

The model is tests/support/serve_models.py (an in-process handler) or a script. Tests marked
HOST need the supervised model host (issue 17 item 1: load_handler returns a proxy that kills and
restarts a hung or crashed model); they are skipped until it is there.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conveyor.config import load_config
from conveyor.handler import load_handler
from conveyor.platform import Platform
from conveyor.serve.command import listen_port
from tests.support.pipeline import body, keys, minio_event, records
from tests.support.served import REPO, Served, serve_deployment


def _has_host(d: Any) -> bool:
    """Does load_handler give a supervised host (a proxy that counts its restarts)?"""
    config = load_config({}, Platform.OSCAR, path=str(d.write()))
    handler = load_handler(config)
    try:
        return hasattr(handler, "restarts")
    finally:
        handler.close()


@pytest.fixture
def served():
    started: list[Served] = []

    def start(d: Any, *args: str, **env: str) -> Served:
        server = Served(d, *args, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_an_inline_request_is_answered_exactly_as_conveyor_run_answers_it(deploy, served, tmp_path) -> None:
    d = serve_deployment(deploy, runs=str(tmp_path / "runs"))
    server = served(d)
    server.wait_ready()
    answer = server.post(b"hello:", "/any/path?x=1", headers={"Content-Type": "text/plain"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")  # echoed
    assert base64.b64decode(answer.content) == b"HELLO: POST"  # the Http_Method the watchdog gives
    assert b"conveyor.records" not in answer.content and b"INFO" not in answer.content  # logs never in the body


def test_the_answer_matches_a_conveyor_run_of_the_same_body(deploy, served) -> None:
    d = serve_deployment(deploy)
    server = served(d)
    for payload in (b"hello:", b"stdout:said on stdout", base64.b64encode(b"a binary \x00 body")):
        answer = server.post(payload)
        run = d.run(None, stdin=payload, Http_Method="POST", PYTHONPATH=str(REPO))
        assert run.returncode == 0, run.stderr.decode()
        assert answer.status_code == 200
        assert answer.content == run.stdout


def test_a_failed_record_is_500_with_the_failure_line_and_no_logs(deploy, served) -> None:
    server = served(serve_deployment(deploy))
    answer = server.post(b"fail:please")
    assert answer.status_code == 500
    assert answer.text == "conveyor: handler error: the test model failed on purpose (input input.txt)\n"
    assert answer.headers["x-conveyor-exit-code"] == "70"
    assert base64.b64decode(server.post(b"fine:ok").content) == b"FINE:OK POST"  # the server is still there


def test_a_body_that_is_no_event_is_refused(deploy, served) -> None:
    server = served(serve_deployment(deploy))
    answer = server.post(b"")
    assert answer.status_code == 400
    assert answer.text.startswith("conveyor: event error: no event")
    assert answer.headers["x-conveyor-exit-code"] == "65"


def test_a_model_past_its_deadline_is_408_and_the_next_request_is_fine(deploy, served) -> None:
    script = '#!/bin/sh\ngrep -q hang "$INPUT_FILE_PATH" && sleep 300\necho "done $(cat "$INPUT_FILE_PATH")"\n'
    d = deploy(script=script, timeout=1, grace_period=1)
    d.definition["output"] = []
    server = served(d)
    answer = server.post(b"hang:now")
    assert answer.status_code == 408
    assert "timeout error" in answer.text
    again = server.post(b"next:one")
    assert again.status_code == 200 and again.text == "done next:one\n\n"


def test_a_script_that_crashes_is_500_and_the_next_request_is_fine(deploy, served) -> None:
    d = deploy(script='#!/bin/sh\ngrep -q crash "$INPUT_FILE_PATH" && kill -SEGV $$\necho fine\n')
    d.definition["output"] = []
    server = served(d)
    assert server.post(b"crash:now").status_code == 500
    assert server.post(b"next:one").text == "fine\n\n"


# An in-process model that hangs or kills its process: the supervised model host (conveyor.modelhost)
# is stopped and started again, and the server around it carries on.


def test_host_a_hung_in_process_model_is_408_then_restarted(deploy, served, tmp_path) -> None:
    d = serve_deployment(deploy, conveyor={"timeout": 1, "grace_period": 1, "model_host": "process"})
    assert _has_host(d)
    server = served(d)
    assert server.post(b"hang:now").status_code == 408
    assert base64.b64decode(server.post(b"next:one").content) == b"NEXT:ONE POST"
    restarts = _samples(server)["conveyor_serve_model_restarts_total"]
    assert restarts >= 1


def test_host_an_in_process_model_that_crashes_is_500_then_restarted(deploy, served) -> None:
    d = serve_deployment(deploy, conveyor={"model_host": "process"})
    assert _has_host(d)
    server = served(d)
    assert server.post(b"crash:now").status_code == 500
    assert base64.b64decode(server.post(b"next:one").content) == b"NEXT:ONE POST"
    assert server.proc.poll() is None


def test_health_answers_200_only_once_the_model_is_loaded(deploy, served, tmp_path) -> None:
    gate = tmp_path / "gate"
    server = served(serve_deployment(deploy, gate=str(gate)))
    for path in ("/health", "/_/health"):
        answer = server.get(path)
        assert answer.status_code == 503 and answer.json() == {"status": "loading"}
    assert _samples(server)["conveyor_serve_model_ready"] == 0
    gate.touch()
    server.wait_ready()
    assert server.get("/_/health").json() == {"status": "ready"}
    assert _samples(server)["conveyor_serve_model_loads_total"] == 1


def test_clients_beyond_the_slots_get_429_and_none_is_lost(deploy, served, tmp_path) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    server = served(serve_deployment(deploy, runs=str(runs)), "--slots", "2")
    server.wait_ready()
    held: list[requests.Response] = []
    holders = [threading.Thread(target=lambda: held.append(server.post(f"wait:{gate}".encode())))
               for _ in range(2)]
    for thread in holders:
        thread.start()
    server.wait_in_flight(2)
    busy = [server.post(b"one:more") for _ in range(3)]
    assert [b.status_code for b in busy] == [429, 429, 429]
    assert all(b.headers["retry-after"] for b in busy)
    gate.touch()
    for thread in holders:
        thread.join(timeout=60)
    assert [h.status_code for h in held] == [200, 200]
    assert "one:more" not in runs.read_text()  # a 429 ran nothing

    # a burst of clients that retry on 429: every one gets its own answer, each input runs once
    answers: dict[int, bytes] = {}
    statuses: list[int] = []

    def client(n: int) -> None:
        while True:
            answer = server.post(f"item:{n}".encode())
            statuses.append(answer.status_code)
            if answer.status_code != 429:
                answers[n] = answer.content
                return

    clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    assert {n: base64.b64decode(a) for n, a in answers.items()} == {n: f"ITEM:{n} POST".encode() for n in range(8)}
    ran = [line.split(" ", 1)[1] for line in runs.read_text().splitlines()]
    assert sorted(r for r in ran if r.startswith("item:")) == sorted(f"item:{n}" for n in range(8))
    samples = _samples(server)
    assert samples['conveyor_serve_records_total{status="SUCCEEDED"}'] == 10
    assert samples['conveyor_serve_requests_total{status="429"}'] == statuses.count(429) + 3


def test_sigterm_lets_the_requests_under_way_finish_then_exits_0(deploy, served, tmp_path) -> None:
    gate = tmp_path / "gate"
    server = served(serve_deployment(deploy, conveyor={"grace_period": 60}))
    server.wait_ready()
    held: list[requests.Response] = []
    holder = threading.Thread(target=lambda: held.append(server.post(f"wait:{gate}".encode())))
    holder.start()
    server.wait_in_flight(1)
    server.proc.send_signal(signal.SIGTERM)
    _wait_closed(server)  # no new request: the listener is closed
    gate.touch()
    holder.join(timeout=60)
    assert [h.status_code for h in held] == [200]
    assert base64.b64decode(held[0].content) == f"wait:{gate}".upper().encode() + b" POST"
    assert server.stop() == 0


def test_a_request_past_the_grace_period_is_stopped_and_the_server_still_exits_0(deploy, served) -> None:
    from tests.support.pipeline import assert_no_process

    d = deploy(script='#!/bin/sh\necho $$ > "$MARKERS/pid"\nexec sleep 300\n', grace_period=1, timeout=3600)
    d.definition["output"] = []
    server = served(d)
    server.wait_ready()
    held: list[requests.Response | Exception] = []

    def hold() -> None:
        try:
            held.append(server.post(b"long:one"))
        except requests.RequestException as exc:
            held.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    server.wait_in_flight(1)
    while not (d.markers / "pid").exists():
        threading.Event().wait(0.02)
    server.proc.send_signal(signal.SIGTERM)
    assert server.stop() == 0
    holder.join(timeout=60)
    assert_no_process(d.markers / "pid")  # the model's process did not outlive the server
    assert len(held) == 1 and not (isinstance(held[0], requests.Response) and held[0].status_code == 200)


def _wait_closed(server: Served) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            answer = requests.get(server.url + "/health", timeout=5)
        except requests.ConnectionError:
            return
        assert answer.status_code == 503  # draining, before the listener closes
        time.sleep(0.02)
    raise AssertionError("the listener never closed")


def test_a_storage_event_posted_is_processed_before_the_answer(deploy, served, s3_client, bucket, tmp_path) -> None:
    runs = tmp_path / "runs"
    server = served(serve_deployment(deploy, outputs=True, runs=str(runs)))
    s3_client.put_object(Bucket=bucket, Key="in/photo.txt", Body=b"a photo")
    answer = server.post(json.dumps(minio_event(bucket, "in/photo.txt")).encode(),
                         headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    [record] = answer.json()
    assert record["status"] == "SUCCEEDED" and record["input"]["key"] == "in/photo.txt"
    assert keys(s3_client, bucket, "out/") == ["out/result.txt"]  # done before the 200
    assert body(s3_client, bucket, "out/result.txt") == b"A PHOTO POST"
    assert [r["status"] for r in records(server.stderr)] == ["SUCCEEDED"]


def test_a_storage_event_is_503_when_busy_and_a_failed_one_is_never_200(
    deploy, served, s3_client, bucket, tmp_path
) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    server = served(serve_deployment(deploy, outputs=True, runs=str(runs)))
    server.wait_ready()
    s3_client.put_object(Bucket=bucket, Key="in/later.txt", Body=b"later")
    s3_client.put_object(Bucket=bucket, Key="in/bad.txt", Body=b"fail:bad")
    event = json.dumps(minio_event(bucket, "in/later.txt")).encode()
    held: list[requests.Response] = []
    holder = threading.Thread(target=lambda: held.append(server.post(f"wait:{gate}".encode())))
    holder.start()
    server.wait_in_flight(1)
    busy = server.post(event)
    assert busy.status_code == 503  # the sender retries a 503 later
    assert "later" not in runs.read_text()
    gate.touch()
    holder.join(timeout=60)
    assert server.post(event).status_code == 200  # its retry
    assert keys(s3_client, bucket, "out/") == ["out/result.txt"]
    failed = server.post(json.dumps(minio_event(bucket, "in/bad.txt")).encode())
    assert failed.status_code == 500
    assert "handler error: the test model failed on purpose" in failed.text


def test_metrics_count_requests_records_and_durations(deploy, served) -> None:
    server = served(serve_deployment(deploy))
    server.wait_ready()
    assert server.post(b"one:ok").status_code == 200
    assert server.post(b"fail:two").status_code == 500
    samples = _samples(server)
    assert samples['conveyor_serve_requests_total{status="200"}'] == 1
    assert samples['conveyor_serve_requests_total{status="500"}'] == 1
    assert samples['conveyor_serve_records_total{status="SUCCEEDED"}'] == 1
    assert samples['conveyor_serve_records_total{status="FAILED"}'] == 1
    assert samples['conveyor_serve_step_seconds_count{step="handler"}'] == 2
    assert samples["conveyor_serve_request_seconds_count"] == 2
    assert samples["conveyor_serve_in_flight"] == 0
    assert samples["conveyor_serve_model_loads_total"] == 1
    assert samples["conveyor_serve_model_restarts_total"] == 0
    summaries = [json.loads(line.split(b"conveyor.serve.app: ", 1)[1])
                 for line in server.stderr.splitlines() if b'"request_id"' in line and b"serve.app" in line]
    assert [(s["status"], s["records"]) for s in summaries] == [(200, {"SUCCEEDED": 1}), (500, {"FAILED": 1})]


def _samples(server: Served) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


def test_a_port_in_use_is_a_clean_config_error(deploy) -> None:
    import socket
    import subprocess

    from tests.support.pipeline import CONVEYOR

    d = serve_deployment(deploy)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*CONVEYOR, "serve", "--config", str(d.write()), "--platform", "oscar",
                               "--port", str(port)], capture_output=True, env=d.env(PYTHONPATH=str(REPO)), timeout=60)
    assert proc.returncode == 78
    assert f"conveyor: config error: cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr.decode()
    assert b"Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [(9000, {"port": "1", "PORT": "2"}, 9000), (None, {"port": "7001", "PORT": "2"}, 7001),
     (None, {"PORT": "7002"}, 7002), (None, {}, 8080)],
)
def test_the_port_comes_from_the_flag_then_port_then_PORT(flag, environ, expected) -> None:
    assert listen_port(flag, environ) == expected
