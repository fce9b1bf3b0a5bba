"""The import budget of a cold `conveyor run`: what a fresh process imports to process one event.

On OSCAR and AWS Batch every uploaded file starts a fresh `conveyor run`, so every module it imports
is paid once per file. These tests run the real console script on a real event (the local folder
store, the definition base64 JSON in FUNCTION_CONFIG and the script in SCRIPT, as OSCAR's binary
mode passes them) and look at `sys.modules` when the process ends, and when the first process
re-executes itself to seal the definition (conveyor.sealing): the modules, not the time (speed is
bench/cold.py's). A sitecustomize.py on PYTHONPATH records them, so the process is the one an image
runs, unchanged.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.cli import run_args
from conveyor.config.sources import parse_yaml
from tests.support.inprocess import Pipeline

BIN = Path(sys.executable).parent

# Never imported by `conveyor run` for an event that does not need them.
HEAVY = (
    "click",  # the run path reads its options itself (conveyor.cli.run_args)
    "yaml",  # the definition is JSON here
    "importlib.metadata",  # entry points: only for a third-party handler name
    "boto3", "botocore", "s3transfer", "minio", "obstore", "urllib3", "requests",  # stores this event does not use
    "awslambdaric",  # the Lambda runtime loop
    "PIL", "numpy", "cv2",  # models' libraries
    "starlette", "uvicorn", "prometheus_client", "kubernetes",  # the gateway, other platforms
)  # fmt: skip
# Before the re-exec that seals the definition, the process imports next to nothing: the CLI and the
# logging module come after it, in the process that does the work.
NOT_BEFORE_SEALING = ("conveyor.cli", "conveyor.config", "logging", *HEAVY)

RECORDER = '''
import os, sys

def _dump(path):
    with open(path, "w") as fh:
        fh.write("\\n".join(sorted(sys.modules)))

_execve = os.execve

def _recording_execve(*args):
    _dump(os.environ["IMPORTS_OUT"] + ".before-exec")
    return _execve(*args)

os.execve = _recording_execve
import atexit
atexit.register(_dump, os.environ["IMPORTS_OUT"])
'''

CP_SCRIPT = '#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n'


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def cold_run(tmp_path: Path, definition_text: str) -> tuple[subprocess.CompletedProcess[bytes], set[str], set[str]]:
    """`conveyor run --platform oscar` on one object of the local folder store: (the process, the modules
    it had at exit, the modules it had when it re-executed itself to seal FUNCTION_CONFIG and SCRIPT)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RECORDER)
    out = tmp_path / "imports"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(hook),
        "IMPORTS_OUT": str(out),
        "FUNCTION_CONFIG": _b64(definition_text),
        "SCRIPT": _b64(CP_SCRIPT),
    }
    pipe = _pipeline(tmp_path)
    pipe.put("in", "photo.bin", b"x" * 4096)
    event = json.dumps(pipe.storage_event("in", ["photo.bin"])).encode()
    proc = subprocess.run([str(BIN / "conveyor"), "run", "--platform", "oscar"], input=event, env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert pipe.keys("out") == ["photo.bin"], proc.stderr.decode()
    before = out.with_name(out.name + ".before-exec")
    # `out` is written by an atexit hook: it exists only because the run's quick exit (conveyor.cli.leave)
    # still runs the atexit hooks
    return proc, set(out.read_text().split()), set(before.read_text().split()) if before.exists() else set()


def _pipeline(tmp_path: Path) -> Pipeline:
    pipe = Pipeline(tmp_path / "run")
    pipe.definition["conveyor"]["handler"] = {"name": "script"}
    return pipe


def _definition(tmp_path: Path) -> dict:
    return _pipeline(tmp_path / "definition").definition | {
        "storage_providers": {"local": {"default": {"root": str(tmp_path / "run" / "buckets")}}}
    }


def test_a_cold_run_imports_only_what_the_event_needs(tmp_path: Path) -> None:
    _, modules, before_exec = cold_run(tmp_path, json.dumps(_definition(tmp_path)))
    # the recording is real: the pipeline, the handler and the store the event used are there
    assert {"conveyor.process", "conveyor.handlers.script", "conveyor.storage.local"} <= modules
    assert sorted(name for name in HEAVY if name in modules) == []
    assert before_exec, "the definition in FUNCTION_CONFIG was not sealed (no re-exec)"
    assert "conveyor.sealing" in before_exec
    assert sorted(name for name in NOT_BEFORE_SEALING if name in before_exec) == []


def test_a_yaml_definition_imports_yaml_and_nothing_else_heavy(tmp_path: Path) -> None:
    import yaml

    _, modules, _ = cold_run(tmp_path, yaml.safe_dump(_definition(tmp_path)))
    assert "yaml" in modules
    assert sorted(name for name in HEAVY if name in modules and name != "yaml") == []


# -- run's options without click ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run"], (None, None, None)),
        (["run", "--platform", "oscar"], (None, None, "oscar")),
        (["run", "--platform=batch", "--event", "-", "--config=f.yaml"], ("-", "f.yaml", "batch")),
        (["run", "--event", "a.json", "--event", "b.json"], ("b.json", None, None)),  # the last one, as click
    ],
)
def test_run_args_reads_runs_plain_options(args: list[str], expected: tuple) -> None:
    assert run_args(args) == dict(zip(("event_path", "config_path", "platform_opt"), expected, strict=True))


@pytest.mark.parametrize(
    "args",
    [
        [], ["inspect"], ["--version"], ["run", "--help"], ["run", "-h"], ["run", "--version"],
        ["run", "--platform", "bogus"], ["run", "--platform"], ["run", "--event", "--config"],
        ["run", "extra"], ["run", "--"], ["run", "--plat", "oscar"], ["run", "--config", "/"],
    ],
)  # fmt: skip
def test_run_args_leaves_everything_else_to_click(args: list[str]) -> None:
    assert run_args(args) is None


def test_a_bad_run_option_gets_clicks_message_and_exit_code(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONVEYOR_", "FUNCTION_CONFIG"))}
    proc = subprocess.run([str(BIN / "conveyor"), "run", "--platform", "bogus"], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 2
    assert "Invalid value for '--platform'" in proc.stderr.decode()
    proc = subprocess.run([str(BIN / "conveyor"), "run", "--config", str(tmp_path)], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 2 and "is a directory" in proc.stderr.decode()


# -- definitions written as JSON -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "f", "timeout_threshold": 2.5, "log_level": null, "file_stage_in": true, "n": -3}',
        '  {"a": {"a": 1, "a": 2}, "b": ["x\\/y", "\\t", 12345678901234567890, -2.0e+3]}',
        '{"a":1}',
    ],
)
def test_a_json_definition_reads_as_yaml_reads_it(text: str) -> None:
    import yaml

    assert parse_yaml(text, "test") == yaml.safe_load(text)


@pytest.mark.parametrize("text", ['{"a": 1e5}', '{"a": 1.5e3}', '{"a": NaN}', '{"a": Infinity}'])
def test_json_numbers_yaml_reads_otherwise_are_left_to_yaml(text: str) -> None:
    """YAML 1.1 (PyYAML) reads 1e5, 1.5e3 and NaN as strings: the definition means what YAML says."""
    import yaml

    assert parse_yaml(text, "test") == yaml.safe_load(text)
    assert isinstance(parse_yaml(text, "test")["a"], str)
