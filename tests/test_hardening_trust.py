"""Issue 14, item 5: the credentials Conveyor hides from the model stay out of its reach.

- The definition in FUNCTION_CONFIG (storage keys inline) leaves Conveyor's environment block
  (conveyor.sealing): a script reading /proc/$PPID/environ finds nothing of it.
- `conveyor: isolate_model: true` (conveyor.isolation): the model runs as nobody, cannot read the
  definition file, the secret files or /proc/$PPID/environ, and its outputs are still published;
  without the capabilities to switch users the record fails with a configuration error (78).

Real processes against the real S3 server; the isolation tests need root (the suite runs as root).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conveyor.config import load_config
from conveyor.errors import ConfigError
from conveyor.isolation import ModelUser, can_read, model_user
from tests.support.pipeline import CONVEYOR, body, keys, minio_event, records

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching the model's user needs root")

# Writes what the model could see of Conveyor into its outputs, then the usual copy.
SNOOP_SCRIPT = """#!/bin/sh
id -u > "$TMP_OUTPUT_DIR/uid.txt"
if tr '\\0' '\\n' < /proc/$PPID/environ > "$TMP_OUTPUT_DIR/parent-environ.txt" 2>/dev/null; then :; else
    echo DENIED > "$TMP_OUTPUT_DIR/parent-environ.txt"; fi
if cat "$SECRET_FILE" > "$TMP_OUTPUT_DIR/secret.txt" 2>/dev/null; then :; else
    echo DENIED > "$TMP_OUTPUT_DIR/secret.txt"; fi
env > "$TMP_OUTPUT_DIR/model-environ.txt"
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user may traverse (pytest's tmp_path is closed to others): 0755 under /tmp."""
    path = Path(tempfile.mkdtemp(prefix="conveyor-trust-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_with_function_config(d, event: dict, **env: str) -> subprocess.CompletedProcess:
    """`conveyor run` with the definition in FUNCTION_CONFIG (base64), as Batch and OSCAR jobs get it."""
    encoded = base64.b64encode(yaml.safe_dump(d.definition).encode()).decode()
    return subprocess.run([*CONVEYOR, "run", "--platform", "oscar"], input=json.dumps(event).encode(),
                          capture_output=True, env=d.env(FUNCTION_CONFIG=encoded, **env), timeout=120)


# --- the definition leaves Conveyor's environment block ----------------------------------------------


def test_a_model_finds_nothing_of_function_config_in_its_parents_environment(deploy, s3_server, s3_client,
                                                                              bucket) -> None:
    d = deploy(SNOOP_SCRIPT)
    d.definition["environment"]["variables"]["SECRET_FILE"] = "/nonexistent"
    s3_client.put_object(Bucket=bucket, Key="in/a.txt", Body=b"hello")
    proc = run_with_function_config(d, minio_event(bucket, "in/a.txt"))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert body(s3_client, bucket, "out/a.txt") == b"hello"
    parent = body(s3_client, bucket, "out/parent-environ.txt").decode()
    assert "PATH=" in parent  # the model did read Conveyor's environment block
    assert "FUNCTION_CONFIG" not in parent
    assert s3_server.secret_key not in parent
    assert base64.b64encode(yaml.safe_dump(d.definition).encode()).decode()[:40] not in parent
    model = body(s3_client, bucket, "out/model-environ.txt").decode()
    assert "FUNCTION_CONFIG" not in model and "CONVEYOR_SEALED_FD" not in model
    assert [r["status"] for r in records(proc.stderr)] == ["SUCCEEDED"]


def test_conveyor_entrypoint_seals_before_it_runs(deploy, s3_server, s3_client, bucket) -> None:
    """The images' entrypoint takes the same path (it seals before importing the CLI)."""
    d = deploy(SNOOP_SCRIPT)
    d.definition["environment"]["variables"]["SECRET_FILE"] = "/nonexistent"
    s3_client.put_object(Bucket=bucket, Key="in/b.txt", Body=b"hi")
    encoded = base64.b64encode(yaml.safe_dump(d.definition).encode()).decode()
    proc = subprocess.run([str(Path(sys.executable).parent / "conveyor-entrypoint"), "--platform", "oscar"],
                          input=json.dumps(minio_event(bucket, "in/b.txt")).encode(), capture_output=True,
                          env=d.env(FUNCTION_CONFIG=encoded), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    parent = body(s3_client, bucket, "out/parent-environ.txt").decode()
    assert "PATH=" in parent and "FUNCTION_CONFIG" not in parent and s3_server.secret_key not in parent


PROBE = """
import json, os, sys
from pathlib import Path
with open(sys.argv[1], "a") as fh:
    fh.write("start\\n")
from conveyor.sealing import SEALED_FD_VAR, sealed_environ
environ = sealed_environ()
block = Path("/proc/self/environ").read_bytes().decode("utf-8", "surrogateescape")
names = ("FUNCTION_CONFIG", "EVENT", "SCRIPT", "KEEP")
print(json.dumps({"environ": {k: environ.get(k) for k in names},
                  "in_block": [k for k in names if f"\\0{k}=" in "\\0" + block],
                  "again": sealed_environ() == environ, "sealed_fd_seen": SEALED_FD_VAR in environ}))
"""


def _probe(tmp_path: Path, **env: str) -> tuple[dict, int]:
    starts = tmp_path / "starts"
    base = {k: v for k, v in os.environ.items() if k not in ("FUNCTION_CONFIG", "EVENT", "SCRIPT", "FDL")}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(starts)], capture_output=True, text=True,
                          env={**base, **env}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), starts.read_text().count("start")


def test_sealing_passes_large_values_through_and_restarts_once(tmp_path: Path) -> None:
    big = "k" * 120_000  # near the 128 KiB a single environment string may take
    event = json.dumps({"Key": "b/ünïcode ☃"}) + " " * 70_000  # more than a pipe holds
    seen, starts = _probe(tmp_path, FUNCTION_CONFIG=big, EVENT=event, KEEP="visible")
    assert starts == 2  # one re-exec
    assert seen["environ"] == {"FUNCTION_CONFIG": big, "EVENT": event, "SCRIPT": None, "KEEP": "visible"}
    assert seen["in_block"] == ["KEEP"]
    assert seen["again"] and not seen["sealed_fd_seen"]


def test_sealing_costs_nothing_without_a_sealed_variable(tmp_path: Path) -> None:
    seen, starts = _probe(tmp_path, KEEP="visible")
    assert starts == 1
    assert seen["environ"]["KEEP"] == "visible" and seen["in_block"] == ["KEEP"]


# --- isolate_model -----------------------------------------------------------------------------------


def _isolated(d, open_dir: Path) -> Path:
    """The definition (keys inline, world-readable, in a folder anyone may traverse) with isolate_model."""
    d.definition["conveyor"]["isolate_model"] = True
    config = open_dir / "function_config.yaml"
    d.definition["environment"]["variables"]["SECRET_FILE"] = str(config)
    config.write_text(yaml.safe_dump(d.definition))
    config.chmod(0o644)
    return config


@needs_root
def test_an_isolated_model_reads_no_secret_and_its_outputs_are_published(deploy, s3_server, s3_client, bucket,
                                                                          open_dir: Path) -> None:
    d = deploy(SNOOP_SCRIPT)
    config = _isolated(d, open_dir)
    scratch = open_dir / "scratch"
    scratch.mkdir(mode=0o755)
    s3_client.put_object(Bucket=bucket, Key="in/a.txt", Body=b"hello")
    proc = subprocess.run([*CONVEYOR, "run", "--config", str(config), "--platform", "oscar"],
                          input=json.dumps(minio_event(bucket, "in/a.txt")).encode(), capture_output=True,
                          env=d.env(TMPDIR=str(scratch)), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert body(s3_client, bucket, "out/uid.txt").strip() == str(NOBODY).encode()
    assert body(s3_client, bucket, "out/secret.txt") == b"DENIED\n"
    assert body(s3_client, bucket, "out/parent-environ.txt") == b"DENIED\n"
    assert body(s3_client, bucket, "out/a.txt") == b"hello"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # Conveyor's own file: closed to others
    assert b"made it readable by its owner alone" in proc.stderr
    assert list(scratch.iterdir()) == []


@needs_root
def test_isolation_without_the_capabilities_fails_the_record_with_78(deploy, s3_server, s3_client, bucket,
                                                                      open_dir: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop capabilities")
    d = deploy(SNOOP_SCRIPT)
    config = _isolated(d, open_dir)
    s3_client.put_object(Bucket=bucket, Key="in/a.txt", Body=b"hello")
    proc = subprocess.run([setpriv, "--bounding-set", "-setuid,-setgid,-chown", *CONVEYOR, "run", "--config",
                           str(config), "--platform", "oscar"],
                          input=json.dumps(minio_event(bucket, "in/a.txt")).encode(), capture_output=True,
                          env=d.env(), timeout=120)
    assert proc.returncode == 78, proc.stderr.decode()[-3000:]
    stderr = proc.stderr.decode()
    assert "conveyor.isolate_model" in stderr and "CAP_SETUID" in stderr
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "config"
    assert keys(s3_client, bucket, "out/") == []  # the model never ran, unisolated or not


# --- which files hold credentials, and what is done about them ----------------------------------------


def _secrets(tmp_path: Path, mode: int, owner: int = 0) -> tuple[Path, Path]:
    secrets = tmp_path / "secrets"
    folder = secrets / "minio.default"
    folder.mkdir(parents=True)
    for name, value in (("accessKey", "AKIAEXAMPLE"), ("secretKey", "wJalrXUtnFEMI/K7MDENG/bPxRfiCY")):
        path = folder / name
        path.write_text(value)
        path.chmod(mode)
        os.chown(path, owner, owner)
    for path in (tmp_path, secrets, folder):
        path.chmod(0o755)
    return secrets, folder / "secretKey"


def _config(tmp_path: Path, secrets: Path, **conveyor: object):
    definition = tmp_path / "f.yaml"
    definition.write_text(yaml.safe_dump({"name": "f", "conveyor": {"isolate_model": True, **conveyor}}))
    return load_config({}, "oscar", path=definition, secrets_dir=secrets)


@needs_root
def test_a_world_readable_secret_file_of_conveyors_own_is_closed(open_dir: Path) -> None:
    tmp_path = open_dir
    secrets, secret = _secrets(tmp_path, 0o644)
    assert can_read(secret, ModelUser(NOBODY, NOBODY))
    user = model_user(_config(tmp_path, secrets))
    assert user == ModelUser(NOBODY, NOBODY)
    assert not can_read(secret, user) and stat.S_IMODE(secret.stat().st_mode) == 0o600


@needs_root
def test_a_readable_secret_file_conveyor_does_not_own_is_a_configuration_error(open_dir: Path) -> None:
    """A Kubernetes secret mounted 0644 (read-only: Conveyor cannot change it), as another owner here."""
    tmp_path = open_dir
    secrets, secret = _secrets(tmp_path, 0o644, owner=1000)
    with pytest.raises(ConfigError, match="defaultMode 0400") as info:
        model_user(_config(tmp_path, secrets))
    assert info.value.exit_code == 78 and str(secret.parent) in info.value.message
    assert stat.S_IMODE(secret.stat().st_mode) == 0o644


def test_the_model_user_may_be_named_and_never_root(tmp_path: Path) -> None:
    secrets = tmp_path / "none"
    with pytest.raises(ConfigError, match="must not be root"):
        _config(tmp_path, secrets, model_user="root")
    with pytest.raises(ConfigError, match="model_user"):
        _config(tmp_path, secrets, model_user="nobody:")
    config = _config(tmp_path, secrets, model_user="nobody:nogroup")
    assert config.conveyor.model_user == "nobody:nogroup" and config.conveyor.isolate_model


def test_without_isolate_model_the_model_keeps_conveyors_user(tmp_path: Path) -> None:
    definition = tmp_path / "f.yaml"
    definition.write_text("name: f\n")
    assert model_user(load_config({}, "oscar", path=definition, secrets_dir=None)) is None


# --- item 9: an init reaps what the model leaves behind ------------------------------------------------

ORPHAN_SCRIPT = """#!/bin/sh
# An orphan: its parent exits at once. It goes to Conveyor (the model's parent, $PPID: it is the
# subreaper of its model's processes and reaps them when the record ends), not to PID 1; any other
# zombie in the namespace would be PID 1's (tini's) to reap.
sh -c 'sh -c "exit 0" & exit 0'
sleep 0.5
tr '\\0' ' ' < /proc/1/cmdline > "$TMP_OUTPUT_DIR/pid1.txt"
if tr '\\0' '\\n' < /proc/1/environ > "$TMP_OUTPUT_DIR/pid1-environ.txt" 2>/dev/null; then :; else
    echo DENIED > "$TMP_OUTPUT_DIR/pid1-environ.txt"; fi
for f in /proc/[0-9]*/status; do
    if grep -qs '^State:.*Z' "$f" && ! grep -qs "^PPid:[[:space:]]*$PPID\\$" "$f"; then echo "$f"; fi
done > "$TMP_OUTPUT_DIR/zombies.txt"
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"
"""


@needs_root
def test_as_pid_1_the_entrypoint_runs_under_tini_whose_environment_is_sealed_too(deploy, s3_server, s3_client,
                                                                                bucket) -> None:
    unshare, tini = shutil.which("unshare"), shutil.which("tini")
    if unshare is None or tini is None:
        pytest.skip("needs unshare (util-linux) and tini")
    d = deploy(ORPHAN_SCRIPT)
    s3_client.put_object(Bucket=bucket, Key="in/a.txt", Body=b"hello")
    encoded = base64.b64encode(yaml.safe_dump(d.definition).encode()).decode()
    entrypoint = str(Path(sys.executable).parent / "conveyor-entrypoint")
    proc = subprocess.run([unshare, "--pid", "--fork", "--mount-proc", entrypoint, "--platform", "oscar"],
                          input=json.dumps(minio_event(bucket, "in/a.txt")).encode(), capture_output=True,
                          env=d.env(FUNCTION_CONFIG=encoded), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert body(s3_client, bucket, "out/zombies.txt") == b""
    assert body(s3_client, bucket, "out/pid1.txt").decode().split()[:2] == [tini, "--"]
    pid1 = body(s3_client, bucket, "out/pid1-environ.txt").decode()
    assert "PATH=" in pid1 and "FUNCTION_CONFIG" not in pid1 and s3_server.secret_key not in pid1
