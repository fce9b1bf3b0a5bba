"""Issue 15, the script's part: real-shaped OSCAR services run through `conveyor run` as OSCAR launches it.

An OSCAR job is `/bin/sh -c "echo $EVENT | supervisor"` with the event in EVENT, the definition in
FUNCTION_CONFIG (base64; or the mounted file) and JOB_UUID, RESOURCE_ID, OSCAR_SERVICE_* set by OSCAR.
/bin/sh is dash here, as on the Debian and Ubuntu images OSCAR's examples use; the scripts, definitions
and inputs below are written for these tests, after the shape of OSCAR's examples.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.support.pipeline import CONVEYOR, Deployment, body, keys, minio_event, records

DASH = os.path.basename(os.path.realpath("/bin/sh")) == "dash"
needs_dash = pytest.mark.skipif(not DASH, reason="/bin/sh is not dash here (it is on Debian/Ubuntu images)")

TEXT = b"the quick brown fox\n"

# After OSCAR's simple-test: a #!/bin/bash script, written and tested under /bin/sh (dash).
SIMPLE_TEST = r"""#!/bin/bash
echo "SCRIPT: Invoked the simple test. File available in $INPUT_FILE_PATH"
FILE_NAME=$(basename "$INPUT_FILE_PATH")
OUTPUT_FILE="$TMP_OUTPUT_DIR/$FILE_NAME.txt"
cat "$INPUT_FILE_PATH" > "$OUTPUT_FILE"
echo "\nAnalysis:" >> "$OUTPUT_FILE"
wc -w < "$INPUT_FILE_PATH" >> "$OUTPUT_FILE"
"""
# What dash writes (its echo turns \n into a newline), and what bash writes (a literal \n).
DASH_BYTES = TEXT + b"\nAnalysis:\n4\n"
BASH_BYTES = TEXT + b"\\nAnalysis:\n4\n"

PYTHON_SCRIPT = """#!/usr/bin/env python3
import os, pathlib, sys
source = pathlib.Path(os.environ["INPUT_FILE_PATH"])
target = pathlib.Path(os.environ["TMP_OUTPUT_DIR"]) / (source.stem + ".upper.txt")
target.write_text(source.read_text().upper() + f"python {sys.version_info.major}\\n")
"""

OSCAR_VARIABLES = ("OSCAR_SERVICE_NAME", "OSCAR_SERVICE_TOKEN", "OSCAR_SERVICE_BASE_PATH", "JOB_UUID", "RESOURCE_ID")
TOKEN = "oscar-svc-5ecr3t-token-0123456789abcdef"
# The script writes every OSCAR variable into an output file, so the test sees what it got.
OSCAR_VARS_SCRIPT = """#!/bin/bash
for name in OSCAR_SERVICE_NAME OSCAR_SERVICE_TOKEN OSCAR_SERVICE_BASE_PATH JOB_UUID RESOURCE_ID GREETING; do
  eval "echo $name=\\${$name-unset}"
done > "$TMP_OUTPUT_DIR/vars.txt"
echo "vars written"
"""


def oscar_service(d: Deployment, script: str, **extra: Any) -> Deployment:
    """The flat service OSCAR writes for the supervisor: the script's text in `script`, no init_script."""
    d.definition.pop("init_script", None)
    d.definition["script"] = script
    d.definition.update(extra)
    return d


def oscar_job(d: Deployment, event: dict[str, Any], **env: str) -> subprocess.CompletedProcess:
    """Run as an OSCAR Job: `/bin/sh -c "echo $EVENT | supervisor"`, the definition in FUNCTION_CONFIG."""
    command = f"echo $EVENT | {shlex.join(CONVEYOR)} run"
    variables = {
        "EVENT": json.dumps(event),
        "FUNCTION_CONFIG": base64.b64encode(yaml.safe_dump(d.definition).encode()).decode(),
        "JOB_UUID": "job-4f0c",  # with OSCAR_SERVICE_NAME, how Conveyor (and the contract) knows it is OSCAR
        "OSCAR_SERVICE_NAME": str(d.definition.get("name", "svc")),
        **env,
    }
    return subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, env=d.env(**variables), timeout=120, check=False
    )


def upload_text(s3_client, bucket: str, key: str = "in/note.txt") -> dict[str, Any]:
    s3_client.put_object(Bucket=bucket, Key=key, Body=TEXT)
    return minio_event(bucket, key, len(TEXT))


def interpreter_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if "running script.sh" in line]


# --------------------------------------------------------------------------------------------
# 1. Scripts run by /bin/sh, as faas-supervisor runs them


@needs_dash
def test_bash_shebang_script_writes_what_dash_writes(deploy, s3_client, bucket) -> None:
    d = oscar_service(deploy(script=None), SIMPLE_TEST)
    proc = oscar_job(d, upload_text(s3_client, bucket))
    assert proc.returncode == 0, proc.stderr.decode()
    assert body(s3_client, bucket, "out/note.txt.txt") == DASH_BYTES
    [line] = interpreter_lines(proc.stderr)
    assert " INFO " in line
    assert line.endswith(
        "running script.sh (script (inline)) with /bin/sh (its #! names bash; faas-supervisor runs scripts with"
        " /bin/sh; set conveyor.script_shell: shebang to use /bin/bash)"
    )
    [record] = records(proc.stderr)
    assert record["status"] == "SUCCEEDED"


def test_script_shell_shebang_writes_what_bash_writes(deploy, s3_client, bucket) -> None:
    d = oscar_service(deploy(script=None, script_shell="shebang"), SIMPLE_TEST)
    proc = oscar_job(d, upload_text(s3_client, bucket))
    assert proc.returncode == 0, proc.stderr.decode()
    assert body(s3_client, bucket, "out/note.txt.txt") == BASH_BYTES
    [line] = interpreter_lines(proc.stderr)
    assert line.endswith("with /bin/bash (its #! line, as conveyor.script_shell: shebang asks)")


def test_python3_shebang_script_runs_with_python3(deploy, s3_client, bucket) -> None:
    d = oscar_service(deploy(script=None), PYTHON_SCRIPT)
    proc = oscar_job(d, upload_text(s3_client, bucket))
    assert proc.returncode == 0, proc.stderr.decode()
    assert body(s3_client, bucket, "out/note.upper.txt") == TEXT.upper() + b"python 3\n"
    [line] = interpreter_lines(proc.stderr)
    assert line.endswith("with /usr/bin/env python3 (its #! line names python3, not a shell)")


def test_bad_script_shell_exits_78_naming_the_key(deploy, s3_client, bucket) -> None:
    d = oscar_service(deploy(script=None, script_shell="bash"), SIMPLE_TEST)
    proc = oscar_job(d, upload_text(s3_client, bucket))
    assert proc.returncode == 78
    assert "conveyor.script_shell" in proc.stderr.decode()
    assert "must be one of sh, shebang" in proc.stderr.decode()
    assert keys(s3_client, bucket, "out/") == []


# --------------------------------------------------------------------------------------------
# 2. environment: Variables: (capital V), as OSCAR's API reads it


def test_flat_service_with_capital_variables(deploy, s3_client, bucket) -> None:
    d = oscar_service(deploy(script=None), OSCAR_VARS_SCRIPT, environment={"Variables": {"GREETING": "hola"}})
    proc = oscar_job(d, upload_text(s3_client, bucket))
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"GREETING=hola\n" in body(s3_client, bucket, "out/vars.txt")


def test_oscar_cli_definition_with_capital_variables(deploy, s3_client, bucket, tmp_path) -> None:
    """oscar-cli's FDL given to `conveyor run --config`, written as OSCAR's cowsay example writes it."""
    d = deploy(script=None)
    (tmp_path / "vars.sh").write_text(OSCAR_VARS_SCRIPT)
    service = {
        "name": "greeter",
        "script": "vars.sh",
        "log_level": "CRITICAL",
        "environment": {"Variables": {"GREETING": "hola"}},
        "input": d.definition["input"],
        "output": d.definition["output"],
    }
    fdl = {
        "functions": {"oscar": [{"my-cluster": service}]},
        "storage_providers": d.definition["storage_providers"],
        "conveyor": d.definition["conveyor"],
    }
    path = tmp_path / "greeter.yaml"
    path.write_text(yaml.safe_dump(fdl))
    proc = subprocess.run(
        [*CONVEYOR, "run", "--config", str(path), "--platform", "oscar"],
        input=json.dumps(upload_text(s3_client, bucket)).encode(),
        capture_output=True,
        env=d.env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"GREETING=hola\n" in body(s3_client, bucket, "out/vars.txt")


# --------------------------------------------------------------------------------------------
# 3. The variables OSCAR sets reach the script; the service token stays out of logs and records


def oscar_pod_env() -> dict[str, str]:
    return {
        "OSCAR_SERVICE_NAME": "pipeline-test",
        "OSCAR_SERVICE_TOKEN": TOKEN,
        "OSCAR_SERVICE_BASE_PATH": "/system/services/pipeline-test/exposed",
        "JOB_UUID": "job-9b1e-77",
        "RESOURCE_ID": "worker-node-3",
    }


def test_oscar_variables_reach_the_script_and_the_token_is_never_shown(deploy, s3_client, bucket) -> None:
    d = oscar_service(deploy(script=None), OSCAR_VARS_SCRIPT, log_level="DEBUG")
    env = oscar_pod_env()
    proc = oscar_job(d, upload_text(s3_client, bucket), **env)
    assert proc.returncode == 0, proc.stderr.decode()
    got = body(s3_client, bucket, "out/vars.txt").decode()
    for name in OSCAR_VARIABLES:
        assert f"{name}={env[name]}\n" in got
    assert TOKEN.encode() not in proc.stderr + proc.stdout  # not even at DEBUG
    [record] = records(proc.stderr)
    assert record["request_id"] == "job-9b1e-77"  # OSCAR's JOB_UUID names the record
    assert TOKEN not in json.dumps(record)


def test_a_token_the_model_prints_stays_out_of_the_record(deploy, s3_client, bucket) -> None:
    leaky = (
        '#!/bin/sh\necho "calling the API with $OSCAR_SERVICE_TOKEN" >&2\n'
        'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n'
    )
    d = oscar_service(deploy(script=None), leaky)
    proc = oscar_job(d, upload_text(s3_client, bucket), **oscar_pod_env())
    assert proc.returncode == 0, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert TOKEN not in json.dumps(record)
    assert "calling the API with ***" in record["log_tail"]


def test_token_in_the_definition_reaches_the_script_and_inspect_masks_it(deploy, s3_client, bucket) -> None:
    variables = {"OSCAR_SERVICE_TOKEN": TOKEN, "GREETING": "hola"}
    d = oscar_service(deploy(script=None), OSCAR_VARS_SCRIPT, environment={"Variables": variables})
    proc = oscar_job(d, upload_text(s3_client, bucket))
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"OSCAR_SERVICE_TOKEN={TOKEN}\n".encode() in body(s3_client, bucket, "out/vars.txt")
    assert TOKEN.encode() not in proc.stderr
    shown = subprocess.run(
        [*CONVEYOR, "inspect", "--config", str(d.write()), "--platform", "oscar"],
        capture_output=True,
        env=d.env(),
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr.decode()
    assert TOKEN.encode() not in shown.stdout + shown.stderr
    environment = json.loads(shown.stdout)["config"]["environment"]
    assert environment["OSCAR_SERVICE_TOKEN"] == "***" and environment["GREETING"] == "hola"


def test_the_conveyor_under_test_is_this_checkout() -> None:
    """The subprocesses import the package under test (an editable install of this worktree)."""
    out = subprocess.run(
        [sys.executable, "-c", "import conveyor.handlers.script as s; print(s.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) in out
