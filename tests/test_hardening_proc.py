"""Issue 14 with real processes and the real S3 server:

- item 2, the process half: no process of the model outlives its record. A model that leaves its
  process group (setsid, a double-forked daemon, a cleared environment) is still stopped before its
  outputs are collected, whether it exited, timed out or was interrupted, and what it leaves is reaped;
- item 3: a large event is linear (EVENT serialised once), a shutdown ends it at once;
- item 6: an event cannot name an object outside the definition's inputs (conveyor.accept_any_input).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conveyor import process
from conveyor.child import run_child
from conveyor.deadline import Deadline
from conveyor.errors import HandlerTimeout, Interrupted
from conveyor.handler import load_handler
from conveyor.outputs import OutputFolder
from conveyor.records import Status, results_in
from tests.support.inprocess import Pipeline
from tests.support.pipeline import body, keys, minio_event, oscar_event, records

PATH_ENV = {"PATH": "/usr/bin:/bin"}

# A double-forked daemon: fork, setsid, fork again, the middle one exits; the daemon writes its pid.
DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1], "w").write(str(os.getpid()))
        time.sleep(300)
    os._exit(0)
os.wait()
"""


def state(pid: int) -> str | None:
    """The process's state letter (Z: a zombie), None when there is no such process at all."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2]


def read_pids(path: Path, count: int = 1, timeout: float = 10.0) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        words = path.read_text().split() if path.exists() else []
        if len(words) >= count and path.read_text().endswith("\n"):
            return [int(w) for w in words]
        time.sleep(0.01)
    raise AssertionError(f"{path} never named {count} pid(s)")


def assert_gone(pids: list[int]) -> None:
    """Neither running nor a zombie: stopped and reaped."""
    assert {pid: state(pid) for pid in pids} == {pid: None for pid in pids}


def run(argv: list[str], tmp_path: Path, *, deadline: float = 30.0, shutdown: threading.Event | None = None) -> int:
    return run_child(
        argv,
        env=PATH_ENV,
        cwd=tmp_path,
        deadline=Deadline.after(deadline),
        shutdown=shutdown or threading.Event(),
        log=logging.getLogger("test.proc"),
        log_file=tmp_path / "model.log",
        grace=5.0,
    )


def left_behind(pids: Path) -> list[int]:
    """The pids escaping_script wrote."""
    return [*read_pids(pids, 2), int(pids.with_name("pids.daemon").read_text())]


def escaping_script(pids: Path) -> str:
    """A model that leaves three processes behind, none of them in its process group: a setsid
    shell's background sleep, a double-forked daemon, and a detached sleep with an empty environment."""
    return (
        f"setsid sh -c 'sleep 300 & echo $! >> {pids}' </dev/null >/dev/null 2>&1\n"
        f"{sys.executable} -c '{DAEMON}' {pids}.daemon\n"
        f"setsid env -i /bin/sleep 301 </dev/null >/dev/null 2>&1 &\n"
        f"echo $! >> {pids}\n"
        "sleep 0.5\n"  # long enough for the tree to be seen once: the cleared environment carries no mark
    )


def test_processes_that_left_the_group_do_not_outlive_a_model_that_exited(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    assert run(["/bin/sh", "-c", escaping_script(pids)], tmp_path) == 0  # promptly: not after the sleeps
    assert_gone(left_behind(pids))


def test_processes_that_left_the_group_do_not_outlive_a_model_that_timed_out(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    with pytest.raises(HandlerTimeout):
        run(["/bin/sh", "-c", escaping_script(pids) + "sleep 300\n"], tmp_path, deadline=3.0)
    assert_gone(left_behind(pids))


def test_processes_that_left_the_group_do_not_outlive_an_interrupted_model(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    shutdown = threading.Event()
    setter = threading.Thread(target=lambda: (read_pids(pids, 2), time.sleep(0.7), shutdown.set()))
    setter.start()
    try:
        with pytest.raises(Interrupted):
            run(["/bin/sh", "-c", escaping_script(pids) + "sleep 300\n"], tmp_path, shutdown=shutdown)
    finally:
        shutdown.set()
        setter.join()
    assert_gone(left_behind(pids))


def test_a_process_that_keeps_forking_while_it_is_stopped_is_stopped(tmp_path: Path) -> None:
    """It ignores SIGTERM and keeps spawning detached children: the grace ends in SIGKILL rounds."""
    pids = tmp_path / "pids"
    breeder = tmp_path / "breeder.sh"
    breeder.write_text(
        "trap '' TERM\n"
        "while :; do\n"
        "  setsid sh -c 'trap \"\" TERM; sleep 300' </dev/null >/dev/null 2>&1 &\n"
        f"  echo $! >> {pids}\n"
        "  sleep 0.05\n"
        "done\n"
    )
    script = f"setsid /bin/sh {breeder} </dev/null >/dev/null 2>&1 &\necho $! >> {pids}\nsleep 0.3\n"
    rc = run_child(
        ["/bin/sh", "-c", script], env=PATH_ENV, cwd=tmp_path, deadline=Deadline.after(30),
        shutdown=threading.Event(), log=logging.getLogger("test.proc"), log_file=tmp_path / "model.log", grace=0.5,
    )
    assert rc == 0
    assert_gone(read_pids(pids, 2))


# -- a record of the pipeline: the outputs are the model's as it left them -------------------------

SWAPPER = """printf original > "$TMP_OUTPUT_DIR/out.txt"
setsid sh -c 'sleep 0.5; printf swapped > "$0/out.txt"; sleep 300' "$TMP_OUTPUT_DIR" </dev/null >/dev/null 2>&1 &
echo $! > "$PIDS"
"""


def test_a_model_that_escapes_cannot_swap_its_output_after_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The escaped process would rewrite the output half a second later, while the (slowed) upload
    is under way; it is gone before the outputs are collected, so what is published is the model's."""
    pipe = Pipeline(tmp_path)
    pids = tmp_path / "pids"
    pipe.definition["conveyor"]["handler"] = {"name": "script", "command": SWAPPER}
    pipe.definition["environment"]["variables"]["PIDS"] = str(pids)
    pipe.put("in", "a.txt", b"input")
    seen: dict[int, str | None] = {}
    collect = OutputFolder.files

    def slow_collect(folder: OutputFolder) -> list[str]:
        files = collect(folder)
        pid = int(pids.read_text())
        seen[pid] = state(pid)  # the escaped process when the outputs are collected
        time.sleep(1.5)  # a slow store: the escaped process would have swapped the file by now
        return files

    monkeypatch.setattr(OutputFolder, "files", slow_collect)
    [record] = pipe.run(pipe.storage_event("in", ["a.txt"]), handler=load_handler(pipe.config))
    assert record.status == Status.SUCCEEDED, record.error
    assert list(seen.values()) == [None]  # stopped and reaped before collection
    assert pipe.read("out", "out.txt") == b"original"


# -- item 3: large events are linear -----------------------------------------------------------------


class CountingJson:
    """Stands for the json module in conveyor.process: counts serialisations of many records at once."""

    def __init__(self) -> None:
        self.whole = 0

    def dumps(self, obj: object, **kwargs: object) -> str:
        if isinstance(obj, dict) and len(obj.get("Records") or ()) > 1:
            self.whole += 1
        return json.dumps(obj, **kwargs)  # type: ignore[arg-type]

    loads = staticmethod(json.loads)


@pytest.mark.parametrize("count", [3, 600])
def test_the_event_is_serialised_once_whatever_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """A small event is EVENT whole for every record (the contract); one too large for an
    environment variable (600 records: over 128 KiB) gives each record its own record. Either way
    the whole event is serialised once, not once per record (100,000 records ran at 2 per second)."""
    pipe = Pipeline(tmp_path)
    keys = [f"k/{i:04d}.txt" for i in range(count)]
    for key in keys:
        pipe.put("in", key, b"x")
    raw = pipe.storage_event("in", keys)
    counter = CountingJson()
    monkeypatch.setattr(process, "json", counter)
    records = pipe.run(raw)
    assert [r.status for r in records] == [Status.SUCCEEDED] * count
    assert counter.whole == 1
    events = [json.loads(call.env["EVENT"]) for call in pipe.handler.calls]
    if count == 3:
        assert events == [raw["event"]] * count
    else:
        assert events == [{"Records": [record]} for record in raw["event"]["Records"]]


def test_a_shutdown_on_a_big_event_records_the_rest_at_once_with_one_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM after 3 of 2,000 records: the rest are not started (no work directory, no status
    upload, no log line each: neither a message nor a record protocol line), each gets a FAILED
    record in what run_event returns, and one line names and counts them."""
    pipe = Pipeline(tmp_path)
    pipe.definition["conveyor"]["status"] = {"storage_provider": "local.default", "path": "status"}
    keys = [f"k/{i:04d}.txt" for i in range(2000)]
    for key in keys:
        pipe.put("in", key, b"x")
    shutdown = threading.Event()
    pipe.handler.on_call = lambda inv: shutdown.set() if len(pipe.handler.calls) == 3 else None
    made = []
    real_mkdtemp = tempfile.mkdtemp
    caplog.set_level(logging.INFO)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(1) or real_mkdtemp(*a, **k))
        records = pipe.run(pipe.storage_event("in", keys), shutdown=shutdown)

    assert len(pipe.handler.calls) == 3 and len(made) == 3
    assert [r.input["key"] for r in records] == keys  # one record per input, in order
    assert [r.status for r in records[:2]] == [Status.SUCCEEDED] * 2
    assert records[2].error["kind"] == "interrupted" and not records[2].extra.get("not_started")
    rest = records[3:]
    assert {r.status for r in rest} == {Status.FAILED}
    assert {r.error["kind"] for r in rest} == {"interrupted"} and all(r.extra["not_started"] for r in rest)
    assert pipe.keys("status") == [f"in/{key}.json" for key in keys[:3]]  # no status upload for the rest
    logged = [r.getMessage() for r in caplog.records]
    assert [r["input"]["key"] for r in results_in(logged)] == keys[:3]  # the record protocol: those that ran
    assert [line for line in logged if "k/0999" in line] == []  # nobody logs a not-started input by itself
    [summary] = [line for line in logged if "not started" in line]
    assert "1997 of the event's 2000 input(s) not started" in summary
    assert "in/k/0003.txt" in summary and "in/k/0012.txt ... in/k/1999.txt" in summary


# -- item 6: the event can name any bucket ----------------------------------------------------------


def test_a_storage_event_naming_an_object_outside_the_inputs_is_refused(deploy, s3_client, bucket) -> None:
    """A body posted to the function names private/payroll.csv (another bucket, then the right bucket
    outside in/): nothing is downloaded, the model never runs, nothing is published; the record
    says why, and the run exits 65."""
    private = f"{bucket}-private"
    s3_client.create_bucket(Bucket=private)
    s3_client.put_object(Bucket=private, Key="payroll.csv", Body=b"secret salaries")
    s3_client.put_object(Bucket=bucket, Key="private/payroll.csv", Body=b"secret salaries")
    d = deploy('#!/bin/sh\ntouch "$MARKERS/ran"\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n')
    for where, key in ((private, "payroll.csv"), (bucket, "private/payroll.csv")):
        proc = d.run(oscar_event(where, key))
        stderr = proc.stderr.decode()
        assert proc.returncode == 65, stderr
        [record] = records(proc.stderr)
        assert record["status"] == "FAILED" and record["error"]["kind"] == "outside_inputs"
        assert (record["error"]["bucket"], record["error"]["key"]) == (where, key)
        assert "outside the function's input paths" in stderr and "conveyor.accept_any_input" in stderr
        assert record["bytes_in"] == 0 and "download" not in record["timings"]
        assert not (d.markers / "ran").exists()
        assert keys(s3_client, bucket, "out/") == [] and record["outputs"] == []
        assert "secret salaries" not in stderr


def test_accept_any_input_lets_an_event_name_any_bucket(deploy, s3_client, bucket) -> None:
    private = f"{bucket}-other"
    s3_client.create_bucket(Bucket=private)
    s3_client.put_object(Bucket=private, Key="payroll.csv", Body=b"salaries")
    d = deploy(accept_any_input=True)
    proc = d.run(oscar_event(private, "payroll.csv"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert body(s3_client, bucket, "out/payroll.csv") == b"salaries"


def test_sigterm_on_a_big_event_ends_with_one_summary(deploy, s3_client, bucket) -> None:
    """`conveyor run` on an event of 3,000 records, SIGTERM while the first runs: that record is
    FAILED (interrupted), the 2,999 others are counted in one summary line and one closing line,
    never logged one by one (which took 101 s for 100,000 records)."""
    d = deploy('#!/bin/sh\ntouch "$MARKERS/started"\nexec sleep 300\n')
    s3_client.put_object(Bucket=bucket, Key="in/0000.bin", Body=b"x")
    event = minio_event(bucket, "in/0000.bin")
    event["Records"] = [minio_event(bucket, f"in/{i:04d}.bin")["Records"][0] for i in range(3000)]
    proc = d.popen(None)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"storage_provider": "minio.default", "event": json.dumps(event)}).encode())
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch it again
    end = time.monotonic() + 60
    while not (d.markers / "started").exists():
        assert time.monotonic() < end and proc.poll() is None, "the script never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    stderr = err.decode()
    assert proc.returncode == 143, stderr
    [record] = records(err)  # the record protocol: only the one that ran
    assert record["input"]["key"] == "in/0000.bin" and record["error"]["kind"] == "interrupted"
    assert stderr.count("not started") == 2, stderr
    assert "2999 of the event's 3000 input(s) not started" in stderr
    assert "conveyor: interrupted error: 2999 input(s) not started" in stderr
    assert "in/2999.bin" in stderr and "in/1500.bin" not in stderr
    assert len(stderr.splitlines()) < 30
