"""Zip inputs (`conveyor: unpack: zip`): the safety checks on hostile and broken archives (fast,
on real files), then `conveyor run` end to end against the real S3 server: each member through
the model, outputs under the member's path, a failing member failing the archive's one record."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.config import load_config
from conveyor.errors import ConfigError, EventError
from conveyor.platform import Platform
from conveyor.unpack import MAX_FAILED, Archive, count_entries, extract, is_archive, open_archive
from tests.support.pipeline import CONVEYOR, PNG, body, keys, oscar_event, records

MAX_MEMBERS, MAX_BYTES = 50, 1024 * 1024


def make_zip(path: Path, members: dict[str | zipfile.ZipInfo, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def opened(path: Path, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_BYTES) -> Archive:
    return open_archive(path, max_members, max_bytes)


def refused(path: Path, cause: str, **limits: int) -> EventError:
    with pytest.raises(EventError) as caught:
        opened(path, **limits).close()
    assert caught.value.context["cause"] == cause, caught.value.message
    assert caught.value.exit_code == 65
    assert path.name in caught.value.message
    return caught.value


def symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the mode in the high bits of external_attr is meaningful
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def extract_all(archive: Archive, root: Path) -> list[Path]:
    root.mkdir(exist_ok=True)
    return [extract(archive, member, root) for member in archive.members]


# -- which inputs are archives -------------------------------------------------------------------


def test_archives_are_known_by_content_and_a_zip_or_no_extension(tmp_path: Path) -> None:
    content = {"a.txt": b"a"}
    assert is_archive(make_zip(tmp_path / "photos.zip", content))
    assert is_archive(make_zip(tmp_path / "PHOTOS.ZIP", content))
    assert is_archive(make_zip(tmp_path / "upload", content))  # no extension: the content says zip
    assert not is_archive(make_zip(tmp_path / "report.docx", content))  # a zip under its own format's name
    assert not is_archive(make_zip(tmp_path / "model.jar", content))
    (tmp_path / "photo").write_bytes(PNG)
    assert not is_archive(tmp_path / "photo")


def test_a_zip_name_on_something_else_is_refused_as_corrupt(tmp_path: Path) -> None:
    fake = tmp_path / "photos.zip"
    fake.write_bytes(PNG)
    assert is_archive(fake)
    refused(fake, "CorruptArchive")
    empty = tmp_path / "nothing.zip"
    empty.write_bytes(b"")
    refused(empty, "CorruptArchive")


# -- zip slip, links, names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "..\\evil.txt", "C:\\evil.txt", "a/b/../../../x"]
)
def test_a_member_path_leaving_the_folder_refuses_the_archive(tmp_path: Path, name: str) -> None:
    path = make_zip(tmp_path / "slip.zip", {"fine.txt": b"ok", name: b"pwned"})
    error = refused(path, "UnsafeMember")
    assert error.context["member"] == name
    assert not (tmp_path / "evil.txt").exists()


def test_a_symlink_member_is_skipped_never_created(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "links.zip", {symlink_member("passwd", "/etc/passwd"): b"/etc/passwd",
                                             symlink_member("up", ".."): b"..", "real.txt": b"real"})
    archive = opened(path)
    assert [m.name for m in archive.members] == ["real.txt"]
    assert {s["name"]: s["why"] for s in archive.skipped} == {"passwd": "a symbolic link", "up": "a symbolic link"}
    root = tmp_path / "out"
    extract_all(archive, root)
    assert sorted(p.name for p in root.iterdir()) == ["real.txt"]
    assert not any(p.is_symlink() for p in root.rglob("*"))


def test_an_archive_of_links_alone_has_nothing_to_process(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "links.zip", {symlink_member("passwd", "/etc/passwd"): b"/etc/passwd"})
    refused(path, "EmptyArchive")


def test_system_and_hidden_members_and_folders_are_skipped(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "mac.zip", {
        "photos/": b"", "photos/a.jpg": PNG, "__MACOSX/photos/._a.jpg": b"\x00\x05",
        "photos/.DS_Store": b"x", "Thumbs.db": b"x", ".git/config": b"x", "photos/b c é.jpg": PNG,
    })
    archive = opened(path)
    assert [m.name for m in archive.members] == ["photos/a.jpg", "photos/b c é.jpg"]
    assert sorted(s["name"] for s in archive.skipped) == [
        ".git/config", "Thumbs.db", "__MACOSX/photos/._a.jpg", "photos/.DS_Store"]


def test_two_members_under_one_name_refuse_the_archive(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = make_zip(tmp_path / "dup.zip", {"a.txt": b"1", zipfile.ZipInfo("a.txt"): b"2"})
    refused(path, "DuplicateMember")
    path = make_zip(tmp_path / "same.zip", {"a/b.txt": b"1", "a\\b.txt": b"2"})  # one path once normalised
    refused(path, "DuplicateMember")


def test_a_member_that_is_also_a_folder_refuses_the_archive(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "clash.zip", {"a": b"file", "a/b.txt": b"inside"})
    refused(path, "DuplicateMember")


def test_an_encrypted_member_is_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "secret.zip", {"a.txt": b"x"}, compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set bit 0, "encrypted", in both headers
        at = data.find(signature)
        data[at + flags_at] |= 0x01
    path.write_bytes(bytes(data))
    refused(path, "EncryptedMember")


# -- bombs ---------------------------------------------------------------------------------------


def test_too_many_members_is_refused_before_extraction(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "many.zip", {f"f{i}.txt": b"" for i in range(MAX_MEMBERS + 1)})
    error = refused(path, "ZipBomb")
    assert error.context["limit"] == MAX_MEMBERS
    opened(path, max_members=MAX_MEMBERS + 1).close()  # at the cap: fine


def test_the_count_comes_from_the_central_directory_itself_not_its_summary(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "liar.zip", {f"f{i}.txt": b"" for i in range(200)})
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    data[eocd + 8:eocd + 12] = struct.pack("<HH", 1, 1)  # "1 entry": the summary lies
    path.write_bytes(bytes(data))
    assert count_entries(path, 10**6) == 200
    assert count_entries(path, 10) == 11  # stops reading once past the cap
    refused(path, "ZipBomb")


def test_too_many_entries_are_refused_before_zipfile_reads_the_directory(tmp_path: Path) -> None:
    # Past the cap the central directory is damaged: zipfile, which parses the whole directory
    # into objects, would call the archive corrupt; the count stops reading at the cap first.
    path = make_zip(tmp_path / "many.zip", {f"f{i:03}.txt": b"" for i in range(200)})
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")  # the central directory's first entry
    entry = data.find(b"f150.txt", central) - 46  # the 151st entry's header, just before its name
    assert data[entry:entry + 4] == b"PK\x01\x02"
    data[entry:entry + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    refused(path, "ZipBomb", max_members=MAX_MEMBERS)
    refused(path, "CorruptArchive", max_members=1000)


def test_a_zip64_archive_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "zip64.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            with zf.open(f"f{i}.txt", "w", force_zip64=True) as fh:
                fh.write(b"x")
    assert count_entries(path, 100) == 3
    assert [m.name for m in opened(path).members] == ["f0.txt", "f1.txt", "f2.txt"]


def test_zip64_end_records_are_read_even_when_the_plain_one_suffices(tmp_path: Path) -> None:
    # Some writers always add the zip64 end records (before the plain one), whatever the sizes:
    # the central directory then ends where the zip64 record begins, not at the plain end record.
    plain = make_zip(tmp_path / "plain.zip", {"a.txt": b"a", "b.txt": b"b"}).read_bytes()
    eocd = plain.rfind(b"PK\x05\x06")
    _, _, _, _, total, size, offset, _ = struct.unpack("<4s4H2LH", plain[eocd:eocd + 22])
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, total, total, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd, 1)
    path = tmp_path / "always64.zip"
    path.write_bytes(plain[:eocd] + record + locator + plain[eocd:])
    assert zipfile.ZipFile(path).namelist() == ["a.txt", "b.txt"]
    assert count_entries(path, 100) == 2
    assert [m.name for m in opened(path).members] == ["a.txt", "b.txt"]


def test_too_many_bytes_uncompressed_is_refused_before_extraction(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(4 * MAX_BYTES)})
    assert path.stat().st_size < MAX_BYTES // 50  # deflate makes zeros tiny: that is the bomb
    error = refused(path, "ZipBomb")
    assert error.context["declared"] == 4 * MAX_BYTES
    path = make_zip(tmp_path / "many-small.zip", {f"z{i}.bin": bytes(MAX_BYTES // 4) for i in range(5)})
    refused(path, "ZipBomb")  # the sum counts, not each member


def test_a_header_that_lies_about_the_size_stops_at_the_declared_size(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "liar.zip", {"a.bin": bytes(MAX_BYTES * 4)})
    data = bytearray(path.read_bytes())
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # "10 bytes uncompressed"
        at = data.find(signature)
        data[at + size_at:at + size_at + 4] = struct.pack("<L", 10)
    path.write_bytes(bytes(data))
    archive = opened(path)  # 10 bytes declared: within the cap
    root = tmp_path / "out"
    with pytest.raises(EventError) as caught:
        extract_all(archive, root)
    assert caught.value.context["cause"] == "CorruptArchive"
    assert list(root.iterdir()) == []  # the partial member is removed


def test_extraction_counts_every_byte_against_the_cap(tmp_path: Path) -> None:
    # The cap as enforced while writing, whatever the check before it concluded: an archive taken
    # as holding less than it does stops when the bytes written pass the cap.
    path = make_zip(tmp_path / "big.zip", {"a.bin": bytes(3000), "b.bin": bytes(3000)})
    checked = opened(path)
    archive = Archive(checked.path, checked.zip, checked.members, checked.skipped, max_bytes=5000)
    root = tmp_path / "out"
    with pytest.raises(EventError) as caught:
        extract_all(archive, root)
    assert caught.value.context["cause"] == "ZipBomb" and caught.value.context["member"] == "b.bin"
    assert archive.written <= 5000 + 1024 * 1024  # at most one chunk past the cap was read, none written
    assert [p.name for p in root.iterdir()] == ["a.bin"]


# -- broken archives -----------------------------------------------------------------------------


def test_a_truncated_archive_is_refused_as_corrupt(tmp_path: Path) -> None:
    whole = make_zip(tmp_path / "whole.zip", {"a.txt": b"a" * 1000, "b.txt": b"b" * 1000})
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    refused(cut, "CorruptArchive")


def test_a_damaged_central_directory_is_refused_as_corrupt(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "damaged.zip", {"a.txt": b"a", "b.txt": b"b"})
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x01\x02")
    data[at:at + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    refused(path, "CorruptArchive")


def test_damaged_member_data_fails_at_extraction(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bitrot.zip", {"a.txt": bytes(range(256)) * 64})
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x03\x04") + 30 + len("a.txt")
    for i in range(start + 10, start + 40):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    archive = opened(path)
    with pytest.raises(EventError) as caught:
        extract_all(archive, tmp_path / "out")
    assert caught.value.context["cause"] == "CorruptArchive" and caught.value.context["member"] == "a.txt"


def test_an_empty_archive_has_nothing_to_process(tmp_path: Path) -> None:
    refused(make_zip(tmp_path / "empty.zip", {}), "EmptyArchive")
    refused(make_zip(tmp_path / "folders.zip", {"a/": b"", "__MACOSX/._x": b""}), "EmptyArchive")


def test_members_keep_their_paths_and_bytes(tmp_path: Path) -> None:
    content = {"a/b/c.jpg": PNG, "x y é.txt": "é".encode(), "top.bin": bytes(range(256))}
    archive = opened(make_zip(tmp_path / "ok.zip", content))
    root = tmp_path / "out"
    paths = extract_all(archive, root)
    assert {p.relative_to(root).as_posix(): p.read_bytes() for p in paths} == content
    assert archive.written == sum(len(v) for v in content.values())


# -- the settings --------------------------------------------------------------------------------


def conveyor_block(text: str) -> Any:
    read = {"/cfg/f.yaml": text}.get
    return load_config({}, Platform.LOCAL, path="/cfg/f.yaml", read_file=read).conveyor


def test_unpack_is_off_by_default_and_takes_zip() -> None:
    assert conveyor_block("name: f\n").unpack is None
    assert conveyor_block("conveyor: {unpack: off}\n").unpack is None
    settings = conveyor_block("conveyor: {unpack: zip, unpack_max_members: 20, unpack_max_bytes: 5Mi}\n")
    assert (settings.unpack, settings.unpack_max_members, settings.unpack_max_bytes) == ("zip", 20, 5 * 1024**2)
    defaults = conveyor_block("conveyor: {unpack: ZIP}\n")
    assert (defaults.unpack, defaults.unpack_max_members, defaults.unpack_max_bytes) == ("zip", 10_000, 10 * 1024**3)
    assert defaults.redacted()["unpack"] == "zip"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("conveyor: {unpack: tar}\n", "conveyor.unpack"),
        ("conveyor: {unpack: zip, unpack_max_members: 0}\n", "conveyor.unpack_max_members"),
        ("conveyor: {unpack: zip, unpack_max_bytes: lots}\n", "conveyor.unpack_max_bytes"),
    ],
)
def test_bad_unpack_settings_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        conveyor_block(text)
    assert caught.value.context["key"] == key


# -- end to end: `conveyor run` against the real S3 server ---------------------------------------

MEMBER_SCRIPT = """#!/bin/sh
# each member: copied, plus a file of the same name for every member (they must not collide)
set -e
case "$(basename "$INPUT_FILE_PATH")" in
  *fail*) echo "cannot read $(basename "$INPUT_FILE_PATH")" >&2; exit 3;;
  *empty*) exit 0;;
esac
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"
printf '%s|%s' "${INPUT_FILE_PATH#"$TMP_INPUT_DIR"/}" "$STORAGE_OBJECT_KEY" > "$TMP_OUTPUT_DIR/key.txt"
echo "processed $(basename "$INPUT_FILE_PATH")"
"""


def zip_bytes(members: dict[str | zipfile.ZipInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_each_member_goes_through_the_model_with_its_own_outputs(deploy, s3_client, bucket) -> None:
    d = deploy(MEMBER_SCRIPT, unpack="zip")
    archive = zip_bytes({"cats/a.png": PNG, "dogs/a.png": PNG + b"dog", "photo one+été.txt": "é".encode(),
                         "__MACOSX/cats/._a.png": b"\x00", "cats/": b""})
    s3_client.put_object(Bucket=bucket, Key="in/my photos.zip", Body=archive)
    proc = d.run(oscar_event(bucket, "in/my photos.zip"))
    assert proc.returncode == 0, proc.stderr.decode()
    folders = ["out/my photos/cats/a.png/", "out/my photos/dogs/a.png/", "out/my photos/photo one+été.txt/"]
    assert keys(s3_client, bucket, "out/") == sorted(
        [f"{folders[0]}a.png", f"{folders[0]}key.txt", f"{folders[1]}a.png", f"{folders[1]}key.txt",
         f"{folders[2]}key.txt", f"{folders[2]}photo one+été.txt"])
    assert body(s3_client, bucket, f"{folders[1]}a.png") == PNG + b"dog"
    assert body(s3_client, bucket, f"{folders[2]}photo one+été.txt") == "é".encode()
    # the model saw the member's path under TMP_INPUT_DIR, and the archive's key
    assert body(s3_client, bucket, f"{folders[1]}key.txt").decode() == "dogs/a.png|in/my photos.zip"
    [record] = records(proc.stderr)
    assert record["status"] == "SUCCEEDED" and record["exit_code"] == 0
    assert len(record["outputs"]) == 6
    unpack = record["extra"]["unpack"]
    assert (unpack["archive"], unpack["members"], unpack["succeeded"], unpack["failed"]) == ("my photos.zip", 3, 3, 0)
    assert unpack["skipped"] == [{"name": "__MACOSX/cats/._a.png", "why": "a hidden or system file"}]
    assert [r["name"] for r in unpack["results"]] == ["cats/a.png", "dogs/a.png", "photo one+été.txt"]
    assert "member 3/3: photo one+été.txt" in record["log_tail"]
    assert list(d.scratch.iterdir()) == []


def test_with_keep_input_folders_the_archive_folder_goes_below_the_input_folder(deploy, s3_client, bucket) -> None:
    d = deploy(MEMBER_SCRIPT, unpack="zip", keep_input_folders=True)
    s3_client.put_object(Bucket=bucket, Key="in/alice/up1/set.zip", Body=zip_bytes({"x/a.png": PNG}))
    proc = d.run(oscar_event(bucket, "in/alice/up1/set.zip"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert keys(s3_client, bucket, "out/") == ["out/alice/up1/set/x/a.png/a.png", "out/alice/up1/set/x/a.png/key.txt"]


def test_a_member_that_fails_the_model_fails_the_record_and_publishes_nothing(deploy, s3_client, bucket) -> None:
    d = deploy(MEMBER_SCRIPT, unpack="zip")
    archive = zip_bytes({"a.png": PNG, "b-fail.png": PNG, "c.png": PNG, "d-empty.png": PNG})
    s3_client.put_object(Bucket=bucket, Key="in/batch.zip", Body=archive)
    proc = d.run(oscar_event(bucket, "in/batch.zip"))
    assert proc.returncode == 70, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["exit_code"] == 3
    assert record["error"]["kind"] == "handler"
    assert record["error"]["failed_members"] == ["b-fail.png", "d-empty.png"]
    assert "2 of the 4 member(s) of batch.zip failed" in record["error"]["message"]
    unpack = record["extra"]["unpack"]
    assert (unpack["succeeded"], unpack["failed"], unpack["not_run"]) == (2, 2, 0)  # the others still ran
    failed = {r["name"]: r["error"] for r in unpack["results"] if r["status"] == "FAILED"}
    assert failed["b-fail.png"]["exit_code"] == 3
    assert failed["d-empty.png"]["kind"] == "no-output"  # a model that wrote nothing did not succeed
    assert "cannot read b-fail.png" in record["log_tail"]
    assert record["outputs"] == [] and keys(s3_client, bucket, "out/") == []
    assert list(d.scratch.iterdir()) == []


def test_after_ten_failed_members_the_rest_are_not_run(deploy, s3_client, bucket) -> None:
    d = deploy(MEMBER_SCRIPT, unpack="zip")
    archive = zip_bytes({f"m{i:02}-fail.png": PNG for i in range(13)})
    s3_client.put_object(Bucket=bucket, Key="in/broken.zip", Body=archive)
    proc = d.run(oscar_event(bucket, "in/broken.zip"))
    assert proc.returncode == 70, proc.stderr.decode()
    [record] = records(proc.stderr)
    unpack = record["extra"]["unpack"]
    assert (unpack["members"], unpack["failed"], unpack["not_run"]) == (13, MAX_FAILED, 13 - MAX_FAILED)
    assert len(record["error"]["failed_members"]) == MAX_FAILED
    assert record["log_tail"].count("cannot read") <= MAX_FAILED and "m10-fail.png" not in record["log_tail"]


def test_a_zip_bomb_is_refused_with_nothing_run(deploy, s3_client, bucket) -> None:
    d = deploy(MEMBER_SCRIPT, unpack="zip", unpack_max_bytes="1Mi")
    s3_client.put_object(Bucket=bucket, Key="in/bomb.zip", Body=zip_bytes({"zeros.bin": bytes(64 * 1024**2)}))
    proc = d.run(oscar_event(bucket, "in/bomb.zip"))
    assert proc.returncode == 65, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "event"
    assert record["error"]["cause"] == "ZipBomb" and "unpack_max_bytes" in record["error"]["message"]
    assert keys(s3_client, bucket, "out/") == []
    assert list(d.scratch.iterdir()) == []


def test_without_unpack_an_archive_is_one_input(deploy, s3_client, bucket) -> None:
    d = deploy(MEMBER_SCRIPT)
    archive = zip_bytes({"a.png": PNG, "b.png": PNG})
    s3_client.put_object(Bucket=bucket, Key="in/batch.zip", Body=archive)
    proc = d.run(oscar_event(bucket, "in/batch.zip"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert keys(s3_client, bucket, "out/") == ["out/batch.zip", "out/key.txt"]
    assert body(s3_client, bucket, "out/batch.zip") == archive
    [record] = records(proc.stderr)
    assert "unpack" not in record["extra"]


ISOLATED_SCRIPT = """#!/bin/sh
id -u > "$TMP_OUTPUT_DIR/uid.txt"
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"
try() { if "$@" 2>/dev/null; then echo WROTE; else echo DENIED; fi; }
try touch "$TMP_INPUT_DIR/planted" > "$TMP_OUTPUT_DIR/input-dir.txt"
try ln -s /etc "$TMP_OUTPUT_DIR/../planted" > "$TMP_OUTPUT_DIR/tree.txt"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching the model's user needs root")
def test_an_isolated_model_reads_its_members_and_writes_only_its_own_folder(deploy, s3_client, bucket) -> None:
    # Under conveyor.isolate_model the model (nobody) reads each member and writes its own output
    # folder, but cannot plant anything where Conveyor extracts the next member or makes its folder.
    open_dir = Path(tempfile.mkdtemp(prefix="conveyor-unpack-"))
    try:
        open_dir.chmod(0o755)  # pytest's tmp_path is closed to other users
        d = deploy(ISOLATED_SCRIPT, unpack="zip", isolate_model=True)
        config = open_dir / "function_config.yaml"
        config.write_text(yaml.safe_dump(d.definition))
        scratch = open_dir / "scratch"
        scratch.mkdir(mode=0o755)
        s3_client.put_object(Bucket=bucket, Key="in/set.zip", Body=zip_bytes({"a/one.txt": b"1", "two.txt": b"2"}))
        proc = subprocess.run([*CONVEYOR, "run", "--config", str(config), "--platform", "oscar"],
                              input=json.dumps(oscar_event(bucket, "in/set.zip")).encode(), capture_output=True,
                              env=d.env(TMPDIR=str(scratch)), timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        for folder, name, data in (("out/set/a/one.txt/", "one.txt", b"1"), ("out/set/two.txt/", "two.txt", b"2")):
            assert body(s3_client, bucket, f"{folder}uid.txt").strip() == b"65534"
            assert body(s3_client, bucket, folder + name) == data
            assert body(s3_client, bucket, f"{folder}input-dir.txt") == b"DENIED\n"
            assert body(s3_client, bucket, f"{folder}tree.txt") == b"DENIED\n"
        assert list(scratch.iterdir()) == []
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)


def test_a_zip_posted_for_a_response_answers_with_every_members_outputs(deploy) -> None:
    d = deploy('#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n', unpack="zip")
    d.definition["output"] = []
    proc = d.run(None, stdin=base64.b64encode(zip_bytes({"a.png": PNG, "b/c.png": PNG + b"c"})) + b"\n")
    assert proc.returncode == 0, proc.stderr.decode()
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(proc.stdout))) as answer:
        names = sorted(answer.namelist())
        [stem] = {name.split("/")[0] for name in names}
        assert names == [f"{stem}/a.png/a.png", f"{stem}/b/c.png/c.png"]
        assert answer.read(f"{stem}/b/c.png/c.png") == PNG + b"c"
    [record] = records(proc.stderr)
    assert record["extra"]["unpack"]["succeeded"] == 2 and record["extra"]["response"] == "zip"
