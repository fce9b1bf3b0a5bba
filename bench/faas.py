"""The predecessor, grycap's faas-supervisor 1.5.8, in a virtual environment of its own.

    python = ensure_faas_venv()          # created on first use: <repo>/.venv-faas
    argv = [python, "-m", "faassupervisor.supervisor"]

Why its own venv and this recipe: the 1.5.8 wheel declares `Requires-Dist: webdavclient3
(==3.14.6requests)` (two requirements run together), which is not a valid requirement. pip
24.1 and later refuse the whole wheel because of it ("Ignoring version 1.5.8 ... since it has
invalid metadata"), even with --no-deps, so the venv keeps a pip older than 24.1; the
requirements are then installed by hand: webdavclient3==3.14.6, requests, boto3, pyyaml and
setuptools (1.5.8 still imports distutils, which Python 3.11 has).

Binary mode, as OSCAR runs it (read from faassupervisor/supervisor.py and faas/binary/supervisor.py):
- the event is read whole from stdin; the definition from FUNCTION_CONFIG (base64 YAML) unless
  /oscar/config/function_config.yaml exists; the script from SCRIPT (base64) unless
  /oscar/config/script.sh exists, written to $TMP_INPUT_DIR/script.sh and run as `/bin/sh script`;
- AWS_EXECUTION_ENV must not start with AWS_Lambda_ (else it takes itself for Lambda);
- a MinIO provider needs `storage_providers.minio.<id>.{access_key, secret_key}` (non-empty, else
  StorageAuthError) and `endpoint` (default http://minio-service.minio:9000); `verify` (default
  true) and `region` (default None) are optional and handed to boto3.client as they are. Nothing
  else: no AWS_* variable, no ~/.aws file;
- a plain `minio:s3` record uses the `default` MinIO provider. A delegated event names the
  provider by its bare id only: `{"storage_provider": "minio.default", ...}` (what current OSCAR
  sends) matches no provider, and 1.5.8 then falls back to its Local provider, i.e. treats the
  event itself as the input file. So the benchmark sends the plain MinIO record;
- it reads the script's output to EOF but never waits for the script, nor checks its exit code.
  (Its rusage therefore misses the script's own few milliseconds of CPU: noted in the README.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VERSION = "1.5.8"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO / ".venv-faas"
REQUIREMENTS = ("webdavclient3==3.14.6", "requests", "boto3", "pyyaml", "setuptools")
OLD_PIP = "pip<24.1"  # newer pips reject the wheel's broken Requires-Dist even with --no-deps


class FaasUnavailable(RuntimeError):
    """faas-supervisor could not be installed; the message says exactly why."""


def venv_python(venv: Path = DEFAULT_VENV) -> Path:
    return venv / "bin" / "python"


def installed_version(venv: Path = DEFAULT_VENV) -> str | None:
    python = venv_python(venv)
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, faassupervisor.supervisor; "
         "print(m.version('faas-supervisor'))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_faas_venv(venv: Path = DEFAULT_VENV, log=print) -> Path:
    """The venv's python with faas-supervisor 1.5.8 importable; built on first use (about a minute)."""
    if installed_version(venv) == VERSION:
        return venv_python(venv)
    log(f"bench: installing faas-supervisor {VERSION} into {venv} (first use)")
    python = venv_python(venv)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", OLD_PIP],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         f"faas-supervisor=={VERSION}"],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as exc:
            raise FaasUnavailable(f"`{' '.join(step)}` did not finish in {exc.timeout:.0f} s") from exc
        if done.returncode != 0:
            # pip's resolver complains that webdavclient3 3.14.6 is not "3.14.6requests": harmless.
            raise FaasUnavailable(f"`{' '.join(step)}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    version = installed_version(venv)
    if version != VERSION:
        raise FaasUnavailable(f"faas-supervisor does not import from {venv} after installing it (found {version})")
    return python


def command(python: Path) -> list[str]:
    """Binary mode: `python -m faassupervisor.supervisor` (its __main__ block reads stdin)."""
    return [str(python), "-m", "faassupervisor.supervisor"]


def env_for(base: dict[str, str], function_config_b64: str, script_b64: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k != "AWS_EXECUTION_ENV"}
    env.update(FUNCTION_CONFIG=function_config_b64, SCRIPT=script_b64)
    return env


if __name__ == "__main__":  # python -m bench.faas: build (or check) the venv and say where it is
    print(ensure_faas_venv(Path(os.environ.get("FAAS_VENV", DEFAULT_VENV))))
