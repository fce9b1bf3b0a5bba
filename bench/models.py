"""Figure 3: a real model per file, kept warm in-process vs started per file by its own CLI.

DEEPaaS, with the demo plugin the tests ship (tests/plugins/conveyor-demo-model, installed in the
venv), on a 160 KiB JPEG:
    warm              conveyor.handlers.deepaas in warm mode: the model loaded once, handle() per file
    deepaas-cli       `deepaas-cli --deepaas_method_output OUT predict --image FILE`, a process per file
    deepaas-predict   `deepaas-predict -i FILE -o DIR/ -ct application/json --model-name conveyor-demo`
Darknet, YOLOv3-tiny on Darknet's dog.jpg:
    opencv            conveyor.handlers.darknet with the opencv backend: the network loaded once, handle() per image
    darknet cli       `darknet detect yolov3-tiny.cfg yolov3-tiny.weights dog.jpg -out PREFIX`, a
                      process per image (the command line SCAR's Darknet example runs)

The warm peers run in a long-lived worker (bench.warm_worker) and are timed around handle(),
which includes the private copy of the input and writing the outputs; the CLIs are timed from
fork to exit. The figure is seconds per file; the ratio is CLI / warm (target >= 15; Darknet's
>= 20, issue 16, in its result's `target_speedup`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.measure import Samples, interleave, ratio, run_process
from bench.server import Bench
from bench.warm_worker import WarmWorker

VENV_BIN = Path(sys.executable).parent
DEMO_MODEL = "conveyor-demo"
DARKNET_SHARE = Path("/usr/share/darknet")
DOG = DARKNET_SHARE / "data" / "dog.jpg"
CFG = DARKNET_SHARE / "cfg" / "yolov3-tiny.cfg"
TARGET_SPEEDUP = 15.0
DARKNET_TARGET_SPEEDUP = 20.0
WARMUP = 1


def _deepaas_missing() -> str | None:
    try:
        from importlib.metadata import entry_points

        import deepaas  # noqa: F401
    except ImportError:
        return "deepaas is not installed in this venv (make install adds the deepaas extra)"
    if DEMO_MODEL not in {ep.name for ep in entry_points(group="deepaas.v2.model")}:
        return f"the {DEMO_MODEL} plugin is not installed (make install adds tests/plugins/conveyor-demo-model)"
    for tool in ("deepaas-cli", "deepaas-predict"):
        if not (VENV_BIN / tool).exists():
            return f"{tool} is not in {VENV_BIN}"
    return None


def _darknet_missing() -> tuple[str | None, Path | None]:
    from conveyor.handlers.darknet.weights import WEIGHTS_NAME, WeightsError, default_weights_dir, verify_weights

    if shutil.which("darknet") is None or not CFG.is_file() or not DOG.is_file():
        return "the darknet package is not installed (apt-get install darknet; .ci/run does)", None
    weights = default_weights_dir(os.environ) / WEIGHTS_NAME
    try:
        verify_weights(weights)
    except WeightsError as exc:
        return f"no YOLOv3-tiny weights ({exc.message}); fetch them with `make weights`", None
    try:
        import cv2

        if not hasattr(cv2.dnn, "readNetFromDarknet"):
            return "this OpenCV has no darknet importer (opencv-python-headless < 5 needed)", None
    except ImportError:
        return "opencv-python-headless is not installed (the darknet extra)", None
    return None, weights


def _compare(
    name: str,
    worker_spec: dict[str, Any],
    clis: dict[str, tuple[list[str], dict[str, str]]],
    check: dict[str, Any],
    bench: Bench,
    rounds: int,
    log,
) -> dict[str, Any]:
    """Interleave the warm handler with each CLI, `rounds` times; seconds per file."""
    work = bench.dir(f"models/{name}")
    samples = {"warm": Samples("s"), **{cli: Samples("s") for cli in clis}}
    env = bench.child_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    with WarmWorker(worker_spec, env=env, log_path=work / "worker.log") as worker:

        def one(peer: str) -> float:
            if peer == "warm":
                return worker.ask()["wall"]
            argv, extra_env = clis[peer]
            check[peer]["before"]()
            run = run_process(argv, env={**env, **extra_env}, cwd=str(work), timeout=300)
            if not run.ok:
                raise RuntimeError(f"{name} {peer}: {run.describe_failure()}")
            check[peer]["after"]()
            return run.wall

        for peer in samples:
            for _ in range(WARMUP):
                one(peer)
        for r, peer in interleave(list(samples), rounds):
            seconds = one(peer)
            samples[peer].add(seconds)
            log(f"  {name:<8} round {r + 1}/{rounds}  {peer:<16} {seconds * 1000:8.1f} ms")
    out: dict[str, Any] = {"per_file": {p: s.summary() for p, s in samples.items()}, "speedup": {}}
    for cli in clis:
        out["speedup"][f"{cli}/warm"] = ratio(samples[cli].median, samples["warm"].median)
    return out


def _expect_file(path: Path) -> dict[str, Any]:
    def before() -> None:
        path.unlink(missing_ok=True)

    def after() -> None:
        if not path.is_file() or path.stat().st_size == 0:
            raise RuntimeError(f"expected output {path} was not written")

    return {"before": before, "after": after}


def _expect_in_dir(folder: Path) -> dict[str, Any]:
    def before() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    def after() -> None:
        if not any(folder.iterdir()):
            raise RuntimeError(f"no output in {folder}")

    return {"before": before, "after": after}


def measure_deepaas(bench: Bench, rounds: int, log=print) -> dict[str, Any]:
    missing = _deepaas_missing()
    if missing:
        return {"skipped": missing}
    work = bench.dir("models/deepaas")
    sample = work / "dog.jpg"
    if DOG.is_file():
        shutil.copyfile(DOG, sample)
    else:  # any file will do: the demo model fingerprints it
        sample.write_bytes(os.urandom(160 * 1024))
    out_json = work / "cli-out.json"
    predict_dir = work / "predict-out"
    spec = {
        "mode": "handler",
        "handler": "deepaas",
        "options": {"mode": "warm", "model": DEMO_MODEL},
        "input": str(sample),
        "scratch": str(bench.dir("models/deepaas/scratch")),
    }
    clis = {
        "deepaas-cli": (
            [str(VENV_BIN / "deepaas-cli"), "--deepaas_method_output", str(out_json),
             "predict", "--image", str(sample)],
            {"DEEPAAS_V2_MODEL": DEMO_MODEL},
        ),
        "deepaas-predict": (
            [str(VENV_BIN / "deepaas-predict"), "-i", str(sample), "-o", f"{predict_dir}/",
             "-ct", "application/json", "--model-name", DEMO_MODEL],
            {},
        ),
    }
    check = {"deepaas-cli": _expect_file(out_json), "deepaas-predict": _expect_in_dir(predict_dir)}
    result = _compare("deepaas", spec, clis, check, bench, rounds, log)
    result.update(model=DEMO_MODEL, input_bytes=sample.stat().st_size)
    return result


def measure_darknet(bench: Bench, rounds: int, log=print) -> dict[str, Any]:
    missing, weights = _darknet_missing()
    if missing:
        return {"skipped": missing}
    assert weights is not None
    work = bench.dir("models/darknet")
    prefix = work / "cli-pred"
    spec = {
        "mode": "handler",
        "handler": "darknet",
        "options": {"backend": "opencv", "weights": str(weights)},
        "input": str(DOG),
        "scratch": str(bench.dir("models/darknet/scratch")),
    }
    clis = {"darknet cli": (["darknet", "detect", str(CFG), str(weights), str(DOG), "-out", str(prefix)], {})}
    check = {"darknet cli": _expect_file(prefix.with_suffix(".jpg"))}
    result = _compare("darknet", spec, clis, check, bench, rounds, log)
    result.update(model="yolov3-tiny", input=str(DOG), target_speedup=DARKNET_TARGET_SPEEDUP)
    return result
