"""Issue 14 (hardening), items 1, 2 and 8, against the real S3 server on loopback:

- a failing record or run never deletes outputs that another record or run published (duplicate
  deliveries, two records of one event mapping to one key, a writer that comes in between);
- every output is opened once, from a descriptor, and uploaded from it (symbolic links, FIFOs and
  an output folder swapped after collection publish nothing from outside the work directory);
- the record's deadline and SIGTERM bound the uploads too (a stalled store);
- incomplete multipart uploads are aborted; scratch left by dead processes is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import IOSpec, ProviderRef
from conveyor.records import ResultRecord, Status, status_key
from tests.support.lossy import LostAnswers
from tests.support.pipeline import Deployment, body, keys, oscar_event, records, s3_event

MiB = 1024 * 1024


class Stall:
    """A loopback listener that accepts every connection and never answers: a store that stalls.
    `reached` is set at the first connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.reached = threading.Event()
        self.held: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="stall", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.reached.set()

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        for conn in self.held:
            conn.close()


def _add_destination(d: Deployment, name: str, endpoint: str, path: str, kind: str = "minio") -> None:
    section = d.definition["storage_providers"][kind]
    section[name] = {**section["default"], "endpoint": endpoint}
    d.definition["output"].append({"storage_provider": f"{kind}.{name}", "path": path})


# -- item 1 (a): a duplicate delivery that fails keeps what the first run published --------------


@pytest.mark.parametrize("kind", ["minio", "s3"])
def test_a_failed_duplicate_run_keeps_what_the_first_run_published(deploy, s3_client, bucket, closed_port, kind):
    d = deploy(withdraw_timeout=1)
    d.definition["output"] = [{"storage_provider": f"{kind}.default", "path": f"{bucket}/out"}]
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"first")
    first = d.run(oscar_event(bucket, "in/x.bin"))
    assert first.returncode == 0, first.stderr.decode()
    published = keys(s3_client, bucket, "out/")
    assert published == ["out/key.txt", "out/x.bin"]
    # The same event again (at-least-once delivery); this time a second destination is down, so
    # the run fails after it has rewritten the first run's outputs (x.bin, the last file, goes there too).
    _add_destination(d, "down", f"http://127.0.0.1:{closed_port}", f"{bucket}/elsewhere", kind)
    d.definition["output"][-1]["suffix"] = [".bin"]
    second = d.run(oscar_event(bucket, "in/x.bin"))
    assert second.returncode == 74, second.stderr.decode()
    [record] = records(second.stderr)
    assert record["status"] == "FAILED" and record["outputs"] == []
    assert record["extra"]["kept"] == [f"{bucket}/{key}" for key in published]
    assert keys(s3_client, bucket, "out/") == published  # the SUCCEEDED run's outputs are all there
    assert body(s3_client, bucket, "out/x.bin") == b"first"
    assert f"kept {bucket}/out/x.bin" in second.stderr.decode()


def test_a_duplicate_run_stopped_during_its_uploads_keeps_what_the_first_run_published(deploy, s3_client, bucket):
    d = deploy()
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"first")
    first = d.run(oscar_event(bucket, "in/x.bin"))
    assert first.returncode == 0, first.stderr.decode()
    stall = Stall()
    _add_destination(d, "stalled", stall.endpoint, f"{bucket}/elsewhere")  # x.bin, the last file, goes there too
    d.definition["output"][-1]["suffix"] = [".bin"]
    proc = d.popen(oscar_event(bucket, "in/x.bin"))
    try:
        proc.stdin.write(json.dumps(oscar_event(bucket, "in/x.bin")).encode())
        proc.stdin.close()
        proc.stdin = None
        assert stall.reached.wait(60), "the run never reached its second destination"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)  # within the grace period (1 s), far from the store's timeouts
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        stall.close()
    assert proc.returncode == 143, stderr.decode()
    [record] = records(stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "interrupted"
    assert record["extra"]["kept"] == [f"{bucket}/out/key.txt", f"{bucket}/out/x.bin"]  # rewritten, not withdrawn
    assert keys(s3_client, bucket, "out/") == ["out/key.txt", "out/x.bin"]
    assert body(s3_client, bucket, "out/x.bin") == b"first"


# -- item 1: a writer that comes between this record's upload and its withdrawal -----------------


def run_in_process(d: Deployment, event: Any, opener: Any = None, **job: Any) -> list[ResultRecord]:
    """`conveyor run --platform oscar` in this process, with a store opener of the test's."""
    from conveyor.config import load_config
    from conveyor.events import load_event
    from conveyor.handler import load_handler
    from conveyor.job import Job, Stores
    from conveyor.platform import Platform
    from conveyor.process import run_event
    from conveyor.storage import open_store

    environ = d.env()
    config = load_config(environ, Platform.OSCAR, path=d.write(), secrets_dir=None)
    handler = load_handler(config)
    try:
        run = Job(config=config, platform=Platform.OSCAR, handler=handler, stores=Stores(config, opener or open_store),
                  base_env=environ, scratch_dir=d.scratch, request_id="in-process", **job)
        return run_event(run, load_event(json.dumps(event).encode()))
    finally:
        handler.close()


class Hooked:
    """A store that runs `before(key)` as each upload starts and `after(key)` once it succeeded
    (another writer, a swap ...), whether Conveyor uploads by path or from an open file."""

    def __init__(self, store: Any, after: Any = None, before: Any = None) -> None:
        self._store, self._after, self._before = store, after or (lambda key: None), before or (lambda key: None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def put_file(self, file: Any, bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        self._before(key)
        written = self._store.put_file(file, bucket, key, *args, **kwargs)
        self._after(key)
        return written

    def upload(self, src: Any, bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        self._before(key)
        sent = self._store.upload(src, bucket, key, *args, **kwargs)
        self._after(key)
        return sent


def _another_writer_races(deploy, s3_client, bucket, closed_port, kind: str, when: str) -> Any:
    """Run a record that creates out/x.bin and then fails (its second destination is down), while
    another writer publishes out/x.bin `when` ("before" or "after") this record's write of it."""
    from conveyor.storage import open_store

    d = deploy(withdraw_timeout=1)
    d.definition["output"] = [{"storage_provider": f"{kind}.default", "path": f"{bucket}/out", "suffix": [".bin"]}]
    _add_destination(d, "down", f"http://127.0.0.1:{closed_port}", f"{bucket}/elsewhere", kind)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"mine")

    def other_writer(key: str) -> None:
        if key == "out/x.bin":
            s3_client.put_object(Bucket=bucket, Key=key, Body=b"theirs")

    def opener(provider: Any, options: Any) -> Any:
        store = open_store(provider, options)
        return Hooked(store, **{when: other_writer}) if provider.ref.id == "default" else store

    [record] = run_in_process(d, oscar_event(bucket, "in/x.bin"), opener)
    assert record.status is Status.FAILED and record.error and record.error["kind"] == "storage"
    return record


@pytest.mark.parametrize("kind", ["minio", "s3"])
def test_a_failed_record_does_not_withdraw_what_another_writer_put_after_it(deploy, s3_client, bucket,
                                                                            closed_port, kind):
    """This record creates out/x.bin; another run publishes out/x.bin right after; this record
    then fails: its withdrawal must leave the other run's object (ETag compare: If-Match in S3)."""
    _another_writer_races(deploy, s3_client, bucket, closed_port, kind, "after")
    assert body(s3_client, bucket, "out/x.bin") == b"theirs"


@pytest.mark.parametrize("kind", ["minio", "s3"])
def test_a_key_another_writer_creates_between_the_check_and_the_write_is_not_withdrawn(deploy, s3_client, bucket,
                                                                                        closed_port, kind):
    """out/x.bin is absent at this record's check; another run publishes it before this record's
    create-only write (refused: If-None-Match in S3, a stat in the MinIO store), so it is not this
    record's to withdraw when the record then fails."""
    record = _another_writer_races(deploy, s3_client, bucket, closed_port, kind, "before")
    assert record.extra["kept"] == [f"{bucket}/out/x.bin"]
    assert keys(s3_client, bucket, "out/") == ["out/x.bin"]  # rewritten by this record, as a rerun is: not removed


# -- item 1 (b): two records of one event that map to the same output key ----------------------


def test_two_records_of_one_event_with_one_output_key_are_a_conflict(deploy, s3_client, bucket):
    status = {"storage_provider": "minio.default", "path": f"{bucket}/status"}
    d = deploy(status=status)
    names = ["in/a/x.bin", "in/b/x.bin"]  # both copied to out/x.bin (and both write out/key.txt)
    for name in names:
        s3_client.put_object(Bucket=bucket, Key=name, Body=name.encode())
    proc = d.run(s3_event(bucket, names), platform="batch", AWS_BATCH_JOB_ID="job-1")
    assert proc.returncode == 74, proc.stderr.decode()
    first, second = records(proc.stderr)
    assert first["status"] == "SUCCEEDED" and first["outputs"] == [f"{bucket}/out/key.txt", f"{bucket}/out/x.bin"]
    assert second["status"] == "FAILED" and second["outputs"] == [] and second["bytes_out"] == 0
    assert second["error"]["cause"] == "OutputConflict"
    assert f"{bucket}/in/a/x.bin" in second["error"]["message"]
    assert {c["target"] for c in second["error"]["conflicts"]} == {f"{bucket}/out/key.txt", f"{bucket}/out/x.bin"}
    # a's outputs are a's, whole
    assert keys(s3_client, bucket, "out/") == ["out/key.txt", "out/x.bin"]
    assert body(s3_client, bucket, "out/x.bin") == b"in/a/x.bin"
    assert body(s3_client, bucket, "out/key.txt") == b"in/a/x.bin"
    # a's stored record was re-written with the conflict
    where = status_key(IOSpec(ProviderRef("minio"), f"{bucket}/status"),
                       ResultRecord(input=first["input"], platform="batch", request_id="r", handler="script"))
    stored = json.loads(body(s3_client, *where))
    assert stored["status"] == "SUCCEEDED"
    assert stored["extra"]["conflicts"] == [
        {"target": f"{bucket}/out/key.txt", "with": f"{bucket}/in/b/x.bin"},
        {"target": f"{bucket}/out/x.bin", "with": f"{bucket}/in/b/x.bin"},
    ]
    assert "is also an output of" in proc.stderr.decode()


def test_records_of_one_event_with_distinct_keys_do_not_conflict(deploy, s3_client, bucket):
    d = deploy("#!/bin/sh\ncp \"$INPUT_FILE_PATH\" \"$TMP_OUTPUT_DIR/\"\n")
    names = ["in/a/x.bin", "in/b/y.bin"]
    for name in names:
        s3_client.put_object(Bucket=bucket, Key=name, Body=name.encode())
    proc = d.run(s3_event(bucket, names), platform="batch", AWS_BATCH_JOB_ID="job-2")
    assert proc.returncode == 0, proc.stderr.decode()
    assert keys(s3_client, bucket, "out/") == ["out/x.bin", "out/y.bin"]
    assert all("conflicts" not in r["extra"] for r in records(proc.stderr))


# -- item 2: every output is opened once, and uploaded from that descriptor ---------------------

SECRET = b"the secret the model must not publish"

THREE_OUTPUTS = """#!/bin/sh
printf a > "$TMP_OUTPUT_DIR/a.txt"; printf b > "$TMP_OUTPUT_DIR/b.txt"; printf c > "$TMP_OUTPUT_DIR/c.txt"
printf '%s' "$TMP_OUTPUT_DIR" > "$MARKERS/outdir"
"""


def _unblock_fifo_later(path: Path, after: float) -> None:
    """Should anything block in open() on the FIFO, open its other end after `after` seconds (a
    failing test then ends instead of hanging)."""

    def run() -> None:
        time.sleep(after)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # nobody is reading it (the fix), or it is gone

    threading.Thread(target=run, daemon=True).start()


def _swap(out: Path, name: str, secret: Path) -> None:
    """b.txt becomes a link to the secret, c.txt a FIFO."""
    (out / name).unlink()
    if name == "c.txt":
        os.mkfifo(out / name)
        _unblock_fifo_later(out / name, 10)
    else:
        (out / name).symlink_to(secret)


def test_an_output_swapped_once_opened_is_uploaded_from_its_descriptor(deploy, s3_client, bucket, tmp_path):
    """In this process: as the upload of b.txt starts, b.txt becomes a link to a secret file; as
    c.txt's starts, a FIFO. Both were opened already: what is uploaded is what the model wrote."""
    from conveyor.storage import open_store

    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    d = deploy(THREE_OUTPUTS)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")

    def swap(key: str) -> None:
        if key in ("out/b.txt", "out/c.txt"):
            _swap(Path((d.markers / "outdir").read_text()), key.removeprefix("out/"), secret)

    [record] = run_in_process(d, oscar_event(bucket, "in/x.bin"),
                              lambda provider, options: Hooked(open_store(provider, options), before=swap))
    assert record.status is Status.SUCCEEDED, record.error
    assert [body(s3_client, bucket, f"out/{n}.txt") for n in "abc"] == [b"a", b"b", b"c"]


def test_outputs_swapped_between_collection_and_opening_are_skipped(deploy, s3_client, bucket, tmp_path, caplog):
    """In this process: once a.txt is uploaded (b.txt and c.txt not yet opened), b.txt becomes a
    link to a secret file and c.txt a FIFO: both are skipped, with a warning; nothing blocks."""
    from conveyor.storage import open_store

    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    d = deploy(THREE_OUTPUTS)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")

    def swap(key: str) -> None:
        if key == "out/a.txt":
            out = Path((d.markers / "outdir").read_text())
            _swap(out, "b.txt", secret)
            _swap(out, "c.txt", secret)

    [record] = run_in_process(d, oscar_event(bucket, "in/x.bin"),
                              lambda provider, options: Hooked(open_store(provider, options), after=swap))
    assert record.status is Status.SUCCEEDED, record.error
    assert keys(s3_client, bucket, "out/") == ["out/a.txt"]
    assert record.outputs == [f"{bucket}/out/a.txt"]
    assert "skipping output b.txt" in caplog.text and "skipping output c.txt" in caplog.text


def test_the_output_folder_opens_each_file_once_without_following_links(tmp_path):
    """Swapped between the listing and the opening: a link, a FIFO and a folder turned link are
    skipped (None), without blocking; a file opened before its swap reads what it held."""
    from conveyor.outputs import OutputFolder

    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    for name in ("kept.txt", "link.txt", "fifo.txt", "sub/deep.txt"):
        (out / name).write_text(name)
    with OutputFolder.open(out) as folder:
        assert folder.files() == ["fifo.txt", "kept.txt", "link.txt", "sub/deep.txt"]
        kept = folder.open_file("kept.txt")
        (out / "kept.txt").unlink()
        (out / "kept.txt").symlink_to(secret)
        (out / "link.txt").unlink()
        (out / "link.txt").symlink_to(secret)
        (out / "fifo.txt").unlink()
        os.mkfifo(out / "fifo.txt")
        _unblock_fifo_later(out / "fifo.txt", 10)
        (out / "sub").rename(tmp_path / "moved")
        (out / "sub").symlink_to(tmp_path)
        assert kept is not None and kept.read() == b"kept.txt"
        kept.close()
        assert folder.open_file("link.txt") is None
        assert folder.open_file("fifo.txt") is None
        assert folder.open_file("sub/secret.txt") is None
    # the output folder itself replaced by a link
    os.rename(out, tmp_path / "old-out")
    out.symlink_to(tmp_path)
    assert OutputFolder.open(out) is None


def test_a_leftover_process_that_swaps_an_output_for_a_link_publishes_no_secret(deploy, s3_client, bucket, tmp_path):
    """A model leaves a process outside its group (setsid) that, as soon as the model has exited,
    would turn an output into a link to a secret file (while the 50 MB output before it is
    uploaded): the secret is never published. Two defences meet here: the leftover is stopped
    before the outputs are collected (child.py), and each output is read from the descriptor
    opened for it (the in-process swap tests above check that one alone)."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    script = f"""#!/bin/sh
head -c 50000000 /dev/zero > "$TMP_OUTPUT_DIR/a.bin"; printf b > "$TMP_OUTPUT_DIR/b.txt"
model=$$
setsid sh -c 'touch "$MARKERS/escaped"; while kill -0 '$model' 2>/dev/null; do :; done
ln -sf {secret} "$TMP_OUTPUT_DIR/b.txt"; echo $$ > "$MARKERS/swapper"' >/dev/null 2>&1 &
while [ ! -e "$MARKERS/escaped" ]; do sleep 0.01; done  # it has its own session: the group sweep misses it
"""
    d = deploy(script)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert (d.markers / "escaped").exists()  # the leftover did start
    published = {key: body(s3_client, bucket, key) for key in keys(s3_client, bucket, "out/")}
    assert SECRET not in published.values(), {k: v[:50] for k, v in published.items()}
    assert published.get("out/b.txt") == b"b" and "out/a.bin" in published


@pytest.mark.parametrize("target", ["secrets", "/proc/self"])
def test_an_output_folder_replaced_by_a_link_publishes_nothing(deploy, s3_client, bucket, tmp_path, target):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "key.pem").write_bytes(SECRET)
    link_to = secrets if target == "secrets" else Path(target)
    script = f"""#!/bin/sh
rm -rf "$TMP_OUTPUT_DIR"
ln -s {link_to} "$TMP_OUTPUT_DIR"
"""
    d = deploy(script)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 70, proc.stderr.decode()  # no output: the folder is not the model's any more
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "no-output"
    assert keys(s3_client, bucket, "out/") == []
    assert "not a directory any more" in proc.stderr.decode()


# -- item 2: deadlines and SIGTERM bound the uploads too ----------------------------------------


class HoldOn(LostAnswers):
    """A proxy to the real server that forwards every request (as LostAnswers does, losing no
    answer), except the requests whose request line holds `marker`: those wait `delay` seconds
    before they are forwarded, or (delay None) are held unanswered until close(): a store that
    stalls in the middle of an upload. `reached` is set when the first of them arrives."""

    def __init__(self, upstream: str, marker: str, delay: float | None = None) -> None:
        self.marker, self.delay = marker.encode(), delay
        self.reached = threading.Event()
        self._closing = threading.Event()
        super().__init__(upstream, method="NONE", path_part="/")

    def _proxy(self, client: socket.socket) -> None:
        line = client.recv(8192, socket.MSG_PEEK).split(b"\r\n", 1)[0]
        if self.marker in line:
            self.reached.set()
            if self.delay is None:
                self._closing.wait()
                return
            time.sleep(self.delay)
        super()._proxy(client)

    def close(self) -> None:
        self._closing.set()
        super().close()


def _through(d: Deployment, proxy: LostAnswers, kind: str = "minio") -> None:
    section = d.definition["storage_providers"][kind]
    section["proxied"] = {**section["default"], "endpoint": proxy.endpoint}
    d.definition["output"] = [{"storage_provider": f"{kind}.proxied", "path": f"{d.bucket}/out"}]


def _start(d: Deployment, event: Any) -> subprocess.Popen:
    proc = d.popen(event)
    proc.stdin.write(json.dumps(event).encode())
    proc.stdin.close()
    proc.stdin = None
    return proc


def _finish(proc: subprocess.Popen, timeout: float) -> bytes:
    """The run's stderr once it has ended: within `timeout` seconds, far less than the stores'
    own timeouts (60 s without a byte, three attempts), or the test fails."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"the run was still going after {timeout} s:\n{stderr.decode()[-3000:]}")
    return stderr


TWO_OUTPUTS = '#!/bin/sh\nprintf a > "$TMP_OUTPUT_DIR/a.txt"; printf b > "$TMP_OUTPUT_DIR/b.txt"\n'


def test_an_upload_to_a_stalled_store_ends_at_the_records_deadline(deploy, s3_client, bucket):
    d = deploy(TWO_OUTPUTS, timeout=3, grace_period=1)
    proxy = HoldOn(d.server.endpoint, f"PUT /{bucket}/out/b.txt")
    _through(d, proxy)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    try:
        proc = _start(d, oscar_event(bucket, "in/x.bin"))
        stderr = _finish(proc, 30)
        assert proxy.reached.is_set()
    finally:
        proxy.close()
    assert proc.returncode == 74, stderr.decode()
    [record] = records(stderr)
    assert record["status"] == "FAILED" and record["error"]["cause"] == "DeadlineExceeded"
    assert "out/b.txt" in record["error"]["message"]
    assert keys(s3_client, bucket, "out/") == []  # a.txt withdrawn within the grace


def test_sigterm_during_an_upload_to_a_stalled_store_ends_within_the_grace(deploy, s3_client, bucket):
    d = deploy(TWO_OUTPUTS, timeout=120, grace_period=2)
    proxy = HoldOn(d.server.endpoint, f"PUT /{bucket}/out/b.txt")
    _through(d, proxy)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    try:
        proc = _start(d, oscar_event(bucket, "in/x.bin"))
        assert proxy.reached.wait(60), "the upload of out/b.txt never started"
        proc.send_signal(signal.SIGTERM)
        stderr = _finish(proc, 30)
    finally:
        proxy.close()
    assert proc.returncode == 143, stderr.decode()
    [record] = records(stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "interrupted"
    assert keys(s3_client, bucket, "out/") == []


@pytest.mark.parametrize("kind", ["minio", "s3"])
def test_a_multipart_upload_stopped_by_sigterm_is_aborted(deploy, s3_client, bucket, kind):
    """SIGTERM while a part of a large output is on its way (the store answers it 1 s late): the
    upload is abandoned, and aborted before the record ends (no parts left on the server)."""
    from conveyor.storage import TransferOptions, open_store

    d = deploy('#!/bin/sh\nhead -c 12582912 /dev/urandom > "$TMP_OUTPUT_DIR/big.bin"\n', grace_period=30)
    proxy = HoldOn(d.server.endpoint, "partNumber=2", delay=1)
    _through(d, proxy, kind)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    small_parts = TransferOptions(multipart_threshold=5 * MiB, part_size=5 * MiB)
    shutdown = threading.Event()
    threading.Thread(target=lambda: proxy.reached.wait(60) and shutdown.set(), daemon=True).start()
    try:
        [record] = run_in_process(d, oscar_event(bucket, "in/x.bin"),
                                  lambda provider, options: open_store(provider, small_parts), shutdown=shutdown)
        uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    finally:
        proxy.close()
    assert proxy.reached.is_set()
    assert record.status is Status.FAILED and record.error and record.error["kind"] == "interrupted"
    assert uploads == []
    assert keys(s3_client, bucket, "out/") == []


# -- item 8: scratch left by dead Conveyor processes is removed at start ------------------------


def _marked(scratch: Path, name: str, mark: str | None) -> Path:
    work = scratch / f"conveyor-{name}"
    (work / "output").mkdir(parents=True)
    (work / "output" / "big.bin").write_bytes(b"x" * 1024)
    if mark is not None:
        (work / ".conveyor-owner").write_text(mark)
    return work


def test_scratch_of_dead_conveyor_processes_is_removed_and_live_ones_kept(tmp_path):
    from conveyor.scratch import scratch_dir, start_time

    namespace = os.readlink("/proc/self/ns/pid")
    dead = subprocess.Popen(["sleep", "60"])
    dead_mark = f"{dead.pid} {start_time(dead.pid)} {namespace}"
    dead.kill()
    dead.wait()
    me = os.getpid()
    scratch = tmp_path / "scratch"
    gone = [
        _marked(scratch, "dead", dead_mark),
        _marked(scratch, "recycled", f"{me} 1 {namespace}"),  # our pid, but another process's start time
    ]
    kept = [
        _marked(scratch, "alive", f"{me} {start_time(me)} {namespace}"),
        _marked(scratch, "unmarked", None),  # being created, or an older Conveyor's
        _marked(scratch, "elsewhere", f"{dead.pid} 1 pid:[1]"),  # another pid namespace: cannot tell
    ]
    other = scratch / "someone-elses"
    other.mkdir()
    assert scratch_dir({"CONVEYOR_SCRATCH": str(scratch)}) == scratch
    assert [p.exists() for p in gone] == [False, False]
    assert [p.exists() for p in kept] == [True, True, True]
    assert other.exists()


def test_a_run_marks_its_work_directory_and_sweeps_what_a_killed_run_left(deploy, s3_client, bucket):
    """A `conveyor run` killed with SIGKILL leaves its work directory; the next run removes it."""
    script = (
        '#!/bin/sh\necho $$ > "$MARKERS/model"\ncat "$TMP_OUTPUT_DIR/../.conveyor-owner" > "$MARKERS/owner"\n'
        'touch "$MARKERS/started"\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\nexec sleep 300\n'
    )
    d = deploy(script)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    proc = _start(d, oscar_event(bucket, "in/x.bin"))
    try:
        deadline = time.monotonic() + 30
        while not (d.markers / "started").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the model never started"
            time.sleep(0.05)
        left = [p.name for p in d.scratch.iterdir() if p.name.startswith("conveyor-")]
        assert len(left) == 1
        pid, _, _ = (d.markers / "owner").read_text().split()
        assert int(pid) == proc.pid  # marked by the run that owns it
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if (d.markers / "model").exists():  # the model runs in a session of its own: SIGKILL left it
            with contextlib.suppress(ProcessLookupError):
                os.kill(int((d.markers / "model").read_text()), signal.SIGKILL)
    assert (d.scratch / left[0]).exists()  # what SIGKILL leaves
    d.definition["init_script"] = str(d.tmp / "copy.sh")
    (d.tmp / "copy.sh").write_text('#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n')
    again = d.run(oscar_event(bucket, "in/x.bin"))
    assert again.returncode == 0, again.stderr.decode()
    assert not (d.scratch / left[0]).exists()
    assert "left in" in again.stderr.decode() and left[0] in again.stderr.decode()
    assert [p.name for p in d.scratch.iterdir() if p.name.startswith("conveyor-")] == []
