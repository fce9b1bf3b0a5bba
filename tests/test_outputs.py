"""Contract section 5: which output file goes where, and safe local names for hostile keys."""

from __future__ import annotations

import base64
import io
import os
import zipfile
from pathlib import Path

import pytest

from conveyor.config import FunctionConfig, IOSpec, ProviderRef
from conveyor.outputs import collect_outputs, plan_uploads, safe_file_name
from conveyor.response import write_sync_response

MINIO = ProviderRef("minio", "default")


def _tree(root: Path, *names: str) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("images/dog.jpg", "dog.jpg"),
        ("dog.jpg", "dog.jpg"),
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("a/b/..", "input"),
        ("a/b/.", "input"),
        ("dir/", "input"),
        ("", "input"),
        ("..\\..\\windows\\evil.exe", "evil.exe"),
        ("a/.hidden", ".hidden"),
        ("a/ ", "input"),
        ("photo\nname.png", "photoname.png"),
        ("café photo.jpg", "café photo.jpg"),
    ],
)
def test_safe_file_name(key: str, expected: str) -> None:
    assert safe_file_name(key) == expected


def test_safe_file_name_truncates_long_names_but_keeps_the_extension() -> None:
    name = safe_file_name("x/" + "é" * 400 + ".jpeg")
    assert name.endswith(".jpeg")
    assert len(name.encode()) <= 255
    assert "/" not in name


def test_collect_outputs_is_recursive_sorted_and_skips_links(tmp_path: Path) -> None:
    out = _tree(tmp_path / "out", "b.json", "a.png", "sub/deep/c.txt")
    os.symlink("/etc/passwd", out / "leak")
    os.symlink("/etc", out / "etcdir")
    assert collect_outputs(out) == ["a.png", "b.json", "sub/deep/c.txt"]


def test_plan_uploads_prefix_suffix_and_destination(tmp_path: Path) -> None:
    out = _tree(tmp_path / "out", "result.json", "result.png", "logs/run.txt")
    config = FunctionConfig(
        outputs=(
            IOSpec(MINIO, "results/json", suffix=(".json",)),
            IOSpec(MINIO, "all", prefix=(), suffix=()),
            IOSpec(MINIO, "/logs-bucket/a/b/", prefix=("logs/",)),
        )
    )
    plan = plan_uploads(out, collect_outputs(out), config, event_bucket="input")
    assert sorted(u.target for u in plan) == [
        "all/logs/run.txt",
        "all/result.json",
        "all/result.png",
        "logs-bucket/a/b/logs/run.txt",
        "results/json/result.json",
    ]
    assert all(u.src.is_file() and u.src.is_relative_to(out) for u in plan)


def test_user_isolation_redirects_to_the_event_bucket_only_when_listed(tmp_path: Path) -> None:
    out = _tree(tmp_path / "out", "r.txt")
    spec = IOSpec(MINIO, "shared/out")
    config = FunctionConfig(outputs=(spec,), isolation_level="USER", bucket_list=("alice",))
    assert [u.target for u in plan_uploads(out, ["r.txt"], config, "alice")] == ["alice/out/r.txt"]
    assert [u.target for u in plan_uploads(out, ["r.txt"], config, "mallory")] == ["shared/out/r.txt"]
    service = FunctionConfig(outputs=(spec,), isolation_level="SERVICE", bucket_list=("alice",))
    assert [u.target for u in plan_uploads(out, ["r.txt"], service, "alice")] == ["shared/out/r.txt"]


def test_sync_response_single_file_is_base64_of_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    payload = os.urandom(3 * 256 * 1024 + 17)  # spans several base64 chunks
    (out / "r.bin").write_bytes(payload)
    sink = io.BytesIO()
    assert write_sync_response(out, ["r.bin"], None, sink, tmp_path) == "file"
    assert base64.b64decode(sink.getvalue(), validate=True) == payload


def test_sync_response_several_files_is_a_zip(tmp_path: Path) -> None:
    out = _tree(tmp_path / "out", "a.txt", "sub/b.txt")
    sink = io.BytesIO()
    assert write_sync_response(out, ["a.txt", "sub/b.txt"], None, sink, tmp_path) == "zip"
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(sink.getvalue()))) as zf:
        assert sorted(zf.namelist()) == ["a.txt", "sub/b.txt"]
        assert zf.read("sub/b.txt") == b"sub/b.txt"


def test_sync_response_falls_back_to_the_models_stdout(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stdout = tmp_path / "stdout"
    stdout.write_bytes(b"prediction: cat\n")
    sink = io.BytesIO()
    assert write_sync_response(out, [], stdout, sink, tmp_path) == "stdout"
    assert sink.getvalue() == b"prediction: cat\n"
    assert write_sync_response(out, [], None, io.BytesIO(), tmp_path) == "empty"


def test_keep_input_folders_puts_outputs_under_the_inputs_folder(tmp_path: Path) -> None:
    from dataclasses import replace

    from conveyor.outputs import input_folder

    minio = ProviderRef("minio")
    base = FunctionConfig(inputs=(IOSpec(minio, "input/uploads"),), outputs=(IOSpec(minio, "output/results"),))
    config = replace(base, conveyor=replace(base.conveyor, keep_input_folders=True))
    key = "uploads/alice/20261203T223000Z-1a2b/dog.jpg"
    assert input_folder(base, "minio.default", "input", key) == ""  # off: faas-supervisor's layout
    folder = input_folder(config, "minio.default", "input", key)
    assert folder == "alice/20261203T223000Z-1a2b"
    assert input_folder(config, "minio.default", "input", "uploads/dog.jpg") == ""
    assert input_folder(config, "minio.default", "other", key) == ""  # under no input path
    assert input_folder(config, "s3.default", "input", key) == ""  # another provider's bucket
    [upload] = plan_uploads(tmp_path, ["dog.json"], config, "input", folder)
    assert (upload.bucket, upload.key) == ("output", "results/alice/20261203T223000Z-1a2b/dog.json")
