"""Which shard this process is, and which keys are its own.

The index comes from `--shard`, else AWS_BATCH_JOB_ARRAY_INDEX (an AWS Batch array child), else
the `:<i>` suffix of AWS_BATCH_JOB_ID (moto's Batch sets no index variable: its children are
`<parent>:<i>`), else JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's pod); the count from
`--shards`, else CONVEYOR_SHARDS, else AWS_BATCH_JOB_ARRAY_SIZE. Neither: one shard. Read once,
at the edge, into a Shard.

A key's shard is a stable hash of the key (SHA-256, never Python's salted hash()) modulo the
count: every process of a sweep, on any machine, agrees on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from conveyor.errors import ConfigError

INDEX_VARS = ("AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ID", "JOB_COMPLETION_INDEX")
COUNT_VARS = ("CONVEYOR_SHARDS", "AWS_BATCH_JOB_ARRAY_SIZE")


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"the number of shards must be at least 1, not {self.count}", key="shards")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard index {self.index} is out of range: {self.count} shard(s) are numbered "
                              f"0 to {self.count - 1}", key="shard")

    def holds(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


def shard_of(key: str, count: int) -> int:
    """The shard of `key` among `count`: the first 8 bytes of its SHA-256, modulo count."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


def resolve_shard(environ: Mapping[str, str], index: int | None = None, count: int | None = None) -> Shard:
    """The Shard of this process: the flags first, then the engines' variables (module docstring)."""
    if index is None:
        index = _index_from(environ)
    if count is None:
        count = _count_from(environ)
    if count is None:
        if index not in (None, 0):
            raise ConfigError(f"shard index {index} but no number of shards: give --shards or CONVEYOR_SHARDS",
                              key="shards")
        return Shard()
    if index is None:
        if count == 1:
            return Shard()
        raise ConfigError(f"{count} shards but no shard index: give --shard, or run as an AWS Batch array "
                          "child or a Kubernetes Indexed Job pod", key="shard")
    return Shard(index, count)


def _index_from(environ: Mapping[str, str]) -> int | None:
    if value := environ.get("AWS_BATCH_JOB_ARRAY_INDEX", "").strip():
        return _integer(value, "AWS_BATCH_JOB_ARRAY_INDEX")
    job_id = environ.get("AWS_BATCH_JOB_ID", "")
    if ":" in job_id:
        return _integer(job_id.rsplit(":", 1)[1], "AWS_BATCH_JOB_ID (the :<i> of an array child)")
    if value := environ.get("JOB_COMPLETION_INDEX", "").strip():
        return _integer(value, "JOB_COMPLETION_INDEX")
    return None


def _count_from(environ: Mapping[str, str]) -> int | None:
    for name in COUNT_VARS:
        if value := environ.get(name, "").strip():
            return _integer(value, name)
    return None


def _integer(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{text!r} is not a whole number", key=where) from None
