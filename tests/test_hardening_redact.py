"""Issue 14, items 7 and 9: secrets kept out of logs and `inspect`, endpoints, YAML aliases and
oversized environment values refused when the definition is loaded (exit 78)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.pipeline import body, keys, s3_event

BIN = Path(sys.executable).parent
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEHsessiontokenvalue/abc+xyz=="


def conveyor(*args: str, env: dict[str, str] | None = None, stdin: bytes = b"") -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONVEYOR_", "EVENT", "FUNCTION_CONFIG"))}
    return subprocess.run([str(BIN / "conveyor"), *args], input=stdin, capture_output=True,
                          env={**base, **(env or {})}, timeout=60)


def inspect(path: Path, **env: str) -> subprocess.CompletedProcess:
    return conveyor("inspect", "--config", str(path), "--platform", "oscar", env=env)


# --- item 7: LOG_LEVEL=DEBUG never shows a credential -------------------------------------------


@pytest.mark.parametrize("engine", ["sdk", "obstore"])
@pytest.mark.parametrize("credentials", ["definition", "environment"])
def test_debug_log_never_shows_the_session_token_or_the_secret_key(deploy, s3_server, s3_client, bucket,
                                                                   credentials: str, engine: str) -> None:
    """botocore's DEBUG lines carry X-Amz-Security-Token and the Authorization signature.

    definition: an s3 provider with keys in the definition (the record succeeds); environment: one
    without, so the store sends the environment's keys and session token (SeaweedFS refuses the
    made-up token: 77). AWS_SESSION_TOKEN and AWS_SECRET_ACCESS_KEY are in Conveyor's environment
    both times. Both engines: boto3's (sdk), and obstore's, which logs nothing of its own requests.
    """
    d = deploy()
    d.definition.setdefault("conveyor", {})["transfer_engine"] = engine
    provider: dict[str, object] = {"endpoint": s3_server.endpoint, "verify": False}
    if credentials == "definition":
        provider.update(access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    d.definition["storage_providers"]["s3"]["store"] = provider
    d.definition["input"] = [{"storage_provider": "s3.store", "path": f"{bucket}/in"}]
    d.definition["output"] = [{"storage_provider": "s3.store", "path": f"{bucket}/out"}]
    s3_client.put_object(Bucket=bucket, Key="in/a.txt", Body=b"hello")
    event = {"storage_provider": "s3.store", "event": json.dumps(s3_event(bucket, ["in/a.txt"]))}
    proc = d.run(
        event,
        LOG_LEVEL="DEBUG",
        AWS_ACCESS_KEY_ID=s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
        AWS_SESSION_TOKEN=SESSION_TOKEN,
    )
    stderr = proc.stderr.decode(errors="replace")
    assert SESSION_TOKEN not in stderr
    assert s3_server.secret_key not in stderr
    if engine == "sdk":
        assert "DEBUG" in stderr and "botocore" in stderr  # botocore did log
        assert "Signature=***" in stderr and "Signature=0" not in stderr
    if credentials == "definition":
        assert proc.returncode == 0, stderr[-3000:]
        assert keys(s3_client, bucket, "out/") and body(s3_client, bucket, "out/a.txt") == b"hello"
    else:
        assert proc.returncode == 77, stderr[-3000:]
        if engine == "sdk":
            assert "X-Amz-Security-Token': b'***'" in stderr


# --- item 7: inspect masks environment values by a broad rule --------------------------------------


def test_inspect_masks_secret_looking_environment_values(tmp_path: Path) -> None:
    config = tmp_path / "f.yaml"
    variables = {"DB_PASS": "pa55-word-1", "MY_KEY": "my-key-value", "SIGNING_KEY": "signing-value",
                 "DB_PWD": "pwd-value-123", "AUTH_HEADER": "Bearer abcdefgh", "MODEL_NAME": "yolo-visible"}
    config.write_text(yaml.safe_dump({"name": "f", "environment": {"variables": variables}}))
    proc = inspect(config)
    assert proc.returncode == 0, proc.stderr.decode()
    shown = json.loads(proc.stdout)["config"]["environment"]
    for name in ("DB_PASS", "MY_KEY", "SIGNING_KEY", "DB_PWD", "AUTH_HEADER"):
        assert shown[name] == "***", name
        assert variables[name] not in proc.stdout.decode()
    assert shown["MODEL_NAME"] == "yolo-visible"
    assert "DB_PASS" in conveyor("inspect", "--help").stdout.decode() or "pass" in conveyor(
        "inspect", "--help").stdout.decode()


# --- item 7: endpoints are checked when the definition is loaded ------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "words"),
    [
        ("http://user:hunter2-secret@127.0.0.1:9", "credentials"),
        ("ftp://127.0.0.1:9", "http or https"),
        ("http://127.0.0.1:9/some/path", "no path"),
    ],
)
@pytest.mark.parametrize("command", ["inspect", "run"])
@pytest.mark.parametrize("kind", ["s3", "minio"])
def test_bad_endpoint_is_a_config_error_naming_the_key(tmp_path: Path, endpoint: str, words: str,
                                                       command: str, kind: str) -> None:
    """Before: inspect showed the password; run failed every record (74) or exited 1 with a traceback."""
    config = tmp_path / "f.yaml"
    config.write_text(yaml.safe_dump({
        "name": "f",
        "storage_providers": {kind: {"store": {"endpoint": endpoint, "access_key": "AK", "secret_key": "SKSKSKSK"}}},
        "input": [{"storage_provider": f"{kind}.store", "path": "b/in"}],
    }))
    if command == "inspect":
        proc = inspect(config)
    else:
        event = json.dumps({"storage_provider": f"{kind}.store", "event": json.dumps(s3_event("b", ["in/x"]))}).encode()
        proc = conveyor("run", "--config", str(config), "--platform", "oscar", stdin=event,
                        env={"TMPDIR": str(tmp_path)})
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 78, out
    assert f"storage_providers.{kind}.store.endpoint" in out and words in out
    assert "hunter2-secret" not in out and "Traceback" not in out


# --- item 9: YAML aliases -----------------------------------------------------------------------------

LAUGHS = """\
name: f
handler_anchor_holder: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
conveyor:
  handler:
    name: script
    options: {bomb: [*g, *g, *g, *g, *g, *g, *g, *g, *g]}
"""


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "f.yaml"
    config.write_text(LAUGHS)
    proc = inspect(config)
    assert proc.returncode == 78, proc.stderr.decode()[:2000]
    err = proc.stderr.decode()
    assert "alias" in err and str(config) in err
    assert proc.stdout == b""


def test_example_definitions_use_no_anchors() -> None:
    """Real SCAR/OSCAR definitions need no anchors: refusing aliases breaks none of them."""
    for path in (Path(__file__).parent / "configs").glob("*.yaml"):
        events = list(yaml.parse(path.read_text())) if "broken" not in path.name else []
        assert not any(isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None) for e in events), path


# --- item 9: oversized environment values -------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "run"])
@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"SMALL": "x", "HUGE_VALUE": "v" * (128 * 1024)}, "environment.variables.HUGE_VALUE"),
        ({f"PART_{i}": "v" * (100 * 1024) for i in range(os.sysconf("SC_ARG_MAX") // (100 * 1024) + 1)},
         "environment.variables"),
    ],
)
def test_oversized_environment_is_a_config_error(tmp_path: Path, command: str, variables: dict[str, str],
                                                 named: str) -> None:
    config = tmp_path / "f.yaml"
    config.write_text(yaml.safe_dump({"name": "f", "environment": {"variables": variables},
                                      "script": "#!/bin/sh\necho hi > \"$TMP_OUTPUT_DIR/o.txt\"\n"}))
    if command == "inspect":
        proc = inspect(config)
    else:
        proc = conveyor("run", "--config", str(config), "--platform", "local", stdin=b'{"a": 1}',
                        env={"TMPDIR": str(tmp_path)})
    err = proc.stderr.decode()
    assert proc.returncode == 78, err[-2000:]
    assert named in err and "Argument" not in err
    assert len(err) < 2000  # the value is not echoed


def test_environment_just_under_the_limit_loads(tmp_path: Path) -> None:
    config = tmp_path / "f.yaml"
    value = "v" * (128 * 1024 - len("NAME=") - 1)
    config.write_text(yaml.safe_dump({"name": "f", "environment": {"variables": {"NAME": value}}}))
    assert inspect(config).returncode == 0



@pytest.fixture
def logging_restored():
    """setup_logging changes process-wide state (root handlers and level, the SDK loggers' and the
    job-output channels' levels): put it all back after the test."""
    import logging

    root = logging.getLogger()
    names = ("botocore", "boto3", "urllib3", "s3transfer", "conveyor.model", "conveyor.records")
    saved = (root.level, list(root.handlers), {name: logging.getLogger(name).level for name in names})
    yield
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_log_lines_are_masked_at_every_level(logging_restored) -> None:
    """The formatter of Conveyor's handler: header values and known secret values, tracebacks included."""
    import io
    import logging

    from conveyor.logs import setup_logging

    buffer = io.StringIO()
    setup_logging("DEBUG", stream=buffer, secrets=["configured-secret-key", "short"])
    log = logging.getLogger("botocore.endpoint")
    log.debug("headers={'X-Amz-Security-Token': b'%s', 'Authorization': b'AWS4-HMAC-SHA256 "
              "Credential=AK/x, SignedHeaders=host, Signature=0123abcdef'}", "tok-tok-tok")
    log.info("canonical: x-amz-security-token:tok-tok-tok\nhost:h")
    logging.getLogger("conveyor.storage").warning("Authorization: Basic dXNlcjpwYXNz; X-Auth-Token: od-token-1")
    try:
        raise RuntimeError("boom with configured-secret-key inside")
    except RuntimeError:
        logging.getLogger("conveyor").exception("failed")
    text = buffer.getvalue()
    for secret in ("tok-tok-tok", "0123abcdef", "dXNlcjpwYXNz", "od-token-1", "configured-secret-key"):
        assert secret not in text, secret
    assert "Signature=***" in text and "Basic ***" in text and "boom with *** inside" in text


def test_the_lambda_loop_keeps_the_redacting_log_handler(logging_restored) -> None:
    # awslambdaric adds a root handler of its own; the first invocation drops it and must leave ours,
    # credential masking included (Lambda always sets AWS_SESSION_TOKEN).
    import io
    import logging

    from conveyor.lambda_runtime import _single_log_handler
    from conveyor.logs import setup_logging

    stream = io.StringIO()
    setup_logging("DEBUG", stream=stream, secrets=["session-token-value-123"])
    logging.getLogger().addHandler(logging.StreamHandler(io.StringIO()))  # awslambdaric's
    _single_log_handler()
    logging.getLogger("botocore.endpoint").debug("X-Amz-Security-Token: session-token-value-123")
    text = stream.getvalue()
    assert "X-Amz-Security-Token" in text and "session-token-value-123" not in text


def test_a_later_debug_level_lets_the_sdk_loggers_speak_again(logging_restored) -> None:
    # `conveyor run` sets the level from LOG_LEVEL, then from the definition: INFO, then DEBUG must
    # show botocore's DEBUG lines (masked), not keep them quieted by the first call.
    import io
    import logging

    from conveyor.logs import setup_logging

    buffer = io.StringIO()
    setup_logging("INFO", stream=io.StringIO())
    setup_logging("DEBUG", stream=buffer)
    logging.getLogger("botocore.endpoint").debug("Making request for OperationModel(name=GetObject)")
    assert "Making request for OperationModel(name=GetObject)" in buffer.getvalue()
