"""Issue 15, items 2 and 5: what reaches stderr and stdout whatever `log_level` says.

OSCAR's docs advise `log_level: CRITICAL` (its classic watchdog answers a sync call with the
process's stdout and stderr combined), and many of its example definitions set it. Under it:

- a storage-event job (async: `echo $EVENT | supervisor` in a Kubernetes Job) still shows the
  model's own output and, when it fails, the error: the job's log is all its user ever sees;
- a sync call shows nothing but the response on stdout (base64 + the newline faas-supervisor's
  print() added) and nothing on stderr when it succeeds: the model's lines follow log_level there;
- the record protocol lines (`conveyor local` reads them back from job logs) are not a log level's
  business in a storage-event job.

The services are launched as OSCAR launches them: `/bin/sh -c 'echo $EVENT | supervisor'` with the
definition in FUNCTION_CONFIG (base64) for a job; the request body on stdin for a sync call.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.child import run_child
from conveyor.deadline import Deadline
from conveyor.logs import MODEL_OUTPUT, PROTOCOL, bound_request_id, keep_job_output, setup_logging
from conveyor.records import results_in, uploads_in
from tests.support.inprocess import Pipeline
from tests.support.pipeline import CONVEYOR, PNG, Deployment, oscar_event

JOB_UUID = "job-7f3a"

# An OSCAR-style async service: talks on stdout and stderr, writes one output.
CHATTY_SCRIPT = """#!/bin/bash
echo "SCRIPT: Invoked the chatty service with $(basename "$INPUT_FILE_PATH")"
echo "converting..." >&2
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result.png"
echo "done"
"""

# An OSCAR-style sync service (the imagemagick / cowsay shape): talks, and answers with one file.
SYNC_FILE_SCRIPT = """#!/bin/sh
echo "SCRIPT: Invoked sync service"
echo "a warning of the model" >&2
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/answer.png"
"""

# The cowsay shape: no output file, the answer is the model's own stdout.
SYNC_STDOUT_SCRIPT = """#!/bin/sh
echo "Moo: $(cat "$INPUT_FILE_PATH")"
"""


def definition(d: Deployment, log_level: str, *, outputs: bool = True) -> str:
    """The deployment's definition as OSCAR hands it over: FUNCTION_CONFIG, base64 of the YAML."""
    doc = dict(d.definition, log_level=log_level)
    doc.pop("init_script", None)
    if not outputs:
        doc["output"] = []
    return base64.b64encode(yaml.safe_dump(doc).encode()).decode()


def run_as_oscar_job(d: Deployment, script: str, event: Any, log_level: str) -> subprocess.CompletedProcess:
    """The Kubernetes Job OSCAR creates per event: /bin/sh -c "echo $EVENT | supervisor"."""
    env = d.env(
        EVENT=json.dumps(event),
        JOB_UUID=JOB_UUID,
        FUNCTION_CONFIG=definition(d, log_level),
        SCRIPT=base64.b64encode(script.encode()).decode(),
    )
    supervisor = " ".join(CONVEYOR) + " run"
    return subprocess.run(["/bin/sh", "-c", f"echo $EVENT | {supervisor}"], env=env,
                          capture_output=True, timeout=120)


def run_as_oscar_sync(d: Deployment, script: str, body: bytes, log_level: str, *,
                      outputs: bool = False) -> subprocess.CompletedProcess:
    """The watchdog's fork per request: the request body on stdin, the pod's environment."""
    env = d.env(
        OSCAR_SERVICE_NAME="sync-service",
        FUNCTION_CONFIG=definition(d, log_level, outputs=outputs),
        SCRIPT=base64.b64encode(script.encode()).decode(),
    )
    return subprocess.run([*CONVEYOR, "run"], input=body, env=env, capture_output=True, timeout=120)


def lines(stream: bytes) -> list[str]:
    return stream.decode().splitlines()


# -- storage events (async jobs) ---------------------------------------------------------------------


def test_critical_storage_job_still_shows_the_model_output(deploy, s3_client, bucket) -> None:
    d = deploy(None)
    s3_client.put_object(Bucket=bucket, Key="in/cat.png", Body=PNG)
    proc = run_as_oscar_job(d, CHATTY_SCRIPT, oscar_event(bucket, "in/cat.png"), "CRITICAL")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""  # a storage event answers nothing on stdout
    err = lines(proc.stderr)
    model = [line for line in err if ": model: " in line]
    # Every line of the model, stdout and stderr alike (two pipes: no order between them), in the
    # usual format with the job's id.
    said = [line.split(": model: ", 1)[1] for line in model]
    assert sorted(said) == sorted(["SCRIPT: Invoked the chatty service with cat.png", "converting...", "done"])
    assert said.index("SCRIPT: Invoked the chatty service with cat.png") < said.index("done")
    assert all(f" INFO [{JOB_UUID}] " in line for line in model)
    # Conveyor's own INFO lines still obey CRITICAL.
    assert not any("downloaded" in line or "conveyor.cli" in line for line in err)
    [record] = results_in(proc.stderr)
    assert record["status"] == "SUCCEEDED" and record["outputs"] == [f"{bucket}/out/result.png"]


def test_critical_storage_job_whose_input_is_gone_says_why(deploy, s3_client, bucket) -> None:
    d = deploy(None)
    proc = run_as_oscar_job(d, CHATTY_SCRIPT, oscar_event(bucket, "in/deleted.png"), "CRITICAL")
    assert proc.returncode == 74, proc.stderr.decode()
    assert proc.stdout == b""
    [record] = results_in(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "storage"
    expected = f"conveyor: storage error: {record['error']['message']} (input {bucket}/in/deleted.png)"
    assert expected in lines(proc.stderr)
    assert "deleted.png" in record["error"]["message"]


def test_critical_storage_job_whose_model_fails_shows_its_output_and_the_error(deploy, s3_client, bucket) -> None:
    d = deploy(None)
    s3_client.put_object(Bucket=bucket, Key="in/cat.png", Body=PNG)
    script = '#!/bin/sh\necho "cannot open the model weights" >&2\nexit 3\n'
    proc = run_as_oscar_job(d, script, oscar_event(bucket, "in/cat.png"), "CRITICAL")
    assert proc.returncode == 70, proc.stderr.decode()
    err = lines(proc.stderr)
    assert any(line.endswith(": model: cannot open the model weights") for line in err)
    [record] = results_in(proc.stderr)
    assert record["error"]["kind"] == "handler" and record["exit_code"] == 3
    assert f"conveyor: handler error: {record['error']['message']} (input {bucket}/in/cat.png)" in err


def test_warning_storage_job_keeps_the_record_protocol_lines(deploy, s3_client, bucket) -> None:
    d = deploy(None)
    s3_client.put_object(Bucket=bucket, Key="in/cat.png", Body=PNG)
    proc = run_as_oscar_job(d, CHATTY_SCRIPT, oscar_event(bucket, "in/cat.png"), "WARNING")
    assert proc.returncode == 0, proc.stderr.decode()
    [record] = results_in(proc.stderr)  # what `conveyor local` reads back from a job that died
    assert record["status"] == "SUCCEEDED" and record["request_id"] == JOB_UUID
    assert uploads_in(proc.stderr, JOB_UUID) == [f"{bucket}/out/result.png"]
    assert not any("downloaded" in line for line in lines(proc.stderr))  # WARNING still quiets INFO


# -- sync calls (the watchdog) -------------------------------------------------------------------------


def test_critical_sync_call_answers_base64_and_a_newline_and_nothing_else(deploy) -> None:
    d = deploy(None)
    proc = run_as_oscar_sync(d, SYNC_FILE_SCRIPT, base64.b64encode(PNG), "CRITICAL")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == base64.b64encode(PNG) + b"\n"
    # The watchdog puts stderr into the body too: under CRITICAL, neither the model's lines nor
    # Conveyor's log nor the record protocol may be there.
    assert proc.stderr == b""


def test_sync_call_answered_by_the_model_stdout_ends_with_a_newline(deploy) -> None:
    d = deploy(None)
    proc = run_as_oscar_sync(d, SYNC_STDOUT_SCRIPT, b"hi", "CRITICAL")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"Moo: hi\n" + b"\n"  # as faas-supervisor's print(output)
    assert proc.stderr == b""


def test_sync_call_at_info_shows_the_model_lines_on_stderr_only(deploy) -> None:
    d = deploy(None)
    proc = run_as_oscar_sync(d, SYNC_FILE_SCRIPT, base64.b64encode(PNG), "INFO")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == base64.b64encode(PNG) + b"\n"
    assert any(line.endswith(": model: SCRIPT: Invoked sync service") for line in lines(proc.stderr))


def test_critical_sync_call_that_fails_prints_the_error_and_no_response(deploy) -> None:
    d = deploy(None)
    proc = run_as_oscar_sync(d, '#!/bin/sh\necho "bad input" >&2\nexit 2\n', b"hi", "CRITICAL")
    assert proc.returncode == 70
    assert proc.stdout == b""  # no response, not even its newline
    [line] = lines(proc.stderr)  # the watchdog answers 500 and logs this: the one line that says why
    assert line.startswith("conveyor: handler error: ") and line.endswith(")")
    assert "(input " in line


# -- in-process: the channels themselves ---------------------------------------------------------------


@pytest.fixture
def stderr_at() -> Iterator[Any]:
    """stderr_at(level) -> a text buffer standing for stderr, set up as `conveyor run` sets up its
    log (setup_logging); the root logger and the job-output channels are put back afterwards."""
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", MODEL_OUTPUT, PROTOCOL)}
    before = list(root.handlers)

    def at(level: str) -> io.StringIO:
        buffer = io.StringIO()
        setup_logging(level, stream=buffer)
        return buffer

    yield at
    for handler in root.handlers:
        if handler not in before:
            root.removeHandler(handler)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def run_echo(tmp_path: Path) -> None:
    rc = run_child(["/bin/sh", "-c", "echo to-stdout; sleep 0.1; echo to-stderr >&2"],
                   env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, deadline=Deadline.after(30),
                   shutdown=threading.Event(), log=logging.getLogger("conveyor.process"),
                   log_file=tmp_path / "model.log", grace=0.5)
    assert rc == 0


def test_kept_model_output_passes_a_critical_level_in_the_usual_format(tmp_path, stderr_at) -> None:
    err = stderr_at("CRITICAL")  # keep_job_output(True) is what setup_logging sets
    with bound_request_id("req-9"):
        run_echo(tmp_path)
        logging.getLogger("conveyor.process").error("Conveyor's own line: hidden")
    shown = err.getvalue().splitlines()
    assert [line.split(" ", 2)[2] for line in shown] == [
        "INFO [req-9] conveyor.process: model: to-stdout",
        "INFO [req-9] conveyor.process: model: to-stderr",
    ]


def test_model_output_of_a_sync_run_follows_the_level(tmp_path, stderr_at) -> None:
    err = stderr_at("CRITICAL")
    keep_job_output(False)
    run_echo(tmp_path)
    assert err.getvalue() == ""
    err = stderr_at("INFO")
    keep_job_output(False)
    run_echo(tmp_path)
    assert [line.split(": ", 1)[1] for line in err.getvalue().splitlines()] == ["model: to-stdout", "model: to-stderr"]


def test_kept_record_protocol_passes_a_warning_level(tmp_path, stderr_at) -> None:
    err = stderr_at("WARNING")
    pipe = Pipeline(tmp_path)
    pipe.put("in", "a.txt", b"hello")
    [record] = pipe.run(pipe.storage_event("in", ["a.txt"]))
    logged = results_in(err.getvalue())
    assert [(r["request_id"], r["status"]) for r in logged] == [(record.request_id, "SUCCEEDED")]
    assert uploads_in(err.getvalue(), record.request_id) == ["out/a.txt"]
    assert all("@conveyor-record" in line for line in err.getvalue().splitlines())  # nothing else at WARNING
