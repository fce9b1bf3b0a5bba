"""The command line as other tools script it: exit codes, one-line errors, stdout kept clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import __version__
from conveyor.cli import choose_payload
from conveyor.errors import EventError

EVENTS = Path(__file__).parent / "events"
BIN = Path(sys.executable).parent


def conveyor(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None, exe: str = "conveyor"):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONVEYOR_", "EVENT", "FUNCTION_CONFIG"))}
    return subprocess.run([str(BIN / exe), *args], input=stdin, capture_output=True, env={**base, **(env or {})},
                          timeout=60)


def test_version_and_help() -> None:
    assert conveyor("--version").stdout.decode().strip().endswith(__version__)
    helped = conveyor("--help").stdout.decode()
    for command in ("run", "parse-event", "inspect", "weights"):
        assert command in helped


def test_parse_event_prints_one_entry_per_record() -> None:
    proc = conveyor("parse-event", str(EVENTS / "s3_put_multi.json"))
    assert proc.returncode == 0, proc.stderr.decode()
    refs = json.loads(proc.stdout)
    assert len(refs) == 3
    assert {"bucket", "key", "size", "etag", "event_time", "user", "provider"} <= set(refs[0])


@pytest.mark.parametrize("payload", [b'{"Records": [{"eventSource": "aws:s3"}]}', b'{"Records": 5}'])
def test_parse_event_refuses_malformed_events_with_65(payload: bytes) -> None:
    proc = conveyor("parse-event", "-", stdin=payload)
    assert proc.returncode == 65
    assert proc.stdout == b""
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conveyor: event error:")


def test_inspect_redacts_secrets(tmp_path: Path) -> None:
    config = tmp_path / "f.yaml"
    config.write_text(
        "name: f\nstorage_providers:\n  minio:\n    default:\n      endpoint: http://127.0.0.1:9\n"
        "      access_key: AKIA-VISIBLE-NOT\n      secret_key: very-secret-value\n"
    )
    proc = conveyor("inspect", "--config", str(config), "--platform", "oscar")
    assert proc.returncode == 0, proc.stderr.decode()
    shown = json.loads(proc.stdout)
    assert shown["platform"] == "oscar"
    assert "very-secret-value" not in proc.stdout.decode() and "AKIA-VISIBLE-NOT" not in proc.stdout.decode()


def test_inspect_names_the_bad_key_and_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "f.yaml"
    config.write_text("name: f\nfile_stage_in: maybe\n")
    proc = conveyor("inspect", "--config", str(config))
    assert proc.returncode == 78
    assert "file_stage_in" in proc.stderr.decode() and str(config) in proc.stderr.decode()


def test_run_without_any_event_is_a_clear_error(tmp_path: Path) -> None:
    proc = conveyor("run", "--platform", "local", env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == 65
    assert "no event" in proc.stderr.decode()


def test_choose_payload_prefers_stdin_json_and_falls_back_to_event() -> None:
    assert choose_payload(b'{"a": 1}', {"EVENT": '{"b": 2}'}) == b'{"a": 1}'
    assert choose_payload(b"{a: 1}", {"EVENT": '{"b": 2}'}) == b'{"b": 2}'
    assert choose_payload(b"", {"EVENT": '{"b": 2}'}) == b'{"b": 2}'
    assert choose_payload(b"raw bytes", {}) == b"raw bytes"
    with pytest.raises(EventError):
        choose_payload(b"  \n", {})


def test_container_entrypoint_runs_a_platform_command_or_conveyor(tmp_path: Path) -> None:
    as_batch = conveyor("/bin/sh", "-c", "echo from-the-job-definition", exe="conveyor-entrypoint")
    assert as_batch.returncode == 0 and as_batch.stdout == b"from-the-job-definition\n"
    assert conveyor("--version", exe="conveyor-entrypoint").stdout.decode().strip().endswith(__version__)
    event = (EVENTS / "s3_put_multi.json").read_bytes()
    parsed = conveyor("parse-event", "-", stdin=event, exe="conveyor-entrypoint")
    assert parsed.returncode == 0 and len(json.loads(parsed.stdout)) == 3
    # No arguments: `conveyor run`, which reads the event from stdin (here: none, so exit 65).
    bare = conveyor(exe="conveyor-entrypoint", env={"TMPDIR": str(tmp_path)})
    assert bare.returncode == 65 and "no event" in bare.stderr.decode()
