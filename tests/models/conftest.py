"""Running an example model (images/<name>/) through the real pipeline, in the model's own venv.

    run = model_run("classify", mode="cli")
    result = run(["dog.jpg", "eagle.jpg"], {"dog.jpg": path, ...})   # one event, one record per file

Each run is `<repo>/.venv-models/<name>/bin/conveyor run --config CFG --platform oscar --event EVENT`
as OSCAR starts it: CFG is images/<name>/function_config.yaml with its storage swapped for a `local`
provider (a folder standing for the buckets) and, when asked, another handler mode; EVENT is the
delegated MinIO event OSCAR sends (`storage_provider: local.default`). When the kernel allows it
(root), the run has no network at all (`unshare -n`): a model that tried to fetch weights would
fail. The proxy variables are dropped from its environment either way.

The venvs are made by images/<name>/install.sh (`make models`); a test whose venv is absent is
skipped and says so. Per-file predict times (from the result records) are printed at the end of
the session: informational, nothing asserts on them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.pipeline import minio_event, records

REPO = Path(__file__).resolve().parents[2]
VENVS = REPO / ".venv-models"
BUCKET = "models"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
TIMINGS: list[tuple[str, str, str, float]] = []  # (model, mode, file, predict seconds)


def _can_unshare_network() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


OFFLINE = _can_unshare_network()


@dataclass
class ModelResult:
    proc: subprocess.CompletedProcess[bytes]
    records: list[dict[str, Any]]  # one per input, in event order
    out: Path  # the output folder (bucket "models", prefix "out/")
    log: str = field(repr=False, default="")

    def by_file(self) -> dict[str, dict[str, Any]]:
        return {r["input"]["key"].rsplit("/", 1)[-1]: r for r in self.records}

    def explain(self) -> str:
        return f"exit {self.proc.returncode}\n{self.log[-6000:]}"


def venv_for(name: str) -> Path:
    venv = VENVS / name
    if not (venv / "bin" / "conveyor").is_file() or not (venv / ".conveyor-installed").is_file():
        pytest.skip(f"the {name} example's venv is absent: run images/{name}/install.sh (or `make models`)")
    return venv


def _env(venv: Path, scratch: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("AWS_", "CONVEYOR_", "DEEPAAS_")) and k.lower() not in PROXY_VARS
        and k not in ("EVENT", "FUNCTION_CONFIG", "FDL", "SCRIPT", "VIRTUAL_ENV", "PYTHONPATH")
    }
    # As in the model's image: its own tools (deepaas-cli) come first on PATH.
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", os.defpath)])
    env.update(TMPDIR=str(scratch), PYTHONUNBUFFERED="1", MPLCONFIGDIR=str(scratch / "matplotlib"))
    return env


@pytest.fixture
def model_run(tmp_path: Path) -> Callable[..., Callable[..., ModelResult]]:
    def prepare(name: str, *, mode: str = "warm", args: Mapping[str, Any] | None = None) -> Callable[..., ModelResult]:
        venv = venv_for(name)
        definition = yaml.safe_load((REPO / "images" / name / "function_config.yaml").read_text())
        handler = definition["conveyor"]["handler"]
        assert handler["name"] == "deepaas"
        handler["mode"] = mode
        handler.setdefault("args", {}).update(args or {})
        root = tmp_path / f"{name}-{mode}"
        store, scratch = root / "buckets", root / "scratch"
        for folder in (store / BUCKET / "in", store / BUCKET / "out", scratch):
            folder.mkdir(parents=True)
        definition["storage_providers"] = {"local": {"default": {"root": str(store)}}}
        definition["input"] = [{"storage_provider": "local.default", "path": f"{BUCKET}/in"}]
        definition["output"] = [dict(spec, storage_provider="local.default", path=f"{BUCKET}/out")
                                for spec in definition["output"]]
        config = root / "function_config.yaml"
        config.write_text(yaml.safe_dump(definition))

        def run(inputs: Mapping[str, Path | bytes]) -> ModelResult:
            notices = []
            for file_name, source in inputs.items():
                data = source if isinstance(source, bytes) else Path(source).read_bytes()
                (store / BUCKET / "in" / file_name).write_bytes(data)
                notices.append(minio_event(BUCKET, f"in/{file_name}", size=len(data)))
            event = dict(notices[0], Records=[r for notice in notices for r in notice["Records"]])
            event_file = root / "event.json"
            event_file.write_text(json.dumps({"storage_provider": "local.default", "event": event}))
            argv = [str(venv / "bin" / "conveyor"), "run", "--config", str(config), "--platform", "oscar",
                    "--event", str(event_file)]
            if OFFLINE:
                argv = ["unshare", "-n", *argv]
            proc = subprocess.run(argv, capture_output=True, env=_env(venv, scratch), cwd=root, timeout=600)
            log = proc.stderr.decode(errors="replace")
            found = records(proc.stderr)
            for record in found:
                details = (record.get("extra") or {}).get("deepaas") or {}
                if "predict_seconds" in details:
                    TIMINGS.append((name, details["mode"], record["input"]["key"].rsplit("/", 1)[-1],
                                    details["predict_seconds"]))
            return ModelResult(proc, found, store / BUCKET / "out", log)

        return run

    return prepare


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("example models: predict seconds per file (informational)")
    for model, mode, file_name, seconds in TIMINGS:
        terminalreporter.write_line(f"{model:9} {mode:5} {file_name:28} {seconds:8.3f} s")
    terminalreporter.write_line("warm: the model was loaded once before the first file (not counted); cli: every "
                                f"file pays deepaas-cli's imports and the model load. No network: {OFFLINE}")
