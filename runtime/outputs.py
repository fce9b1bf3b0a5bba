"""Which output files go where (contract section 5), and the input file's safe local name.

Outputs are read once, from descriptors: `OutputFolder.open` opens the output folder itself with
O_DIRECTORY | O_NOFOLLOW (relative to the work directory's descriptor, held since before the model
ran), `files()` walks it by descriptor (os.fwalk: no symbolic link followed, none listed), and
`open_file()` opens a file once, component by component with O_NOFOLLOW and the last with
O_NONBLOCK, keeping it only when fstat says it is a regular file (else None, with a warning).
conveyor.process opens each output just before its uploads and uploads from that descriptor: a
leftover process of the model that swaps a file for a symbolic link (to a secret) or a FIFO after
collection gets it skipped, or, once it is open, changes nothing that is published; nothing blocks
in open(). An output folder replaced by a symbolic link (to a folder of secrets, to /proc/self)
publishes nothing. Limits: a regular file's content can still change until it is read (a process
that writes into it: conveyor.child kills the model's processes before collection), and a hard link
the model made to a file it can read is a regular file like any other.
"""

from __future__ import annotations

import logging
import os
import stat
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from conveyor.config import FunctionConfig, IOSpec, ProviderRef
from conveyor.errors import StorageError

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 255
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Upload:
    src: Path
    rel: str  # path relative to the output dir, '/'-separated
    provider: ProviderRef
    bucket: str
    key: str

    @property
    def target(self) -> str:
        return f"{self.bucket}/{self.key}"


def safe_file_name(key: str, fallback: str = "input") -> str:
    """A local file name for an object key: its last segment, original extension kept.

    Whatever the key holds ('../', absolute paths, backslashes, control characters, 2 KB
    names), the result is one plain path component of at most 255 bytes, never '.' or '..'.
    """
    name = key.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch != "\x00" and unicodedata.category(ch) != "Cc")
    if not name.strip() or name in (".", ".."):
        name = fallback
    if len(name.encode()) > MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        ext = f".{ext}" if dot and 0 < len(ext.encode()) <= 16 else ""
        stem = name if not ext else stem
        budget = MAX_NAME_BYTES - len(ext.encode())
        stem = stem.encode()[:budget].decode(errors="ignore")
        name = stem + ext
    return name


def collect_outputs(output_dir: Path) -> list[str]:
    """Every regular file under output_dir, recursively, as sorted '/'-separated relative paths.

    Symbolic links are skipped: a model must not be able to publish files outside its own
    output folder (a link to /etc/passwd, say).
    """
    folder = OutputFolder.open(output_dir)
    if folder is None:
        return []
    with folder:
        return folder.files()


class OutputFolder:
    """The model's output folder, held by a descriptor from collection to upload (see the module)."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path  # for messages only

    @classmethod
    def open(cls, path: Path, parent_fd: int | None = None) -> OutputFolder | None:
        """Open `path` (its last component relative to `parent_fd` when given) as a directory that
        is not a symbolic link; None, with a warning, when it is not one any more."""
        try:
            fd = os.open(path.name if parent_fd is not None else path, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            log.warning("the output folder %s is not a directory any more (%s): nothing is published from it",
                        path, os.strerror(exc.errno or 0))
            return None
        return cls(fd, path)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def files(self) -> list[str]:
        """Every regular file, recursively, as sorted '/'-separated relative paths (links skipped)."""
        found: list[str] = []
        for root, _dirs, names, root_fd in os.fwalk(".", dir_fd=self.fd, follow_symlinks=False):
            for name in names:
                try:
                    info = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(PurePosixPath(root, name).as_posix())
        return sorted(found)

    def open_file(self, rel: str) -> BinaryIO | None:
        """`rel` opened for reading, once, without following a link on the way; None (warned) when
        it is not a regular file any more (a link, a FIFO, a device, gone)."""
        parts = rel.split("/")
        fds: list[int] = []
        try:
            fd = self.fd
            for part in parts[:-1]:
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                fds.append(fd)
            file_fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
        except OSError as exc:
            log.warning("skipping output %s: %s (a symbolic link, or gone)", _as_text(rel), os.strerror(exc.errno or 0))
            return None
        finally:
            for opened in fds:
                os.close(opened)
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            os.close(file_fd)
            log.warning("skipping output %s: not a regular file any more", _as_text(rel))
            return None
        os.set_blocking(file_fd, True)
        return os.fdopen(file_fd, "rb")


def _matches(rel: str, spec: IOSpec) -> bool:
    prefix_ok = not spec.prefix or any(rel.startswith(p) for p in spec.prefix)
    suffix_ok = not spec.suffix or any(rel.endswith(s) for s in spec.suffix)
    return prefix_ok and suffix_ok


def destination(spec: IOSpec, rel: str) -> tuple[str, str]:
    """bucket = first segment of `path`; key = the rest of `path` + '/' + rel."""
    return spec.destination(rel)


def unsendable_key(key: str) -> str | None:
    """Why `key` would not be stored under exactly this name, or None when it would."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "it holds bytes that are not UTF-8 (object keys are UTF-8 text)"
    if "\\" in key:
        return "it holds a backslash, which stores rewrite (SeaweedFS stores it as '/')"
    if any(part in ("", ".", "..") for part in key.split("/")):
        return "it has an empty, '.' or '..' path segment, which stores collapse, resolve or refuse"
    return None


def _as_text(name: str) -> str:
    """A file name as valid text: its undecodable bytes (surrogate escapes) written as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def plan_uploads(
    output_dir: Path,
    files: Sequence[str],
    config: FunctionConfig,
    event_bucket: str | None = None,
    folder: str = "",
) -> list[Upload]:
    """Pair each output file with each matching output entry. USER isolation redirects the bucket;
    `folder` (see input_folder) goes between the output path and the file's relative path.

    Raises StorageError, before anything is uploaded, when a destination key is one the store would
    not keep as written (`unsendable_key`): the record must name the keys that exist afterwards."""
    user_bucket = (
        event_bucket
        if event_bucket and config.isolation_level.upper() == "USER" and event_bucket in config.bucket_list
        else None
    )
    plan: list[Upload] = []
    for spec in config.outputs:
        for rel in files:
            if not _matches(rel, spec):
                continue
            bucket, key = destination(spec, f"{folder}/{rel}" if folder else rel)
            problem = unsendable_key(key)
            if problem:
                raise StorageError(
                    f"output file {rel!r} cannot be published as {key!r}: {problem}; "
                    "nothing was uploaded (rename the file)",
                    provider=str(spec.provider),
                    operation="upload",
                    bucket=user_bucket or bucket,
                    key=_as_text(key),
                    cause="InvalidKey",
                )
            plan.append(Upload(output_dir / rel, rel, spec.provider, user_bucket or bucket, key))
    return plan


def input_folder(config: FunctionConfig, provider: str, bucket: str, key: str) -> str:
    """With `conveyor.keep_input_folders`: the folder of `key` below the `input[]` path that holds it
    on `provider` ("alice/20261203T2230Z-1a2b" for input/alice/20261203T2230Z-1a2b/dog.jpg under the
    path "input"), where its outputs go below the output path. "" when the setting is off, the
    object lies directly in an input path, or under none."""
    if not config.conveyor.keep_input_folders:
        return ""
    for spec in config.inputs:
        if str(spec.provider) != provider or spec.bucket != bucket:
            continue
        prefix = spec.key_prefix
        if prefix and not key.startswith(f"{prefix}/"):
            continue
        rest = key[len(prefix) + 1:] if prefix else key
        return "/".join(part for part in rest.split("/")[:-1] if part)
    return ""
