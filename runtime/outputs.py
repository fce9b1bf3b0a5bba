"""Which output files go where (contract section 5), and the input file's safe local name."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from conveyor.config import FunctionConfig, IOSpec, ProviderRef

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


def plan_uploads(
    output_dir: Path,
    files: Sequence[str],
    config: FunctionConfig,
    event_bucket: str | None = None,
) -> list[Upload]:
    """Pair each output file with each matching output entry. USER isolation redirects the bucket."""
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
            plan.append(Upload(output_dir / rel, rel, spec.provider, user_bucket or bucket, key))
    return plan
