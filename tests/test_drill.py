"""The fault drill's judgement (bench.drill.check): the invariants of issue 14 it enforces, on
made-up outcomes. The drill itself runs processes for minutes: `make drill`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench.drill import check, expected_outputs

DATA = b"x" * 64
SHA = hashlib.sha256(DATA).hexdigest()


def _succeeded(root: Path, name: str, outputs: list[str]) -> None:
    (root / "status").mkdir(exist_ok=True)
    (root / "status" / f"{name}.json").write_text(
        json.dumps({"status": "SUCCEEDED", "outputs": [f"output/{o}" for o in outputs]}))
    results = root / "results" / name
    results.mkdir(parents=True)
    (results / name).write_bytes(DATA)
    (results / f"{name}.sha256").write_text(SHA + "\n")


def _inputs(*names: tuple[str, str]) -> dict[str, dict]:
    return {name: {"kind": kind, "sha256": SHA, "size": len(DATA)} for name, kind in names}


def test_an_overlap_input_publishes_its_pairs_shared_output() -> None:
    assert expected_outputs("d00003-overlap-p0001.bin", "overlap") == [
        "d00003-overlap-p0001.bin", "d00003-overlap-p0001.bin.sha256", "p0001.shared"]
    assert expected_outputs("d00004-normal.bin", "normal") == ["d00004-normal.bin", "d00004-normal.bin.sha256"]


def test_a_succeeded_output_gone_from_the_bucket_is_a_violation(tmp_path: Path) -> None:
    """Another delivery (or the neighbour sharing the key) withdrew what this record published."""
    a, b = "d00001-overlap-p0000.bin", "d00002-overlap-p0000.bin"
    for name in (a, b):
        _succeeded(tmp_path, name, expected_outputs(name, "overlap"))
    bucket = {a: b"", f"{a}.sha256": SHA.encode(), b: b"", f"{b}.sha256": SHA.encode(), "p0000.shared": b""}
    inputs = _inputs((a, "overlap"), (b, "overlap"))
    assert check(tmp_path, inputs, None, {}, bucket)[1] == []
    del bucket["p0000.shared"]
    violations = check(tmp_path, inputs, None, {}, bucket)[1]
    assert violations == [f"{a}: SUCCEEDED, but its outputs ['p0000.shared'] are gone from the bucket",
                          f"{b}: SUCCEEDED, but its outputs ['p0000.shared'] are gone from the bucket"]


def test_a_duplicate_deliverys_outputs_count_as_published(tmp_path: Path) -> None:
    name = "d00001-big.bin"
    (tmp_path / "status").mkdir()
    record = {"status": "FAILED", "error": {"kind": "interrupted"}}
    (tmp_path / "status" / f"{name}.json").write_text(json.dumps(record))
    duplicate = {"key": name, "records": [{"status": "SUCCEEDED", "outputs": [f"output/{name}",
                                                                             f"output/{name}.sha256"]}]}
    bucket = {name: b"", f"{name}.sha256": SHA.encode()}
    hit = {name: ["term-upload"]}
    # The loop's delivery failed after a fault, the duplicate published: its outputs are not strays.
    assert check(tmp_path, _inputs((name, "big")), None, hit, bucket, [duplicate])[1] == []
    # ... and once published, they must stay.
    violations = check(tmp_path, _inputs((name, "big")), None, hit, {}, [duplicate])[1]
    assert violations == [f"{name}: a duplicate delivery SUCCEEDED, but its outputs "
                          f"['{name}', '{name}.sha256'] are gone"]
