"""The shard's inputs: every object under the input path, those of this shard, and among them
those whose result record already says SUCCEEDED (set aside: a sweep resumes where it stopped).

Each input becomes the event its upload would have delivered (a MinIO notification on a
minio.default path, an S3 one on s3.default, either inside OSCAR's `{"storage_provider", "event"}`
wrapper for other providers), parsed by conveyor.events like any other: the model sees the same
EVENT, STORAGE_OBJECT_KEY and INPUT_FILE_PATH as for a single upload.
"""

from __future__ import annotations

import json
import logging
import tempfile
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.config import FunctionConfig, IOSpec, ProviderRef
from conveyor.errors import ConfigError, StorageError
from conveyor.events import Event, ObjectRef, load_event
from conveyor.job import Stores
from conveyor.records import ResultRecord, Status, status_key
from conveyor.storage import ObjectStore, is_not_found
from conveyor.sweep.shards import Shard

log = logging.getLogger(__name__)

RECORD_READERS = 8  # result records read at once when looking for those already SUCCEEDED


@dataclass(frozen=True)
class Item:
    """One input of the shard: its event and the ObjectRef in it."""

    event: Event
    ref: ObjectRef

    @property
    def name(self) -> str:
        return f"{self.ref.bucket}/{self.ref.key}"


@dataclass
class Plan:
    """What a shard will do: the keys `todo`, in listing order, and those `skipped` (already
    SUCCEEDED), out of the `listed` objects of the path. Keys only: each becomes an Item (an event)
    when its turn comes, so a plan of 100,000 inputs stays small."""

    spec: IOSpec
    shard: Shard
    listed: int = 0
    todo: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def parse_input(text: str) -> IOSpec:
    """`--input PROVIDER:PATH` ("minio.default:bucket/folder") as an input entry."""
    provider, colon, path = text.partition(":")
    if not colon or not path.strip("/") or not provider:
        raise ConfigError(f"--input takes PROVIDER:PATH (minio.default:bucket/folder), not {text!r}", key="--input")
    return IOSpec(ProviderRef.parse(provider), path.strip("/"))


def sweep_input(config: FunctionConfig, override: IOSpec | None) -> IOSpec:
    """The path to sweep: --input, else the definition's first input entry."""
    if override is not None:
        return override
    if not config.inputs:
        raise ConfigError("the definition has no input path to sweep: add an input entry or give --input",
                          key="input")
    if len(config.inputs) > 1:
        log.info("the definition has %d input paths: sweeping the first, %s on %s (--input for another)",
                 len(config.inputs), config.inputs[0].path, config.inputs[0].provider)
    return config.inputs[0]


def plan_shard(config: FunctionConfig, spec: IOSpec, shard: Shard, stores: Stores) -> Plan:
    """List the input path, keep this shard's keys, set aside those already SUCCEEDED."""
    plan = Plan(spec, shard)
    if not spec.bucket:
        raise ConfigError(f"the input path {spec.path!r} names no bucket", key="input")
    prefix = f"{spec.key_prefix}/" if spec.key_prefix else ""
    keys = [key for key in stores.get(spec.provider).list_keys(spec.bucket, prefix)
            if not key.endswith("/") and not _produced_here(config, spec, key)]
    plan.listed = len(keys)
    mine = [key for key in keys if shard.holds(key)]
    done = succeeded(config, spec, mine, stores)
    for key in mine:
        if key in done:
            plan.skipped.append(key)
        else:
            plan.todo.append(key)
    return plan


def make_item(spec: IOSpec, key: str) -> Item:
    event = load_event(_upload_event(spec.provider, spec.bucket, key))
    [ref] = event.inputs
    assert isinstance(ref, ObjectRef)
    return Item(event, ref)


def _upload_event(provider: ProviderRef, bucket: str, key: str) -> dict[str, Any]:
    """The notification an upload of bucket/key would have sent (see the module docstring)."""
    quoted = urllib.parse.quote_plus(key, safe="/")
    s3 = {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
          "object": {"key": quoted}}
    if provider.type == "minio":
        inner: dict[str, Any] = {
            "EventName": "s3:ObjectCreated:Put",
            "Key": f"{bucket}/{quoted}",
            "Records": [{"eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
                         "s3": s3}],
        }
    else:
        inner = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                              "s3": s3}]}
    if provider.type in ("minio", "s3") and provider.id == "default":
        return inner
    return {"storage_provider": str(provider), "event": inner}


def _produced_here(config: FunctionConfig, spec: IOSpec, key: str) -> bool:
    """Is `key` under an output path or the status location on the input's provider and bucket?
    (Such an input path would feed the sweep its own outputs.)"""
    places = [*config.outputs, *([config.conveyor.status] if config.conveyor.status else [])]
    for place in places:
        if place.provider == spec.provider and place.bucket == spec.bucket:
            if not place.key_prefix or key.startswith(f"{place.key_prefix}/"):
                return True
    return False


def record_key(status: IOSpec, bucket: str, key: str) -> tuple[str, str]:
    """Where the result record of bucket/key is stored (conveyor.records.status_key)."""
    stub = ResultRecord(input={"bucket": bucket, "key": key, "inline": False}, platform="", request_id="", handler="")
    return status_key(status, stub)


def succeeded(config: FunctionConfig, spec: IOSpec, keys: Iterable[str], stores: Stores) -> set[str]:
    """The keys among `keys` whose stored result record says SUCCEEDED. A RUNNING or FAILED record
    (or none) is run again. Without a status location nothing can be known: none are."""
    status = config.conveyor.status
    keys = list(keys)
    if status is None or not keys:
        if status is None and keys:
            log.warning("the definition has no conveyor.status location: a sweep cannot tell which inputs "
                        "already SUCCEEDED, so it runs them all")
        return set()
    store = stores.get(status.provider)
    where = {key: record_key(status, spec.bucket, key) for key in keys}
    status_bucket, folder = status.destination(f"{spec.bucket}/{spec.key_prefix}/" if spec.key_prefix
                                               else f"{spec.bucket}/")
    try:  # one listing tells which records exist; only those are read
        present = set(store.list_keys(status_bucket, folder))
    except StorageError as exc:
        if not is_not_found(exc):
            raise
        present = set()
    candidates = [key for key in keys if where[key][1] in present]
    if not candidates:
        return set()
    with tempfile.TemporaryDirectory(prefix="conveyor-sweep-records-") as tmp, \
            ThreadPoolExecutor(RECORD_READERS, thread_name_prefix="conveyor-records") as pool:
        states = pool.map(lambda item: _status_of(store, *where[item[1]], Path(tmp) / str(item[0])),
                          enumerate(candidates))
        return {key for key, state in zip(candidates, states, strict=True) if state == Status.SUCCEEDED.value}


def _status_of(store: ObjectStore, bucket: str, key: str, dest: Path) -> str | None:
    try:
        store.download(bucket, key, dest)
        value = json.loads(dest.read_bytes())
    except StorageError as exc:
        if is_not_found(exc):
            return None
        raise
    except ValueError:  # not JSON: not a record this sweep can trust
        return None
    return value.get("status") if isinstance(value, dict) else None
