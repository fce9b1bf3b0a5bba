"""Zip inputs (`conveyor: unpack: zip`): each member of an archive through the model, in the
archive's one record, the handler loaded once (as it is for every record of the process).

Which inputs: a fetched file named `*.zip` (any case), or without an extension and whose first
bytes say zip (conveyor.media.sniff). A `.zip` that is not a zip is refused as corrupt; a zip
under another extension (.docx, .jar, .xlsx, .apk: formats built on zip) goes to the model as it is.

Checked from the central directory before anything is extracted (a refusal is an EventError,
exit 65, EX_DATAERR: the input itself is bad, no retry helps): the entries (folders included) are
counted from the raw central directory before zipfile parses it, so a bomb of a million entries
costs no memory, and then at most `unpack_max_members`; the declared sizes of the members to
process add up to at most `unpack_max_bytes`; no member name is absolute, holds `..`, or names
twice the same file, or a file that is also a folder of another member; no member is encrypted.
Enforced again while extracting: every byte written counts against `unpack_max_bytes` (a header
that lies about a size stops at the cap; zipfile itself stops at the declared size and then fails
the CRC); a corrupt member fails the archive. Skipped, never extracted (listed in the record):
folders, symbolic links and other non-regular members, hidden and system files (a component
starting with '.', `__MACOSX/`, `Thumbs.db`, `desktop.ini`).

Where things go, inside the record's work directory, in folders Conveyor creates and the model
(under conveyor.isolate_model) cannot write:
    members/<member path>                        the member, extracted just before its model runs,
                                                 removed after (disk: one member at a time);
                                                 INPUT_FILE_PATH, with TMP_INPUT_DIR = members/
    unpacked/<archive stem>/<member path>/       the member's own TMP_OUTPUT_DIR, fresh and empty
The outputs are published from unpacked/, so a member `a/b.jpg` of `photos.zip` gives
`<output path>/[<input folder>/]photos/a/b.jpg/<the model's files>`: two members never share an
output folder, whatever names their models write.

The record: the archive has one record. It SUCCEEDS when every member's model succeeded (and, when
outputs are required, wrote a file); then every output is published at once. One failed member
fails the record (a HandlerError naming the members that failed), and then, as for any failed
record, none of its outputs is published (conveyor.publish). After MAX_FAILED failed members the
rest are not run. `record.extra["unpack"]` holds the counts, the skipped members, and a result per
member (name, status, the number of files written or the error): every failed member, the first
MEMBERS_SHOWN others. A timeout or a termination signal stops the archive (the timeout
bounds the whole record, as for any record).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from conveyor.errors import (
    ConveyorError,
    EventError,
    HandlerError,
    HandlerTimeout,
    Interrupted,
    NoOutputError,
    StorageError,
)
from conveyor.handler import HandlerResult, Invocation
from conveyor.job import Job, check_shutdown
from conveyor.media import HEAD_BYTES, sniff
from conveyor.outputs import MAX_NAME_BYTES, collect_outputs
from conveyor.records import ResultRecord

log = logging.getLogger(__name__)

MEMBERS_DIR = "members"  # the member being processed, under the work directory
TREE_DIR = "unpacked"  # the members' output folders, under the work directory: what is published
SYSTEM_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
MAX_FAILED = 10  # failed members after which the archive's other members are not run
MEMBERS_SHOWN = 100  # succeeded members listed in the record (the failed ones always are), skipped ones too
CHUNK = 1024 * 1024

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # one central directory entry, before its variable parts


@dataclass(frozen=True)
class Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]  # the member's safe relative path

    @property
    def name(self) -> str:
        return "/".join(self.parts)


@dataclass
class Archive:
    """An archive that passed the checks: the members to process, in the archive's order."""

    path: Path
    zip: zipfile.ZipFile
    members: list[Member]
    skipped: list[dict[str, str]]
    max_bytes: int
    written: int = 0  # bytes extracted so far, against max_bytes

    @property
    def stem(self) -> str:
        name = self.path.name
        stem = name[: -len(".zip")] if name.lower().endswith(".zip") else name
        return stem if stem.strip() and stem not in (".", "..") else "archive"

    def close(self) -> None:
        self.zip.close()


def is_archive(path: Path) -> bool:
    """Is the fetched file an archive to unpack (see the module docstring)?"""
    suffix = PurePosixPath(path.name).suffix.lower()
    if suffix not in ("", ".zip") or not path.is_file():
        return False
    if suffix == ".zip":
        return True  # open_archive refuses one that is not a zip
    with open(path, "rb") as fh:
        kind = sniff(fh.read(HEAD_BYTES))
    return kind is not None and kind[0] == ".zip"


def _refuse(path: Path, message: str, cause: str, **context: Any) -> EventError:
    return EventError(f"archive {path.name}: {message}", archive=path.name, cause=cause, **context)


def open_archive(path: Path, max_members: int, max_bytes: int) -> Archive:
    """The archive at `path`, checked (see the module docstring); an EventError when it is refused."""
    entries = count_entries(path, max_members)
    if entries > max_members:
        raise _refuse(path, f"more than {max_members} entries (unpack_max_members): refused as a zip bomb",
                      "ZipBomb", limit=max_members)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise _refuse(path, f"not a readable zip archive ({exc})", "CorruptArchive") from exc
    try:
        infos = archive.infolist()
        if len(infos) > max_members:  # the parse found more than the count said
            raise _refuse(path, f"{len(infos)} entries, more than {max_members} (unpack_max_members): "
                          "refused as a zip bomb", "ZipBomb", limit=max_members)
        members, skipped = _select(path, infos)
        declared = sum(m.info.file_size for m in members)
        if declared > max_bytes:
            raise _refuse(path, f"its members hold {declared} bytes uncompressed, more than {max_bytes} "
                          "(unpack_max_bytes): refused as a zip bomb", "ZipBomb", limit=max_bytes, declared=declared)
        if not members:
            raise _refuse(path, f"holds no file to process ({len(skipped)} skipped, folders aside)", "EmptyArchive")
    except BaseException:
        archive.close()
        raise
    return Archive(path, archive, members, skipped, max_bytes)


def count_entries(path: Path, stop_after: int) -> int:
    """The entries of the central directory, read from its raw headers (no ZipInfo is built), up to
    stop_after + 1. An EventError when there is no end-of-central-directory record or the central
    directory is not where it says."""
    try:
        with open(path, "rb") as fh:
            start, size = _central_directory(path, fh)
            fh.seek(start)
            count = consumed = 0
            while consumed < size and count <= stop_after:
                head = fh.read(_CENTRAL.size)
                if len(head) < _CENTRAL.size or head[:4] != b"PK\x01\x02":
                    raise _refuse(path, "its central directory is damaged", "CorruptArchive")
                fields = _CENTRAL.unpack(head)
                variable = fields[-7] + fields[-6] + fields[-5]  # name, extra field, comment lengths
                fh.seek(variable, os.SEEK_CUR)
                consumed += _CENTRAL.size + variable
                count += 1
            return count
    except OSError as exc:
        raise _refuse(path, f"cannot be read ({exc.strerror})", "CorruptArchive") from exc


def _central_directory(path: Path, fh: IO[bytes]) -> tuple[int, int]:
    """(offset, size) of the central directory, from the end records (zip64 included); the
    offset is where the end record says it ends minus its size, as zipfile finds it in an archive
    with data prepended (a self-extractor)."""
    end = fh.seek(0, os.SEEK_END)
    tail_start = max(0, end - (_EOCD.size + 0xFFFF))
    fh.seek(tail_start)
    tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise _refuse(path, "not a zip archive (no end of central directory)", "CorruptArchive")
    eocd_at = tail_start + at
    size = _EOCD.unpack_from(tail, at)[-3]
    # zip64 (whatever the end record says: some writers always add it): its end record, then its
    # locator, just before the end record, as zipfile reads them
    locator_at = eocd_at - _EOCD64_LOCATOR.size
    record_at = locator_at - _EOCD64.size
    if locator_at >= 0:
        fh.seek(locator_at)
        if fh.read(4) == b"PK\x06\x07":
            if record_at < 0:
                raise _refuse(path, "its zip64 end record is missing", "CorruptArchive")
            fh.seek(record_at)
            record = fh.read(_EOCD64.size)
            if len(record) < _EOCD64.size or record[:4] != b"PK\x06\x06":
                raise _refuse(path, "its zip64 end record is damaged", "CorruptArchive")
            size = _EOCD64.unpack(record)[8]
            return record_at - size, size
    return eocd_at - size, size


def _select(path: Path, infos: list[zipfile.ZipInfo]) -> tuple[list[Member], list[dict[str, str]]]:
    """The members to process and those skipped (name, why); an EventError for an unsafe archive."""
    members: list[Member] = []
    skipped: list[dict[str, str]] = []
    for info in infos:
        parts = _safe_parts(path, info.filename)
        if info.is_dir() or not parts:
            continue
        why = _skip_reason(info, parts)
        if why:
            skipped.append({"name": "/".join(parts), "why": why})
            continue
        if info.flag_bits & 0x1:
            raise _refuse(path, f"member {'/'.join(parts)!r} is encrypted", "EncryptedMember", member=info.filename)
        members.append(Member(info, parts))
    files: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()
    for member in members:
        if member.parts in files:
            raise _refuse(path, f"member {member.name!r} appears twice", "DuplicateMember", member=member.name)
        files.add(member.parts)
        folders.update(member.parts[:i] for i in range(1, len(member.parts)))
    for parts in sorted(files & folders):
        name = "/".join(parts)
        raise _refuse(path, f"{name!r} is both a member and a folder of members", "DuplicateMember", member=name)
    return members, skipped


def _safe_parts(path: Path, name: str) -> tuple[str, ...]:
    """The member's path components; an EventError for a name that would leave the folder it is
    extracted into (absolute, a drive, '..': "zip slip") or that no file system could hold."""
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":" and text[0].isalpha()):
        raise _refuse(path, f"member {name!r} has an absolute path", "UnsafeMember", member=name)
    parts = tuple(part for part in text.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _refuse(path, f"member {name!r} points outside the archive's folder ('..')", "UnsafeMember",
                      member=name)
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in parts):
        raise _refuse(path, f"member {name[:80]!r}... has a name longer than {MAX_NAME_BYTES} bytes",
                      "UnsafeMember", member=name)
    return parts


def _skip_reason(info: zipfile.ZipInfo, parts: tuple[str, ...]) -> str | None:
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # made on Unix
        return "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
    if any(part.startswith(".") or part in SYSTEM_NAMES for part in parts):
        return "a hidden or system file"
    return None


def extract(archive: Archive, member: Member, root: Path, inv: Invocation | None = None) -> Path:
    """Write `member` under `root` (its path kept) and return its path. Every byte counts against
    the archive's max_bytes: an EventError when a member proves corrupt or unpacks past the cap, a
    StorageError when the work directory has no room for it. `inv`: the deadline and the shutdown
    flag, looked at between chunks."""
    dest = root.joinpath(*member.parts)
    _folders(root, member.parts[:-1])
    free = shutil.disk_usage(root).free
    if member.info.file_size > free:
        raise StorageError(f"archive {archive.path.name}: member {member.name!r} needs {member.info.file_size} "
                           f"bytes, the work directory has {free} free", archive=archive.path.name,
                           member=member.name, cause="NoRoom")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    os.fchmod(fd, 0o644)  # whatever the umask: an isolated model reads it, and writes nothing beside it
    try:
        with os.fdopen(fd, "wb") as out, archive.zip.open(member.info) as src:
            for chunk in _chunks(src):
                archive.written += len(chunk)
                if archive.written > archive.max_bytes:
                    raise _refuse(archive.path, f"member {member.name!r} unpacks past {archive.max_bytes} bytes "
                                  "(unpack_max_bytes), more than its header said: refused as a zip bomb", "ZipBomb",
                                  member=member.name, limit=archive.max_bytes)
                out.write(chunk)
                if inv is not None:
                    inv.check(f"unpacking {member.name}")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        dest.unlink(missing_ok=True)
        raise _refuse(archive.path, f"member {member.name!r} cannot be unpacked ({exc})", "CorruptArchive",
                      member=member.name) from exc
    except OSError as exc:  # the work directory's disk
        dest.unlink(missing_ok=True)
        raise StorageError(f"archive {archive.path.name}: cannot unpack member {member.name!r} into the work "
                           f"directory: {exc.strerror or exc}", archive=archive.path.name, member=member.name) from exc
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def _folders(root: Path, parts: tuple[str, ...]) -> Path:
    """root/parts..., each folder made (mode 0755: the model may enter, never write) when absent."""
    folder = root
    for part in parts:
        folder = folder / part
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        folder.chmod(0o755)
    return folder


def _chunks(src: IO[bytes]) -> Iterator[bytes]:
    while chunk := src.read(CHUNK):
        yield chunk


@dataclass
class _Progress:
    """What the record tells of the archive (record.extra["unpack"])."""

    archive: str
    total: int
    skipped: list[dict[str, str]]
    entries: list[dict[str, Any]] = field(default_factory=list)
    succeeded: int = 0
    failed: list[tuple[str, ConveyorError]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, entry: dict[str, Any]) -> None:
        """Every failed member's entry (MAX_FAILED at most), the first MEMBERS_SHOWN others."""
        if entry["status"] != "SUCCEEDED" or self.succeeded <= MEMBERS_SHOWN:
            self.entries.append(entry)

    def to_dict(self) -> dict[str, Any]:
        done = self.succeeded + len(self.failed)
        return {
            "archive": self.archive,
            "members": self.total,
            "succeeded": self.succeeded,
            "failed": len(self.failed),
            "not_run": self.total - done,
            "skipped": self.skipped[:MEMBERS_SHOWN],
            "unpack_seconds": round(self.seconds, 4),
            "results": self.entries,
        }


def handle_input(
    job: Job, inv: Invocation, record: ResultRecord, work: Path, required: bool
) -> tuple[HandlerResult, Path]:
    """The handler's turn of a record: the input through the model as it is, or (unpack: zip, an
    archive) each of its members. Returns the result and the folder whose files are the record's
    outputs. `required`: a member whose model writes no file fails."""
    settings = job.config.conveyor
    if settings.unpack is None or inv.input_path is None or not is_archive(inv.input_path):
        return job.handler.handle(inv), inv.output_dir
    archive = open_archive(inv.input_path, settings.unpack_max_members, settings.unpack_max_bytes)
    try:
        return _run_members(job, inv, record, work, archive, required)
    finally:
        archive.close()


def _run_members(
    job: Job, inv: Invocation, record: ResultRecord, work: Path, archive: Archive, required: bool
) -> tuple[HandlerResult, Path]:
    members_root, tree = work / MEMBERS_DIR, work / TREE_DIR
    for folder in (members_root, tree):
        folder.mkdir()
        folder.chmod(0o755)  # Conveyor's: the model may enter, never write (under conveyor.isolate_model)
    progress = _Progress(archive.path.name, len(archive.members), archive.skipped)
    log.info("unpacking %s: %d member(s) to process, %d skipped", archive.path.name, len(archive.members),
             len(archive.skipped))
    last = HandlerResult()
    try:
        for index, member in enumerate(archive.members, 1):
            check_shutdown(job)
            if len(progress.failed) >= MAX_FAILED:
                log.warning("%d members failed: the other %d of %s are not run", MAX_FAILED,
                            progress.total - index + 1, archive.path.name)
                break
            started = time.monotonic()
            path = extract(archive, member, members_root, inv)
            progress.seconds += time.monotonic() - started
            try:
                out = _output_folder(tree, (archive.stem, *member.parts), inv)
                last = _run_member(job, inv, member, index, progress, path, members_root, out, required) or last
            finally:
                path.unlink(missing_ok=True)
    finally:
        record.extra["unpack"] = progress.to_dict()
    if progress.failed:
        name, first = progress.failed[0]
        raise HandlerError(
            f"{len(progress.failed)} of the {progress.total} member(s) of {archive.path.name} failed, so none of "
            f"its outputs is published; first {name}: {first.message}",
            exit_code=first.context.get("exit_code"),
            failed_members=[name for name, _ in progress.failed],
        )
    return HandlerResult(exit_code=0, stdout_path=last.stdout_path, details=last.details), tree


def _run_member(
    job: Job,
    inv: Invocation,
    member: Member,
    index: int,
    progress: _Progress,
    path: Path,
    members_root: Path,
    out: Path,
    required: bool,
) -> HandlerResult | None:
    """One member through the model: its entry in the record; its result, None when it failed."""
    env = {**inv.env, "INPUT_FILE_PATH": str(path), "TMP_INPUT_DIR": str(members_root), "TMP_OUTPUT_DIR": str(out)}
    one = replace(inv, input_path=path, input_dir=members_root, output_dir=out, env=env)
    _note_in_log(inv, f"[conveyor] member {index}/{progress.total}: {member.name}\n")
    log.info("member %d/%d of %s: %s", index, progress.total, progress.archive, member.name)
    try:
        result = job.handler.handle(one)
        files = collect_outputs(out)
        if required and not files:
            raise NoOutputError("the model finished but wrote no output file")
    except (HandlerTimeout, Interrupted):
        raise  # the record's deadline, or a termination signal: the archive stops here
    except HandlerError as exc:
        log.warning("member %s of %s failed: %s", member.name, progress.archive, exc.message)
        progress.failed.append((member.name, exc))
        progress.add({"name": member.name, "status": "FAILED", "error": exc.to_dict()})
        return None
    progress.succeeded += 1
    progress.add({"name": member.name, "status": "SUCCEEDED", "outputs": len(files)})
    return result


def _output_folder(tree: Path, parts: tuple[str, ...], inv: Invocation) -> Path:
    """The member's own, new output folder (its parents Conveyor's), given to the model's user."""
    out = _folders(tree, parts[:-1]) / parts[-1]
    out.mkdir()  # new: no member's path is a folder of another (open_archive)
    out.chmod(0o755)
    if inv.user is not None:
        inv.user.hand_over(out)
    return out


def _note_in_log(inv: Invocation, line: str) -> None:
    """A line in the model's log (its tail goes to the record), while the log has room."""
    try:
        if inv.log_file.stat().st_size < inv.log_max_bytes:
            with open(inv.log_file, "ab") as fh:
                fh.write(line.encode("utf-8", "backslashreplace"))
    except OSError:
        pass
