"""What the two child-process modes (cli, predict) share: their executables, which one auto mode
picks, the child's environment, and the private copy of the input every mode hands the model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from conveyor.errors import ConfigError
from conveyor.handler import Invocation
from conveyor.handlers.deepaas.selection import KEY

CLI = "deepaas-cli"
PREDICT = "deepaas-predict"


def pick_child_mode(env: Mapping[str, str]) -> str:
    """auto mode, when the model does not run in this process: cli when deepaas-cli is on PATH, else predict."""
    path = env.get("PATH", os.defpath)
    if shutil.which(CLI, path=path):
        return "cli"
    if shutil.which(PREDICT, path=path):
        return "predict"
    raise ConfigError(
        f"mode auto: deepaas does not run in this process, and neither {CLI} nor {PREDICT} is on PATH "
        f"({path})", key=f"{KEY}.mode",
    )


def child_env(inv: Invocation, model_name: str | None, tmp: Path) -> dict[str, str]:
    """The record's environment, the model selected by DEEPAAS_V2_MODEL, TMPDIR inside the work dir."""
    env = dict(inv.env)
    if model_name:
        env["DEEPAAS_V2_MODEL"] = model_name
    tmp.mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp)
    return env


def private_copy(src: Path, folder: Path) -> Path:
    """A copy of the input, same file name, that the model may delete or change."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / src.name
    shutil.copyfile(src, target)
    return target
