"""Which platform we run on: one pure function of the environment and the filesystem."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping

from conveyor.errors import ConfigError

OSCAR_CONFIG_PATH = "/oscar/config/function_config.yaml"


class Platform(enum.StrEnum):
    LAMBDA = "lambda"
    BATCH = "batch"
    OSCAR = "oscar"
    LOCAL = "local"


def detect_platform(
    environ: Mapping[str, str],
    exists: Callable[[str], bool] = os.path.exists,
    override: str | None = None,
) -> Platform:
    """Return the platform, honouring an explicit override (flag or CONVEYOR_PLATFORM).

    AWS_LAMBDA_FUNCTION_NAME is deliberately not a signal: SCAR sets it inside Batch jobs too.
    """
    explicit = override or environ.get("CONVEYOR_PLATFORM")
    if explicit:
        try:
            return Platform(explicit.strip().lower())
        except ValueError:
            choices = ", ".join(p.value for p in Platform)
            raise ConfigError(f"unknown platform {explicit!r} (choose from {choices})", key="platform") from None
    if environ.get("AWS_LAMBDA_RUNTIME_API"):
        return Platform.LAMBDA
    if environ.get("AWS_BATCH_JOB_ID"):
        return Platform.BATCH
    if exists(OSCAR_CONFIG_PATH) or environ.get("JOB_UUID") or environ.get("OSCAR_SERVICE_NAME"):
        return Platform.OSCAR
    return Platform.LOCAL
