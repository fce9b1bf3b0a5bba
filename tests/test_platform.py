"""Platform detection (contract section 1): a table of literal environments and filesystems."""

from __future__ import annotations

import pytest

from conveyor.errors import ConfigError
from conveyor.platform import OSCAR_CONFIG_PATH, Platform, detect_platform

LAMBDA_ENV = {
    "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001",
    "AWS_LAMBDA_FUNCTION_NAME": "scar-darknet",
    "AWS_EXECUTION_ENV": "AWS_Lambda_Image",
    "LAMBDA_TASK_ROOT": "/var/task",
}
# What SCAR's Batch job definition sets, plus what AWS Batch adds
BATCH_ENV = {
    "AWS_BATCH_JOB_ID": "3c7e9a52-1b7f-4b1e-9a53-2d2f6f0f9a11",
    "AWS_BATCH_JOB_ATTEMPT": "1",
    "AWS_BATCH_JQ_NAME": "scar-darknet",
    "AWS_BATCH_CE_NAME": "scar-darknet",
    "AWS_LAMBDA_FUNCTION_NAME": "scar-darknet",
    "FUNCTION_CONFIG": "bmFtZTogc2Nhci1kYXJrbmV0Cg==",
    "SCRIPT": "",
}

CASES = [
    # (description, environment, files that exist, expected)
    ("nothing at all", {}, set(), Platform.LOCAL),
    ("a developer shell", {"HOME": "/home/me", "PATH": "/usr/bin"}, set(), Platform.LOCAL),
    ("AWS_LAMBDA_FUNCTION_NAME alone is not Lambda", {"AWS_LAMBDA_FUNCTION_NAME": "f"}, set(), Platform.LOCAL),
    ("Lambda runtime API", LAMBDA_ENV, set(), Platform.LAMBDA),
    ("Lambda runtime API only", {"AWS_LAMBDA_RUNTIME_API": "localhost:8080"}, set(), Platform.LAMBDA),
    ("Batch job with SCAR's AWS_LAMBDA_FUNCTION_NAME", BATCH_ENV, set(), Platform.BATCH),
    ("Batch job id only", {"AWS_BATCH_JOB_ID": "j-1"}, set(), Platform.BATCH),
    ("OSCAR config file mounted", {}, {OSCAR_CONFIG_PATH}, Platform.OSCAR),
    ("OSCAR async job", {"JOB_UUID": "3f2a", "EVENT": "{}"}, set(), Platform.OSCAR),
    ("OSCAR service name", {"OSCAR_SERVICE_NAME": "plants"}, set(), Platform.OSCAR),
    (
        "OSCAR sync, config file plus fprocess",
        {"fprocess": "/oscar/bin/supervisor"},
        {OSCAR_CONFIG_PATH},
        Platform.OSCAR,
    ),
    (
        "empty signal variables are not signals",
        {"AWS_LAMBDA_RUNTIME_API": "", "AWS_BATCH_JOB_ID": ""},
        set(),
        Platform.LOCAL,
    ),
    ("a Lambda config file is not OSCAR", {}, {"/var/task/function_config.yaml"}, Platform.LOCAL),
    ("Lambda wins over a stray OSCAR file", LAMBDA_ENV, {OSCAR_CONFIG_PATH}, Platform.LAMBDA),
    ("Batch wins over OSCAR variables", {**BATCH_ENV, "JOB_UUID": "x"}, set(), Platform.BATCH),
    ("CONVEYOR_PLATFORM wins", {**LAMBDA_ENV, "CONVEYOR_PLATFORM": "local"}, set(), Platform.LOCAL),
    ("CONVEYOR_PLATFORM is case-insensitive", {"CONVEYOR_PLATFORM": " OSCAR "}, set(), Platform.OSCAR),
    ("CONVEYOR_PLATFORM batch with nothing else", {"CONVEYOR_PLATFORM": "batch"}, set(), Platform.BATCH),
]


@pytest.mark.parametrize(("environ", "files", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_detect_platform(environ: dict[str, str], files: set[str], expected: Platform) -> None:
    assert detect_platform(environ, exists=files.__contains__) is expected


@pytest.mark.parametrize("override", ["lambda", "batch", "oscar", "local", "LAMBDA"])
def test_explicit_override_wins_over_everything(override: str) -> None:
    environ = {**BATCH_ENV, **LAMBDA_ENV, "CONVEYOR_PLATFORM": "oscar"}
    assert detect_platform(environ, exists=lambda _: True, override=override) is Platform(override.lower())


@pytest.mark.parametrize(
    ("override", "environ"),
    [("kubernetes", {}), (None, {"CONVEYOR_PLATFORM": "gcp"}), ("lambda-batch", LAMBDA_ENV)],
)
def test_bad_override_is_a_config_error(override: str | None, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as err:
        detect_platform(environ, exists=lambda _: False, override=override)
    assert err.value.exit_code == 78
    assert err.value.context["key"] == "platform"
    for choice in ("lambda", "batch", "oscar", "local"):
        assert choice in str(err.value)


def test_detection_touches_only_the_given_filesystem() -> None:
    asked: list[str] = []

    def exists(path: str) -> bool:
        asked.append(path)
        return False

    assert detect_platform({}, exists=exists) is Platform.LOCAL
    assert asked == [OSCAR_CONFIG_PATH]


def test_platform_values_and_str() -> None:
    assert [str(p) for p in Platform] == ["lambda", "batch", "oscar", "local"]
    assert Platform("oscar") is Platform.OSCAR
