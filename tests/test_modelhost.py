"""The supervised model host (conveyor.modelhost): real host processes, real process groups.

The Probe handler below is loaded in the host by its `module:Class` name; what it does per record
is the input file's text (ok, hang, exit, kill, error, bug, escape, restart ...). Every setup()
appends the host's pid to the file the `setups` option names, so a test sees setup run again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conveyor.config import ConveyorSettings, FunctionConfig, HandlerSpec
from conveyor.config.model import ProviderRef, StorageProvider
from conveyor.deadline import Deadline
from conveyor.errors import ConfigError, HandlerError, HandlerTimeout, Interrupted, NoOutputError
from conveyor.events import ObjectRef
from conveyor.handler import Handler, HandlerResult, Invocation, load_handler
from conveyor.modelhost import HostedHandler, _host_config
from conveyor.procgroup import PROCESS_MARK
from tests.support.pipeline import exited as gone

pytestmark = pytest.mark.e2e  # real processes

PROBE = f"{__name__}:Probe"


class Probe(Handler):
    """A model in memory: hosted by default. The input's text says what to do."""

    name = "probe"

    @classmethod
    def hosted(cls, options) -> bool:
        return True

    def setup(self) -> None:
        if self.options.get("fail_setup"):
            raise ConfigError("the model's weights are missing", key="conveyor.handler.weights")
        if self.options.get("slow_setup"):
            time.sleep(3600)
        if self.options.get("setups"):
            with open(self.options["setups"], "a") as fh:
                fh.write(f"{os.getpid()}\n")

    def handle(self, inv: Invocation) -> HandlerResult:
        assert inv.input_path is not None
        action = inv.input_path.read_text().strip()
        pid_file = inv.work_dir / "pids"
        if action == "hang":
            time.sleep(3600)
        elif action == "stubborn":  # ignores SIGTERM: only SIGKILL ends it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(3600)
        elif action == "exit":
            os._exit(3)
        elif action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "error":
            raise NoOutputError("the model wrote nothing", output_dir="/somewhere")
        elif action == "print":  # a model that prints: never into a response on stdout
            print("model says hello", flush=True)
            os.write(1, b"and from C\n")
        elif action == "event":
            event = inv.event
            return HandlerResult(details={"kind": event.kind, "cmd_args": event.cmd_args, "raw": event.raw,
                                          "inputs": event.inputs, "input": inv.input})
        elif action == "bug":
            raise ValueError("boom")
        elif action == "restart":
            raise HandlerError("the model is wedged", needs_restart=True)
        elif action == "escape":  # a grandchild in its own session, its parent gone: only the mark finds it
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    pid_file.write_text(str(os.getpid()))
                    time.sleep(3600)
                os._exit(0)
            while not pid_file.exists():
                time.sleep(0.01)
            time.sleep(3600)
        (inv.output_dir / "out.txt").write_text(f"{action} by {os.getpid()}")
        return HandlerResult(details={"pid": os.getpid(), "uid": os.geteuid(), "mark": os.environ.get(PROCESS_MARK),
                                      "secret_env": os.environ.get("FUNCTION_CONFIG"),
                                      "keys": [p.secret_key for p in self.config.providers.values()]})


class Inline(Probe):
    name = "inline-probe"

    @classmethod
    def hosted(cls, options) -> bool:
        return False


def config(handler: str = PROBE, model_host: str = "auto", **options) -> FunctionConfig:
    return FunctionConfig(conveyor=ConveyorSettings(handler=HandlerSpec(name=handler, options=options),
                                                    model_host=model_host))


@pytest.fixture
def hosts():
    made: list[Handler] = []

    def make(**options) -> HostedHandler:
        handler = load_handler(config(**options))
        assert isinstance(handler, HostedHandler)
        made.append(handler)
        return handler

    yield make
    for handler in made:
        handler.close()


@pytest.fixture
def invocation(tmp_path):
    def make(action: str = "ok", deadline: float | None = 60.0, grace: float = 0.5) -> Invocation:
        root = tmp_path / uuid.uuid4().hex[:8]
        input_dir, output_dir, work_dir = root / "input", root / "output", root / "work"
        for folder in (input_dir, output_dir, work_dir):
            folder.mkdir(parents=True)
        input_path = input_dir / "job.txt"
        input_path.write_text(action)
        return Invocation(
            input=ObjectRef(bucket="in", key="job.txt"),
            input_path=input_path,
            input_dir=input_dir,
            output_dir=output_dir,
            work_dir=work_dir,
            env={"PATH": os.environ["PATH"]},
            deadline=Deadline.after(deadline),
            log=logging.getLogger("test.modelhost"),
            log_file=root / "model.log",
            shutdown=threading.Event(),
            request_id="req-1",
            grace_period=grace,
        )

    return make


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return all(gone(int(p)) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid)


def _pgid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError):
        return None


def setups(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


# -- which handlers are hosted ----------------------------------------------------------------------


def test_load_handler_hosts_what_the_handler_says_and_model_host_overrides():
    assert isinstance(load_handler(config()), HostedHandler)
    assert isinstance(load_handler(config(model_host="inline")), Probe)
    assert type(load_handler(config(f"{__name__}:Inline"))) is Inline
    forced = load_handler(config(f"{__name__}:Inline", model_host="process"))
    assert isinstance(forced, HostedHandler) and forced.target is Inline
    assert type(load_handler(config("script"))).__name__ == "ScriptHandler"


def test_a_hosted_handlers_options_are_checked_when_it_is_loaded():
    with pytest.raises(ConfigError, match=r"conveyor\.handler\.args"):
        load_handler(config("deepaas", mode="warm", args=["not", "a", "mapping"]))


def test_model_host_key_is_parsed_and_checked():
    from conveyor.config.settings import parse_settings
    from conveyor.config.values import Values

    values = Values("test.yaml")
    settings, _ = parse_settings(values, [({"model_host": "Process"}, "conveyor")])
    assert settings.model_host == "process"
    assert parse_settings(values, [({}, "conveyor")])[0].model_host == "auto"
    with pytest.raises(ConfigError, match="model_host"):
        parse_settings(values, [({"model_host": "thread"}, "conveyor")])


def test_the_host_gets_no_storage_keys():
    provider = StorageProvider(ProviderRef("minio"), access_key="AKIA1234", secret_key="s3cr3t-value-long")
    cfg = FunctionConfig(providers={"minio.default": provider})
    stripped = _host_config(cfg)
    assert stripped.providers["minio.default"].secret_key is None
    assert stripped.providers["minio.default"].access_key is None
    assert cfg.providers["minio.default"].secret_key == "s3cr3t-value-long"


# -- warm calls --------------------------------------------------------------------------------------


def test_one_setup_serves_many_records(hosts, invocation, tmp_path):
    marks = tmp_path / "setups"
    handler = hosts(setups=str(marks))
    assert not handler.ready
    handler.ensure_setup()
    assert handler.ready and handler.loads == 1
    pids = set()
    for _ in range(5):
        inv = invocation()
        result = handler.handle(inv)
        pids.add(result.details["pid"])
        assert (inv.output_dir / "out.txt").read_text() == f"ok by {result.details['pid']}"
        assert result.details["model_host"] == {"pid": handler.pid, "loads": 1, "restarts": 0}
    assert pids == {handler.pid} and handler.pid != os.getpid()
    assert setups(marks) == [handler.pid]
    assert handler.calls == 5


def test_the_host_is_a_marked_session_leader_without_secrets(invocation, monkeypatch):
    monkeypatch.setenv("FUNCTION_CONFIG", "name: secret-definition")
    provider = StorageProvider(ProviderRef("minio"), access_key="AKIA1234", secret_key="s3cr3t-value-long")
    settings = ConveyorSettings(handler=HandlerSpec(name=PROBE))
    handler = load_handler(FunctionConfig(providers={"minio.default": provider}, conveyor=settings))
    try:
        handler.ensure_setup()
        details = handler.handle(invocation()).details
        assert os.getsid(handler.pid) == handler.pid  # its own session and process group
        assert details["mark"] and details["secret_env"] is None and details["keys"] == [None]
    finally:
        handler.close()


def isolated() -> Handler:
    from conveyor.isolation import NEEDED_CAPS, has_capability

    if not all(has_capability(cap) for cap in NEEDED_CAPS.values()):
        pytest.skip("switching the model's user needs root (CAP_SETUID, CAP_SETGID, CAP_CHOWN)")
    settings = ConveyorSettings(handler=HandlerSpec(name=PROBE), isolate_model=True, model_user="65534:65534")
    return load_handler(FunctionConfig(conveyor=settings))


def python_reachable_by_nobody() -> bool:
    from conveyor.isolation import ModelUser, can_read

    return can_read(Path(sys.executable), ModelUser(65534, 65534)) and all(
        can_read(Path(entry), ModelUser(65534, 65534)) for entry in sys.path if entry and Path(entry).is_dir())


def test_under_isolate_model_an_unreachable_python_is_a_config_error():
    from conveyor.isolation import ModelUser, can_read

    handler = isolated()
    if can_read(Path(sys.executable), ModelUser(65534, 65534)):
        pytest.skip("this Python is one every user may reach")  # the next test runs instead
    with pytest.raises(ConfigError, match="cannot reach it") as caught:
        handler.ensure_setup()
    assert "conveyor.isolate_model" in caught.value.message and handler.pid is None


def test_under_isolate_model_the_host_runs_as_the_models_user(invocation):
    handler = isolated()
    if not python_reachable_by_nobody():  # the previous test runs instead
        pytest.skip("Python and Conveyor are not installed where every user may read them")
    try:
        handler.ensure_setup()
        inv = invocation()
        os.chown(inv.output_dir, 65534, 65534)  # as the pipeline hands the model its folders
        details = handler.handle(inv).details
        assert details["uid"] == 65534 and (inv.output_dir / "out.txt").stat().st_uid == 65534
    finally:
        handler.close()


def test_the_models_prints_go_to_stderr_not_stdout(hosts, invocation, capfd):
    handler = hosts()
    handler.ensure_setup()
    handler.handle(invocation("print"))
    out, err = capfd.readouterr()
    assert "model says hello" in err and "and from C" in err
    assert "model says" not in out and "from C" not in out


def test_the_event_and_input_arrive_without_their_payload(hosts, invocation):
    from conveyor.events import Event, InlineInput

    handler = hosts()
    handler.ensure_setup()
    inv = invocation("event")
    inline = InlineInput(data=b"x" * 100_000, file_name="job.txt", content_type="text/plain")
    inv.input = inline
    inv.event = Event(inputs=(inline,), raw={"body": "x" * 100_000}, kind="inline", cmd_args=("-v",))
    details = handler.handle(inv).details
    assert (details["kind"], details["cmd_args"], details["raw"], details["inputs"]) == ("inline", ("-v",), None, ())
    assert details["input"].file_name == "job.txt" and details["input"].data == b""


# -- a model that hangs, crashes, escapes ------------------------------------------------------------


@pytest.mark.parametrize("action", ["hang", "stubborn"])
def test_a_hung_model_is_killed_and_set_up_again(hosts, invocation, tmp_path, action):
    marks = tmp_path / "setups"
    handler = hosts(setups=str(marks))
    handler.ensure_setup()
    first = handler.pid
    started = time.monotonic()
    with pytest.raises(HandlerTimeout, match="passed its deadline") as caught:
        handler.handle(invocation(action, deadline=0.5, grace=0.3))
    assert time.monotonic() - started < 60  # not the model's hour
    assert caught.value.context["signal"] == ("SIGKILL" if action == "stubborn" else "SIGTERM")
    assert group_gone(first) and not handler.ready and handler.restarts == 1
    handler.ensure_setup()
    result = handler.handle(invocation())
    assert result.details["pid"] != first
    assert setups(marks) == [first, result.details["pid"]]
    assert result.details["model_host"]["restarts"] == 1 and handler.loads == 2


@pytest.mark.parametrize(("action", "how", "code"), [("exit", "exited with code 3", 3),
                                                     ("kill", "killed by SIGKILL", 137)])
def test_a_crashed_model_is_reported_and_set_up_again(hosts, invocation, action, how, code):
    handler = hosts()
    handler.ensure_setup()
    first = handler.pid
    with pytest.raises(HandlerError, match=how) as caught:
        handler.handle(invocation(action))
    assert type(caught.value) is HandlerError and caught.value.exit_code == 70
    assert caught.value.context["exit_code"] == code
    assert group_gone(first) and handler.restarts == 1
    assert handler.handle(invocation()).details["pid"] not in (first, None)


def test_a_grandchild_that_leaves_the_group_is_stopped_too(hosts, invocation):
    handler = hosts()
    handler.ensure_setup()
    inv = invocation("escape", deadline=1.5, grace=0.3)
    with pytest.raises(HandlerTimeout):
        handler.handle(inv)
    escaped = int((inv.work_dir / "pids").read_text())
    assert _pgid(escaped) in (None, escaped)  # it was in its own group
    assert gone(escaped)
    assert handler.handle(invocation()).details["pid"]


# -- errors keep their kind ----------------------------------------------------------------------------


def test_errors_come_back_as_the_same_kind_and_keep_the_host(hosts, invocation):
    handler = hosts()
    handler.ensure_setup()
    pid = handler.pid
    with pytest.raises(NoOutputError, match="the model wrote nothing") as caught:
        handler.handle(invocation("error"))
    assert caught.value.context == {"output_dir": "/somewhere"} and caught.value.kind == "no-output"
    with pytest.raises(HandlerError, match="ValueError: boom"):
        handler.handle(invocation("bug"))
    assert handler.pid == pid and handler.restarts == 0


def test_a_setup_error_keeps_its_kind(hosts):
    handler = hosts(fail_setup=True)
    with pytest.raises(ConfigError, match="weights are missing") as caught:
        handler.ensure_setup()
    assert caught.value.exit_code == 78 and not handler.ready and handler.pid is None


def test_needs_restart_gives_a_fresh_host(hosts, invocation):
    handler = hosts()
    handler.ensure_setup()
    first = handler.pid
    with pytest.raises(HandlerError, match="wedged; the model host was stopped") as caught:
        handler.handle(invocation("restart"))
    assert caught.value.context["needs_restart"] is True
    assert group_gone(first) and handler.restarts == 1
    assert handler.handle(invocation()).details["pid"] != first


# -- shutdown ---------------------------------------------------------------------------------------------


def test_shutdown_during_a_call_stops_the_host(hosts, invocation):
    handler = hosts()
    handler.ensure_setup()
    first = handler.pid
    inv = invocation("hang")
    threading.Timer(0.3, inv.shutdown.set).start()
    with pytest.raises(Interrupted, match="shutdown requested"):
        handler.handle(inv)
    assert group_gone(first)
    assert handler.handle(invocation()).details["pid"] != first


def test_close_from_another_thread_stops_a_call(hosts, invocation):
    handler = hosts()
    handler.ensure_setup()
    first = handler.pid
    threading.Timer(0.3, handler.close).start()
    with pytest.raises(Interrupted, match="closing"):
        handler.handle(invocation("hang"))
    assert group_gone(first)


def test_close_stops_a_setup_that_never_ends(hosts):
    handler = hosts(slow_setup=True)
    threading.Timer(0.5, handler.close).start()
    with pytest.raises(Interrupted, match="setting the model up"):
        handler.ensure_setup()
    assert handler.pid is None and not handler.ready


def test_close_runs_the_models_close_and_the_host_exits(hosts, invocation):
    handler = hosts()
    handler.ensure_setup()
    pid = handler.pid
    handler.handle(invocation())
    handler.close()
    assert group_gone(pid) and handler.pid is None and handler.restarts == 0


# -- under Lambda: a hung model no longer poisons the warm environment -------------------------------------


def test_lambda_app_hosts_the_model_and_survives_a_hang(tmp_path):
    from tests.support.inprocess import FakeContext, Pipeline

    pipe = Pipeline(tmp_path)
    pipe.definition["conveyor"]["handler"] = {"name": PROBE}
    pipe.definition["conveyor"]["grace_period"] = 0.3
    pipe.definition["conveyor"]["timeout"] = 1
    for name, text in (("a.txt", "ok"), ("b.txt", "hang"), ("c.txt", "ok"), ("d.txt", "ok")):
        pipe.put("in", name, text.encode())
    app = pipe.lambda_app()
    app.handler = load_handler(pipe.config)
    assert isinstance(app.handler, HostedHandler)
    try:
        outcomes = []
        for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
            try:
                app(pipe.storage_event("in", [name]), FakeContext(aws_request_id=f"req-{name}"))
                outcomes.append("ok")
            except HandlerTimeout:
                outcomes.append("timeout")
        assert outcomes == ["ok", "timeout", "ok", "ok"]
        assert app.handler.loads == 2 and app.handler.restarts == 1
    finally:
        app.handler.close()
    assert pipe.keys("out") == ["out.txt"]


# -- the DEEPaaS warm handler, hosted --------------------------------------------------------------------


def deepaas_invocation(invocation):
    inv = invocation("a picture")
    (inv.input_dir / "job.txt").rename(inv.input_dir / "cat.jpg")
    inv.input_path = inv.input_dir / "cat.jpg"
    return inv


def test_deepaas_warm_is_hosted_and_a_hung_prediction_is_killed(invocation):
    handler = load_handler(config("deepaas", mode="warm", model="conveyor-sleeper", args={"seconds": 30.0}))
    assert isinstance(handler, HostedHandler)
    try:
        handler.ensure_setup()
        first = handler.pid
        inv = deepaas_invocation(invocation)
        inv.deadline = Deadline.after(1.0)
        with pytest.raises(HandlerTimeout):
            handler.handle(inv)
        assert group_gone(first)
        handler.options = {**handler.options, "args": {"seconds": 0.0}}  # the next host boots with these
        inv = deepaas_invocation(invocation)
        result = handler.handle(inv)
        assert result.details["deepaas"]["mode"] == "warm"
        facts = json.loads((inv.output_dir / "cat.json").read_text())
        assert facts["slept"] == 0.0 and result.details["model_host"]["pid"] != first
    finally:
        handler.close()


def test_deepaas_and_darknet_say_when_they_are_hosted():
    from conveyor.handlers.darknet import DarknetHandler
    from conveyor.handlers.deepaas import DeepaasHandler

    assert DeepaasHandler.hosted({"mode": "warm"})
    assert not DeepaasHandler.hosted({"mode": "cli"}) and not DeepaasHandler.hosted({"mode": "predict"})
    assert DarknetHandler.hosted({"backend": "opencv"})
    assert not DarknetHandler.hosted({"backend": "cli"})
    assert not DarknetHandler.hosted({"backend": "auto", "threshold": 0.1})  # auto chooses cli then


def test_darknet_opencv_is_hosted_and_detects(invocation):
    from conveyor.handlers.darknet import DarknetHandler
    from conveyor.handlers.darknet.weights import DEFAULT_CFG, WEIGHTS_NAME, default_weights_dir
    from tests.support.requirements import need

    weights = default_weights_dir(os.environ)
    dog = Path("/usr/share/darknet/data/dog.jpg")
    need((weights / WEIGHTS_NAME).is_file() and DEFAULT_CFG.is_file() and dog.is_file(),
         "the YOLOv3-tiny weights (conveyor weights) and the darknet package's cfg and samples")
    handler = load_handler(config("darknet", backend="opencv", weights_dir=str(weights)))
    assert isinstance(handler, HostedHandler) and handler.target is DarknetHandler
    try:
        handler.ensure_setup()
        for _ in range(2):  # one network load, two records
            inv = invocation()
            inv.input_path.unlink()
            inv.input_path = inv.input_dir / "dog.jpg"
            inv.input_path.write_bytes(dog.read_bytes())
            result = handler.handle(inv)
            assert result.details["backend"] == "opencv" and "dog" in result.details["classes"]
            assert sorted(p.name for p in inv.output_dir.iterdir()) == ["dog.jpg", "dog.json"]
        assert result.details["model_host"] == {"pid": handler.pid, "loads": 1, "restarts": 0}
    finally:
        handler.close()


# -- through `conveyor run`: a real process, a real S3 server ------------------------------------------------


def test_conveyor_run_kills_a_hung_warm_model_and_fails_the_record(deploy, s3_client, bucket):
    from tests.support.pipeline import keys, oscar_event, records

    d = deploy(None, handler={"name": "deepaas", "mode": "warm", "model": "conveyor-sleeper",
                              "args": {"seconds": 3600}}, timeout=2, grace_period=1)
    s3_client.put_object(Bucket=bucket, Key="in/x.bin", Body=b"x")
    before = {p for p in os.listdir("/proc") if p.isdigit()}
    proc = d.run(oscar_event(bucket, "in/x.bin"))
    assert proc.returncode == 124, proc.stderr.decode()
    [record] = records(proc.stderr)
    assert record["status"] == "FAILED" and record["error"]["kind"] == "timeout"
    # the parent's kill at the deadline, or deepaas's own timeout (needs_restart) and then the kill
    assert "model host was stopped" in record["error"]["message"]
    assert keys(s3_client, bucket, "out/") == []
    leftovers = [int(p) for p in {p for p in os.listdir("/proc") if p.isdigit()} - before]
    # this run's hosts only (TMPDIR is the deployment's scratch): other tests run beside this one
    ours = f"TMPDIR={d.scratch}".encode()
    assert not [p for p in leftovers if not gone(p) and b"conveyor.modelhost" in _proc(p, "cmdline")
                and ours in _proc(p, "environ").split(b"\0")]


def _proc(pid: int, name: str) -> bytes:
    """/proc/<pid>/<name> (cmdline, environ); b"" when the process is gone."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def test_model_host_process_hosts_even_the_script_handler(tmp_path):
    from tests.support.inprocess import Pipeline

    pipe = Pipeline(tmp_path)
    pipe.definition["conveyor"]["handler"] = {"name": "script"}
    pipe.definition["conveyor"]["model_host"] = "process"
    pipe.definition["script"] = '#!/bin/sh\necho "$$" > "$TMP_OUTPUT_DIR/pid"\n'
    pipe.put("in", "a.txt", b"hello")
    handler = load_handler(pipe.config)
    assert isinstance(handler, HostedHandler)
    try:
        [record] = pipe.run(pipe.storage_event("in", ["a.txt"]), job=pipe.job(handler=handler))
        assert record.ok, record.error
        assert record.extra["model_host"]["pid"] == handler.pid
        assert pipe.keys("out") == ["pid"] and int(pipe.read("out", "pid")) not in (os.getpid(), handler.pid)
    finally:
        handler.close()
