"""conveyor.handlers.deepaas with the real deepaas 2.6 package and small model plugins the tests ship.

The plugins live in tests/plugins/ and are installed (editable) by `make install`:
    conveyor-demo      JSON / text / PNG / ZIP results, PNG and ZIP as BytesIO or as an open file
    conveyor-echo      echoes its arguments (file argument `audio`)
    conveyor-broken    raises; conveyor-deleter deletes its input; conveyor-sleeper sleeps
    conveyor-triple    the ai4os demo app's shape: three required file arguments, a ranged int
so "several models installed at once" is the normal state here: every handler names its model,
except in the tests of the unnamed case. Child-process modes (cli, predict) cost about 0.7 s per
call (deepaas's imports), so each is exercised a few times, not in every combination.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from conveyor.config import ConveyorSettings, FunctionConfig, HandlerSpec
from conveyor.deadline import Deadline
from conveyor.errors import ConfigError, HandlerError, HandlerTimeout, NoOutputError
from conveyor.events import ObjectRef
from conveyor.handler import Invocation, handler_class
from conveyor.handlers.deepaas import DeepaasHandler, script_interpreter, sniff_extension, write_result

pytest.importorskip("deepaas", reason="the deepaas extra is not installed (pip install -e '.[deepaas]')")
pytestmark = [
    # deepaas-cli recognises a file argument only as a plain fields.Field (demo_app's pattern), which
    # marshmallow 3.26 deprecates; webargs 5 (pinned by deepaas) still reads marshmallow.__version__.
    pytest.mark.filterwarnings("ignore:`Field` should not be instantiated"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:webargs"),
]

PLUGINS = Path(__file__).parent / "plugins"
PLUGIN_PROJECTS = [PLUGINS / "conveyor-demo-model", PLUGINS / "conveyor-test-models"]
MODELS = {"conveyor-demo", "conveyor-echo", "conveyor-broken", "conveyor-deleter", "conveyor-sleeper",
          "conveyor-triple"}
VENV_BIN = Path(sys.executable).parent
PATH = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)])
PNG = b"\x89PNG\r\n\x1a\n"
DATA = b"a small input file\n" * 10


@pytest.fixture(scope="session", autouse=True)
def deepaas_plugins() -> None:
    """The test plugins, installed; `make install` does it, this only catches a venv that predates them."""
    installed = {ep.name for ep in entry_points(group="deepaas.v2.model")}
    if MODELS <= installed:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    for project in PLUGIN_PROJECTS:
        cmd += ["-e", str(project)]
    subprocess.run(cmd, check=True)
    for project in PLUGIN_PROJECTS:  # this process read its .pth files before the install
        sys.path.insert(0, str(project))
    importlib.invalidate_caches()
    assert MODELS <= {ep.name for ep in entry_points(group="deepaas.v2.model")}


@pytest.fixture(autouse=True)
def model_temp_files(tmp_path, monkeypatch):
    """In-process models make their temporary files (returned open files ...) here, not in /tmp."""
    folder = tmp_path / "model-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))


@pytest.fixture
def make_handler():
    handlers: list[DeepaasHandler] = []

    def make(**options) -> DeepaasHandler:
        config = FunctionConfig(conveyor=ConveyorSettings(handler=HandlerSpec(name="deepaas", options=options)))
        handler = DeepaasHandler(config, options)
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        handler.close()


@pytest.fixture
def invocation(tmp_path):
    """One record's Invocation, built as the pipeline builds it: fresh folders, a fresh environment."""

    def make(name: str = "my cat.jpg", data: bytes = DATA, deadline: float = 60.0, path: str = PATH) -> Invocation:
        root = tmp_path / uuid.uuid4().hex[:8]
        input_dir, output_dir, work_dir = root / "input", root / "output", root / "work"
        for folder in (input_dir, output_dir, work_dir):
            folder.mkdir(parents=True)
        input_path = input_dir / name
        input_path.write_bytes(data)
        env = {**os.environ, "PATH": path, "INPUT_FILE_PATH": str(input_path), "TMP_OUTPUT_DIR": str(output_dir)}
        env.pop("DEEPAAS_V2_MODEL", None)
        return Invocation(
            input=ObjectRef(bucket="in", key=f"uploads/{name}"),
            input_path=input_path,
            input_dir=input_dir,
            output_dir=output_dir,
            work_dir=work_dir,
            env=env,
            deadline=Deadline.after(deadline),
            log=logging.getLogger("test.deepaas"),
            log_file=root / "model.log",
            shutdown=threading.Event(),
            request_id="req-1",
            grace_period=0.5,
        )

    return make


def run(handler: DeepaasHandler, inv: Invocation) -> Path:
    """Process one record; return its single output file."""
    handler.ensure_setup()
    result = handler.handle(inv)
    outputs = sorted(inv.output_dir.iterdir())
    assert len(outputs) == 1, outputs
    assert result.details["deepaas"]["output"] == outputs[0].name
    return outputs[0]


def fingerprint(path: Path, name: str = "my cat.jpg", data: bytes = DATA) -> dict:
    facts = json.loads(path.read_text(encoding="utf-8"))
    assert facts["file_name"] == name
    assert facts["size"] == len(data)
    import hashlib

    assert facts["sha256"] == hashlib.sha256(data).hexdigest()
    return facts


def assert_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["fingerprint.png", "result.json"]
        assert zf.read("fingerprint.png").startswith(PNG)
        assert json.loads(zf.read("result.json"))["file_name"] == "my cat.jpg"


# --- the handler is found by name ---------------------------------------------------------------


def test_registered_as_deepaas():
    assert handler_class("deepaas") is DeepaasHandler


# --- warm: in-process ----------------------------------------------------------------------------


def test_warm_json_png_zip_text_and_warm_once(make_handler, invocation):
    from conveyor_demo_model import api

    handler = make_handler(mode="warm", model="conveyor-demo", args={"label": "tabby"})
    before = api.WARM_CALLS
    handler.ensure_setup()
    assert handler.active == "warm"
    out = [run(handler, invocation()) for _ in range(3)]
    assert api.WARM_CALLS == before + 1  # warm() once for the handler, not per record
    assert [p.name for p in out] == ["my cat.json"] * 3
    facts = fingerprint(out[0])
    assert facts["label"] == "tabby"
    assert facts["content_type"] == "image/jpeg"


@pytest.mark.parametrize(
    ("accept", "as_file", "expected"),
    [
        ("image/png", False, "my cat.png"),
        ("image/png", True, "my cat.png"),
        ("application/zip", False, "my cat.zip"),
        ("application/zip", True, "my cat.zip"),
        ("text/plain", False, "my cat.txt"),
    ],
)
def test_warm_file_results(make_handler, invocation, accept, as_file, expected):
    handler = make_handler(mode="warm", model="conveyor-demo", accept=accept, args={"as_file": as_file})
    out = run(handler, invocation())
    assert out.name == expected
    if expected.endswith(".png"):
        assert out.read_bytes().startswith(PNG)
    elif expected.endswith(".zip"):
        assert_zip(out)
    else:
        assert out.read_text().startswith("my cat.jpg 190 ")


def test_warm_model_exception_is_a_handler_error_with_its_message(make_handler, invocation):
    handler = make_handler(mode="warm", model="conveyor-broken")
    inv = invocation()
    with pytest.raises(HandlerError, match="out of cheese") as caught:
        run(handler, inv)
    assert "conveyor-broken cannot read my cat.jpg" in caught.value.message
    assert "RuntimeError" in inv.log_file.read_text()  # the traceback, for the record's log tail
    assert list(inv.output_dir.iterdir()) == []


def test_warm_model_that_deletes_its_input_gets_a_private_copy(make_handler, invocation):
    handler = make_handler(mode="warm", model="conveyor-deleter")
    inv = invocation()
    out = run(handler, inv)
    assert inv.input_path.read_bytes() == DATA
    facts = fingerprint(out)
    assert Path(facts["deleted"]).name == "my cat.jpg"
    assert Path(facts["deleted"]).parent != inv.input_dir


def test_warm_several_models_pick_by_name_and_args_are_converted(make_handler, invocation):
    handler = make_handler(mode="warm", model="conveyor-echo", args={"repeat": "3", "tags": ["a", "b"]})
    facts = fingerprint(run(handler, invocation()))
    assert facts["model"] == "conveyor-echo"
    assert (facts["greeting"], facts["repeat"], facts["tags"]) == ("hello", 3, ["a", "b"])


def test_warm_several_models_none_named_fails_clearly(make_handler):
    handler = make_handler(mode="warm")
    with pytest.raises(ConfigError, match="several DEEPaaS models are installed") as caught:
        handler.ensure_setup()
    assert "conveyor-demo" in caught.value.message and "conveyor.handler.model" in caught.value.message


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mode": "warm", "model": "no-such-model"}, "'no-such-model' is not installed"),
        ({"mode": "warm", "model": "conveyor-echo", "args": {"repeat": "many"}}, "repeat"),
        ({"mode": "warm", "model": "conveyor-echo", "args": {"nope": 1}}, "nope"),
        ({"mode": "warm", "model": "conveyor-echo", "accept": "image/png"}, "no 'accept' predict argument"),
        ({"mode": "warm", "model": "conveyor-echo", "file_arg": "greeting2"}, "no predict argument 'greeting2'"),
    ],
)
def test_warm_config_errors_at_setup(make_handler, options, match):
    with pytest.raises(ConfigError, match=match):
        make_handler(**options).ensure_setup()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mode": "fast"}, "conveyor.handler.mode"),
        ({"mode": "predict", "args": {"x": 1}}, "deepaas-predict cannot pass predict arguments"),
        ({"args": ["x"]}, "conveyor.handler.args"),
        ({"model": ""}, "conveyor.handler.model"),
        ({"cli_shim": "yes"}, "conveyor.handler.cli_shim"),
    ],
)
def test_bad_options_fail_at_start(make_handler, options, match):
    with pytest.raises(ConfigError, match=match):
        make_handler(**options)


def test_unknown_options_are_ignored(make_handler, caplog):
    make_handler(mode="warm", model="conveyor-demo", api_key="x")
    assert "api_key" in caplog.text


def test_warm_deadline_abandons_the_call_then_sets_up_again(make_handler, invocation):
    handler = make_handler(mode="warm", model="conveyor-sleeper", args={"seconds": 1.5})
    started = time.monotonic()
    with pytest.raises(HandlerTimeout, match="passed its deadline") as caught:
        run(handler, invocation(deadline=0.3))
    assert time.monotonic() - started < 1.2
    assert caught.value.context["needs_restart"] is True
    assert handler.needs_restart
    # The abandoned call still runs: the next record fails at once instead of queueing behind it.
    with pytest.raises(HandlerError, match="must be restarted"):
        run(handler, invocation())
    deadline = time.monotonic() + 10
    while handler.needs_restart and time.monotonic() < deadline:
        time.sleep(0.05)
    handler.args = {"seconds": 0.0}
    facts = json.loads(run(handler, invocation()).read_text())
    assert facts["slept"] == 0.0


def test_warm_shutdown_interrupts_the_wait(make_handler, invocation):
    from conveyor.errors import Interrupted

    handler = make_handler(mode="warm", model="conveyor-sleeper", args={"seconds": 0.8})
    inv = invocation()
    threading.Timer(0.2, inv.shutdown.set).start()
    with pytest.raises(Interrupted):
        run(handler, inv)


# --- cli: deepaas-cli in a child process ------------------------------------------------------------


def test_cli_json_png_zip_and_open_file(make_handler, invocation):
    """One handler, several records: the probe runs once; the open-file result is written (shim)."""
    handler = make_handler(mode="cli", model="conveyor-demo")
    out = run(handler, invocation())
    assert out.name == "my cat.json"
    assert fingerprint(out)["label"] == "demo"
    assert handler._model is not None and handler._model.file_arg == "image"

    handler.accept = "image/png"
    handler.args = {"as_file": True}  # deepaas-cli >= 2.5.2 alone would drop this one
    out = run(handler, invocation())
    assert out.name == "my cat.png" and out.read_bytes().startswith(PNG)

    handler.accept = "application/zip"
    handler.args = {}
    out = run(handler, invocation())
    assert out.name == "my cat.zip"
    assert_zip(out)


def test_cli_without_shim_drops_open_files_as_deepaas_does(make_handler, invocation):
    handler = make_handler(mode="cli", model="conveyor-demo", accept="image/png", cli_shim=False)
    out = run(handler, invocation())  # a BytesIO: deepaas-cli writes it itself
    assert out.name == "my cat.png" and out.read_bytes().startswith(PNG)
    handler.args = {"as_file": True}
    with pytest.raises(NoOutputError, match="silently drops a returned open file"):
        run(handler, invocation())


def test_cli_model_exception_has_its_message(make_handler, invocation):
    handler = make_handler(mode="cli", model="conveyor-broken", file_arg="data")  # no probe
    with pytest.raises(HandlerError, match=r"conveyor-broken cannot read my cat\.jpg: out of cheese") as caught:
        run(handler, invocation())
    assert caught.value.context["exit_code"] == 1


def test_cli_deleting_model_and_selection_by_name(make_handler, invocation):
    handler = make_handler(mode="cli", model="conveyor-deleter", file_arg="data")
    inv = invocation()
    facts = fingerprint(run(handler, inv))
    assert facts["model"] == "conveyor-deleter"
    assert inv.input_path.read_bytes() == DATA
    # deepaas-cli's own temporary copy of the input lands in the record's work dir, not in /tmp
    assert Path(facts["deleted"]).is_relative_to(inv.work_dir)


def test_cli_passes_typed_args(make_handler, invocation):
    handler = make_handler(mode="cli", model="conveyor-echo", args={"repeat": 2, "tags": ["x"], "greeting": "hi"})
    facts = fingerprint(run(handler, invocation()))
    assert (facts["model"], facts["greeting"], facts["repeat"], facts["tags"]) == ("conveyor-echo", "hi", 2, ["x"])


def test_cli_several_models_none_named_fails_clearly(make_handler, invocation):
    handler = make_handler(mode="cli")
    with pytest.raises(ConfigError, match="several DEEPaaS models are installed"):
        run(handler, invocation())


def test_cli_deadline_kills_the_model(make_handler, invocation):
    handler = make_handler(mode="cli", model="conveyor-sleeper", file_arg="data", args={"seconds": 30})
    started = time.monotonic()
    with pytest.raises(HandlerTimeout):
        run(handler, invocation(deadline=1.5))
    assert time.monotonic() - started < 5


# --- predict: deepaas-predict in a child process --------------------------------------------------------


def test_predict_json_is_valid_json_named_after_the_input(make_handler, invocation):
    handler = make_handler(mode="predict", model="conveyor-demo")
    out = run(handler, invocation())
    assert out.name == "my cat.json"  # not out_my cat.json, and not a Python repr
    fingerprint(out)


@pytest.mark.parametrize(("accept", "expected"), [("image/png", "my cat.png"), ("application/zip", "my cat.zip")])
def test_predict_file_results(make_handler, invocation, accept, expected):
    handler = make_handler(mode="predict", model="conveyor-demo", accept=accept)
    out = run(handler, invocation())
    assert out.name == expected
    if expected.endswith(".zip"):
        assert_zip(out)
    else:
        assert out.read_bytes().startswith(PNG)


def test_predict_model_exception_has_its_message(make_handler, invocation):
    handler = make_handler(mode="predict", model="conveyor-broken")
    with pytest.raises(HandlerError, match="out of cheese"):
        run(handler, invocation())


def test_predict_deleting_model_gets_a_private_copy(make_handler, invocation):
    handler = make_handler(mode="predict", model="conveyor-deleter")
    inv = invocation()
    fingerprint(run(handler, inv))
    assert inv.input_path.read_bytes() == DATA


def test_predict_several_models_by_name_and_unnamed(make_handler, invocation):
    facts = fingerprint(run(make_handler(mode="predict", model="conveyor-echo"), invocation()))
    assert facts["model"] == "conveyor-echo"
    with pytest.raises(HandlerError, match="several models available"):
        run(make_handler(mode="predict"), invocation())


# --- several file arguments (the ai4os demo app's shape), and args checked alike in every mode ----------

WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 20


@pytest.fixture
def media(tmp_path, monkeypatch):
    """An audio and a video file in the working directory, named relatively in args as a user would."""
    folder = tmp_path / "cwd"
    (folder / "media").mkdir(parents=True)
    (folder / "media" / "song.wav").write_bytes(WAV)
    (folder / "media" / "clip.mp4").write_bytes(MP4)
    monkeypatch.chdir(folder)
    return {"audio": "media/song.wav", "video": "media/clip.mp4"}


def triple_facts(path: Path) -> dict:
    import hashlib

    facts = json.loads(path.read_text(encoding="utf-8"))
    expected = {"image": ("cat.png", PNG + DATA, "image/png"), "audio": ("song.wav", WAV, "audio/x-wav"),
                "video": ("clip.mp4", MP4, "video/mp4")}
    for name, (file_name, data, content_type) in expected.items():
        assert facts[name] == {"file_name": file_name, "size": len(data), "content_type": content_type,
                               "sha256": hashlib.sha256(data).hexdigest()}, name
    return facts


@pytest.mark.parametrize("mode", ["warm", "cli"])
def test_three_file_arguments_reach_the_model_as_uploads(make_handler, invocation, media, mode):
    """The input goes to the one file argument args leaves out (image); audio and video are paths in args."""
    handler = make_handler(mode=mode, model="conveyor-triple", args={**media, "intensity": 7})
    out = run(handler, invocation(name="cat.png", data=PNG + DATA))
    assert out.name == "cat.json"
    facts = triple_facts(out)
    assert (facts["intensity"], facts["flavour"]) == (7, "plain")
    assert handler._model is not None and handler._model.file_arg == "image"
    assert (Path("media/song.wav").read_bytes(), Path("media/clip.mp4").read_bytes()) == (WAV, MP4)


def test_three_file_arguments_same_output_in_warm_and_cli(make_handler, invocation, media):
    outputs = []
    for mode in ("warm", "cli"):
        handler = make_handler(mode=mode, model="conveyor-triple", file_arg="image", args=media)
        outputs.append(run(handler, invocation(name="cat.png", data=PNG + DATA)).read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    ("extra", "key", "said"),
    [
        ({"intensity": 500}, "intensity",
         "intensity: Must be greater than or equal to 1 and less than or equal to 100."),
        ({"intensity": "lots"}, "intensity", "intensity: Not a valid integer."),
        ({"flavour": "sour"}, "flavour", "flavour: Must be one of: plain, spicy."),
    ],
)
def test_args_are_refused_alike_in_every_mode(make_handler, invocation, media, extra, key, said):
    """The model's own schema decides, before it runs, in warm and cli mode alike: one message, exit 78."""
    messages = []
    for mode in ("cli", "warm"):
        handler = make_handler(mode=mode, model="conveyor-triple", file_arg="image", args={**media, **extra})
        inv = invocation(name="cat.png", data=PNG + DATA)
        with pytest.raises(ConfigError) as caught:
            run(handler, inv)
        assert caught.value.exit_code == 78
        assert caught.value.context["key"] == f"conveyor.handler.args.{key}"
        assert list(inv.output_dir.iterdir()) == []
        messages.append(caught.value.message)
    assert messages[0] == messages[1]
    assert messages[0] == f"key 'conveyor.handler.args.{key}': model 'conveyor-triple' rejects it: {said}"
    # deepaas-predict passes no predict arguments at all: refused as a configuration error too
    with pytest.raises(ConfigError, match=r"conveyor\.handler\.args.*deepaas-predict cannot pass"):
        make_handler(mode="predict", model="conveyor-triple", args={**media, **extra})


@pytest.mark.parametrize("mode", ["warm", "cli"])
def test_a_missing_file_argument_path_is_a_clear_error(make_handler, invocation, media, mode):
    args = {**media, "video": "media/gone.mp4"}
    handler = make_handler(mode=mode, model="conveyor-triple", file_arg="image", args=args)
    with pytest.raises(ConfigError) as caught:
        run(handler, invocation(name="cat.png", data=PNG + DATA))
    assert caught.value.context["key"] == "conveyor.handler.args.video"
    assert "file argument 'video' does not exist" in caught.value.message
    assert str(Path.cwd() / "media" / "gone.mp4") in caught.value.message


@pytest.mark.parametrize("mode", ["warm", "cli"])
def test_args_checks_shared_by_every_mode(make_handler, invocation, media, mode):
    options = {"mode": mode, "model": "conveyor-triple", "file_arg": "image"}
    cases = [
        ({**media, "image": "media/clip.mp4"}, "args.image", "gets the record's input file"),
        ({**media, "volume": 3}, "args.volume", "no predict argument(s) volume"),
        ({**media, "audio": 12}, "args.audio", "give it a file path"),
    ]
    for args, key, match in cases:
        with pytest.raises(ConfigError, match=re.escape(match)) as caught:
            run(make_handler(**options, args=args), invocation(name="cat.png", data=PNG + DATA))
        assert caught.value.context["key"] == f"conveyor.handler.{key}"


def test_an_accept_the_model_refuses_is_refused_alike(make_handler, invocation):
    """`accept` is checked against the model's choices in cli mode too, even with file_arg set."""
    messages = []
    for mode in ("cli", "warm"):
        handler = make_handler(mode=mode, model="conveyor-demo", file_arg="image", accept="audio/ogg")
        with pytest.raises(ConfigError) as caught:
            run(handler, invocation())
        assert caught.value.context["key"] == "conveyor.handler.accept"
        messages.append(caught.value.message)
    assert messages[0] == messages[1]
    assert messages[0].startswith("key 'conveyor.handler.accept': model 'conveyor-demo' rejects it: accept: Must be")


def test_the_probe_checks_args_in_the_models_python(tmp_path):
    """cli mode's probe loads args through the model's schema itself (it may not import Conveyor)."""
    from conveyor.handlers.deepaas.cli import PROBE_SCRIPT

    args = json.dumps({"intensity": 500, "flavour": "plain", "audio": "x.wav"})
    done = subprocess.run([sys.executable, "-I", str(PROBE_SCRIPT), "conveyor-triple", args],
                          cwd=tmp_path, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["errors"] == {"intensity": ["Must be greater than or equal to 1 and less than or equal to 100."]}
    assert report["fields"]["video"] == {"file": True, "required": True}


# --- auto ------------------------------------------------------------------------------------------


def test_auto_runs_warm_when_deepaas_imports(make_handler, invocation):
    handler = make_handler(model="conveyor-demo")
    fingerprint(run(handler, invocation()))
    assert handler.active == "warm"


@pytest.fixture
def no_deepaas_here(monkeypatch):
    """This process cannot import deepaas (as in an image whose models live in another Python)."""
    for name in [m for m in sys.modules if m == "deepaas" or m.startswith("deepaas.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "deepaas", None)


def test_auto_falls_back_to_cli(no_deepaas_here, make_handler, invocation):
    handler = make_handler(model="conveyor-demo")
    fingerprint(run(handler, invocation()))
    assert handler.active == "cli"


def test_auto_falls_back_to_predict_then_to_a_clear_error(no_deepaas_here, make_handler, invocation, tmp_path):
    only_predict = tmp_path / "bin"
    only_predict.mkdir()
    (only_predict / "deepaas-predict").symlink_to(VENV_BIN / "deepaas-predict")
    handler = make_handler(model="conveyor-demo")
    fingerprint(run(handler, invocation(path=str(only_predict))))
    assert handler.active == "predict"
    with pytest.raises(ConfigError, match="neither deepaas-cli nor deepaas-predict is on PATH"):
        run(make_handler(model="conveyor-demo"), invocation(path=str(tmp_path)))


def test_warm_mode_without_deepaas_is_a_config_error(no_deepaas_here, make_handler):
    with pytest.raises(ConfigError, match="deepaas does not import in this process"):
        make_handler(mode="warm", model="conveyor-demo").ensure_setup()


def test_model_choice():
    from conveyor.handlers.deepaas.selection import choose_model as _choose_model

    assert _choose_model(["only-one"], None) == "only-one"
    assert _choose_model(["a", "b"], "b") == "b"
    with pytest.raises(ConfigError, match="several DEEPaaS models are installed"):
        _choose_model(["a", "b"], None)


# --- writing results -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "accept", "name"),
    [
        ({"a": 1}, None, "x.json"),
        ([1, 2], "application/json", "x.json"),
        ('{"a": 1}', None, "x.json"),
        ("plain words", None, "x.txt"),
        ("a,b\n1,2\n", "text/csv", "x.csv"),
        (PNG + b"rest", None, "x.png"),
        (io.BytesIO(b"PK\x03\x04rest"), "application/json", "x.zip"),
        (io.BytesIO(b"\xff\xd8\xffjpeg"), None, "x.jpg"),
        (io.BytesIO(b"\x00\x01\x02"), None, "x.bin"),
        (b"whatever", "image/png", "x.png"),
    ],
)
def test_write_result_names(tmp_path, result, accept, name):
    assert write_result(result, tmp_path, "x", accept).name == name


def test_write_result_json_is_strict(tmp_path):
    out = write_result({"p": float("nan"), "t": (1, 2), 3: "three"}, tmp_path, "x")
    assert json.loads(out.read_text()) == {"p": None, "t": [1, 2], "3": "three"}


def test_write_result_open_file_uses_its_own_extension_last(tmp_path):
    src = tmp_path / "model-output.csv"
    src.write_bytes(b"\x01\x02binary-ish")
    with open(src, "rb") as fh:
        fh.read()  # position at the end: the whole file is still written
        out = write_result(fh, tmp_path / "out", "x")
    assert out.name == "x.csv" and out.read_bytes() == src.read_bytes()


def test_write_result_none_is_no_output(tmp_path):
    with pytest.raises(NoOutputError):
        write_result(None, tmp_path, "x")


def test_sniff_extension():
    assert sniff_extension(b"RIFF\x00\x00\x00\x00WAVEfmt ") == ".wav"
    assert sniff_extension(b"\x00\x00\x00\x18ftypmp42") == ".mp4"
    assert sniff_extension(b"") is None


def test_script_interpreter(tmp_path):
    python = sys.executable
    direct = tmp_path / "direct"
    direct.write_text(f"#!{python}\nfrom deepaas.cmd.cli import main\n")
    spaced = tmp_path / "spaced"
    spaced.write_text(f"#!/bin/sh\n'''exec' \"{python}\" \"$0\" \"$@\"\n' '''\nfrom deepaas.cmd.cli import main\n")
    via_env = tmp_path / "via_env"
    via_env.write_text("#!/usr/bin/env python3\nfrom deepaas.cmd.cli import main\n")
    wrapper = tmp_path / "wrapper"
    wrapper.write_text("#!/bin/sh\nexec /opt/other/deepaas-cli \"$@\"\n")
    assert script_interpreter(direct, module="deepaas.cmd.cli") == python
    assert script_interpreter(spaced, module="deepaas.cmd.cli") == python
    assert script_interpreter(via_env, path=str(VENV_BIN), module="deepaas.cmd.cli") == str(VENV_BIN / "python3")
    assert script_interpreter(wrapper, module="deepaas.cmd.cli") is None
    assert script_interpreter(tmp_path / "missing") is None


def test_accept_defaults_like_the_deepaas_api():
    """deepaas's API sends the first of `accept`'s choices when the model gives the field no default."""
    from marshmallow import fields, validate

    from conveyor.handlers.deepaas.selection import api_default_accept as _api_default_accept

    assert _api_default_accept(fields.Str(validate=validate.OneOf(["image/png", "application/json"]))) == "image/png"
    assert _api_default_accept(fields.Str(load_default="application/json", validate=validate.OneOf(["x/y"]))) is None
    assert _api_default_accept(None) is None


def test_the_child_scripts_import_nothing_of_conveyor():
    """probe.py and shim.py run in the model's own Python, where Conveyor may not be installed."""
    import ast

    from conveyor.handlers.deepaas.cli import PROBE_SCRIPT, SHIM_SCRIPT

    for script in (PROBE_SCRIPT, SHIM_SCRIPT):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert names and not [n for n in names if n.split(".")[0] == "conveyor"], (script, names)
