"""Running an example model (images/<name>/) through the real pipeline: in the model's own venv, or
in its container image.

    run = model_run("classify", mode="cli")
    result = run({"dog.jpg": path, "eagle.jpg": data})   # one event, one record per file

Each run is `conveyor run --config CFG --platform oscar --event EVENT` as OSCAR starts it: CFG is
images/<name>/function_config.yaml with its storage swapped for a `local` provider (a folder standing
for the buckets) and, when asked, another handler mode; EVENT is the delegated MinIO event OSCAR
sends (`storage_provider: local.default`). The run never has a network:

- venv: `<repo>/.venv-models/<name>/bin/conveyor`, made by images/<name>/install.sh (`make models`),
  under `unshare -n` when the kernel allows it (root), the proxy variables dropped either way;
- image: `conveyor/<name>` (built by images/tools/build.py, the `images` fixture), its own
  `conveyor` in a container with `--network none`, the run's folder mounted, the host's uid.

CONVEYOR_MODEL_RUNNER picks one (venv | image); by default the venv when it is installed, else the
image when a Docker engine answers, else the test is skipped and says why. Per-file predict times
(from the result records) are printed at the end of the session: informational, nothing asserts on
them.
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

from tests.support.images import EXAMPLES
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


def venv_installed(name: str) -> Path | None:
    venv = VENVS / name
    ready = (venv / "bin" / "conveyor").is_file() and (venv / ".conveyor-installed").is_file()
    return venv if ready else None


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


class VenvRunner:
    """`conveyor run` from the example's venv, without a network when the kernel allows it."""

    kind = "venv"

    def __init__(self, venv: Path) -> None:
        self.venv = venv

    def path(self, root: Path) -> Path:
        return root  # the run sees the host's paths

    def __call__(self, root: Path, scratch: Path, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        argv = [str(self.venv / "bin" / "conveyor"), *args]
        if OFFLINE:
            argv = ["unshare", "-n", *argv]
        return subprocess.run(argv, capture_output=True, env=_env(self.venv, scratch), cwd=root, timeout=600)


class ImageRunner:
    """`conveyor run` in the example's image: no network, the run's folder mounted at /run-dir."""

    kind = "image"
    MOUNT = Path("/run-dir")

    def __init__(self, client: Any, image: str) -> None:
        self.client, self.image = client, image

    def path(self, root: Path) -> Path:
        return self.MOUNT

    def __call__(self, root: Path, scratch: Path, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        inside = self.MOUNT / scratch.relative_to(root)
        container = self.client.containers.run(
            self.image, args, entrypoint=["conveyor"], detach=True, network_mode="none",
            user=f"{os.getuid()}:{os.getgid()}",  # the outputs stay the host user's files
            environment={"TMPDIR": str(inside), "HOME": str(inside)},
            volumes={str(root): {"bind": str(self.MOUNT), "mode": "rw"}}, working_dir=str(self.MOUNT),
        )
        try:
            code = container.wait(timeout=600)["StatusCode"]
            out = container.logs(stdout=True, stderr=False)
            err = container.logs(stdout=False, stderr=True)
        finally:
            container.remove(force=True)
        return subprocess.CompletedProcess(["docker", "run", self.image, *args], code, out, err)


def runner_for(name: str, request: pytest.FixtureRequest) -> VenvRunner | ImageRunner:
    wanted = os.environ.get("CONVEYOR_MODEL_RUNNER", "")
    if wanted not in ("", "venv", "image"):
        raise pytest.UsageError(f"CONVEYOR_MODEL_RUNNER={wanted!r}: use venv or image")
    venv = venv_installed(name)
    if wanted == "venv" or (not wanted and venv is not None):
        if venv is None:
            pytest.skip(f"the {name} example's venv is absent: run images/{name}/install.sh (or `make models`)")
        return VenvRunner(venv)
    client = request.getfixturevalue("client")  # skips, saying why, without an engine
    request.getfixturevalue("images")  # built from the working tree (cached)
    return ImageRunner(client, EXAMPLES[name])


@pytest.fixture
def model_run(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Callable[..., ModelResult]]:
    def prepare(name: str, *, mode: str = "warm", args: Mapping[str, Any] | None = None) -> Callable[..., ModelResult]:
        runner = runner_for(name, request)
        definition = yaml.safe_load((REPO / "images" / name / "function_config.yaml").read_text())
        handler = definition["conveyor"]["handler"]
        assert handler["name"] == "deepaas"
        handler["mode"] = mode
        handler.setdefault("args", {}).update(args or {})
        root = tmp_path / f"{name}-{mode}"
        store, scratch = root / "buckets", root / "scratch"
        for folder in (store / BUCKET / "in", store / BUCKET / "out", scratch):
            folder.mkdir(parents=True)
        seen = runner.path(root)  # the run's folder as the run sees it
        definition["storage_providers"] = {"local": {"default": {"root": str(seen / "buckets")}}}
        definition["input"] = [{"storage_provider": "local.default", "path": f"{BUCKET}/in"}]
        definition["output"] = [dict(spec, storage_provider="local.default", path=f"{BUCKET}/out")
                                for spec in definition["output"]]
        (root / "function_config.yaml").write_text(yaml.safe_dump(definition))

        def run(inputs: Mapping[str, Path | bytes]) -> ModelResult:
            notices = []
            for file_name, source in inputs.items():
                data = source if isinstance(source, bytes) else Path(source).read_bytes()
                (store / BUCKET / "in" / file_name).write_bytes(data)
                notices.append(minio_event(BUCKET, f"in/{file_name}", size=len(data)))
            event = dict(notices[0], Records=[r for notice in notices for r in notice["Records"]])
            (root / "event.json").write_text(json.dumps({"storage_provider": "local.default", "event": event}))
            args = ["run", "--config", str(seen / "function_config.yaml"), "--platform", "oscar",
                    "--event", str(seen / "event.json")]
            proc = runner(root, scratch, args)
            log = proc.stderr.decode(errors="replace")
            found = records(proc.stderr)
            for record in found:
                details = (record.get("extra") or {}).get("deepaas") or {}
                if "predict_seconds" in details:
                    file_name = record["input"]["key"].rsplit("/", 1)[-1]
                    TIMINGS.append((name, f"{details['mode']} ({runner.kind})", file_name, details["predict_seconds"]))
            return ModelResult(proc, found, store / BUCKET / "out", log)

        return run

    return prepare


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("example models: predict seconds per file (informational)")
    for model, mode, file_name, seconds in TIMINGS:
        terminalreporter.write_line(f"{model:9} {mode:13} {file_name:28} {seconds:8.3f} s")
    terminalreporter.write_line("warm: the model was loaded once before the first file (not counted); cli: every "
                                "file pays deepaas-cli's imports and the model load. venv: no network when the "
                                f"kernel lets unshare -n ({OFFLINE}); image: --network none.")
