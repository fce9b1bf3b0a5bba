"""Which output files go where (contract section 5), and the input file's safe local name.

An output's key is sent exactly as the record names it, or the record fails before any upload
(`unsendable_key`): a name the stores cannot carry (bytes that are not UTF-8: S3 keys are UTF-8
text) or would store under another key (SeaweedFS turns a backslash into '/' and collapses '//';
'.' and '..' segments are refused or resolved) is refused with a StorageError naming the file.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from conveyor.config import FunctionConfig, IOSpec, ProviderRef
from conveyor.errors import StorageError

MAX_NAME_BYTES = 255


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
    found: list[str] = []
    for root, dirs, files in os.walk(output_dir, followlinks=False):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in files:
            full = os.path.join(root, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            found.append(PurePosixPath(os.path.relpath(full, output_dir)).as_posix())
    return sorted(found)


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
) -> list[Upload]:
    """Pair each output file with each matching output entry. USER isolation redirects the bucket.

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
            bucket, key = destination(spec, rel)
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
