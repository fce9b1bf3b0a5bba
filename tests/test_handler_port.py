"""conveyor.handler, the port: the registry, Invocation's checks and log reading, the class-level hooks."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from conveyor.config import ConveyorSettings, FunctionConfig, HandlerSpec
from conveyor.deadline import Deadline
from conveyor.errors import ConfigError, HandlerTimeout, Interrupted
from conveyor.events import ObjectRef
from conveyor.handler import Handler, HandlerResult, Invocation, handler_class, known_handlers, load_handler
from conveyor.handlers.darknet import DarknetHandler
from conveyor.handlers.deepaas import DeepaasHandler
from conveyor.handlers.script import ScriptHandler
from conveyor.local.definition import model_named


def invocation(tmp_path: Path, *, deadline: float | None = 10.0) -> Invocation:
    return Invocation(
        input=ObjectRef(bucket="b", key="k.jpg"),
        input_path=None,
        input_dir=tmp_path,
        output_dir=tmp_path,
        work_dir=tmp_path,
        env={},
        deadline=Deadline.after(deadline),
        log=logging.getLogger("test.port"),
        log_file=tmp_path / "model.log",
        shutdown=threading.Event(),
    )


def test_known_handlers_and_their_classes():
    assert {"script", "deepaas", "darknet"} <= set(known_handlers())
    assert known_handlers() == sorted(known_handlers())
    assert handler_class("deepaas") is DeepaasHandler
    assert handler_class("darknet") is DarknetHandler
    assert handler_class("conveyor.handlers.deepaas:DeepaasHandler") is DeepaasHandler  # as images name it
    assert handler_class("conveyor.handlers.darknet:DarknetHandler") is DarknetHandler
    with pytest.raises(ConfigError, match=r"unknown handler 'nope' \(known: .*darknet, deepaas.*script"):
        handler_class("nope")
    config = FunctionConfig(conveyor=ConveyorSettings(handler=HandlerSpec(name="script")))
    assert isinstance(load_handler(config), ScriptHandler)


def test_a_model_is_a_preset_or_a_known_handler():
    assert model_named("darknet").image == "conveyor/yolo"
    assert model_named("deepaas").handler == {"name": "deepaas"}
    assert model_named("conveyor.handlers.script:ScriptHandler").handler["name"].endswith(":ScriptHandler")
    with pytest.raises(ConfigError, match=r"unknown model 'nope': not a preset \(darknet, script, deepaas-demo\) "
                                          r"nor a handler \(darknet, deepaas, script"):
        model_named("nope")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        model_named("no.such.module:Handler")


def test_check_raises_on_shutdown_then_on_the_deadline(tmp_path):
    inv = invocation(tmp_path)
    inv.check("inference")
    inv.shutdown.set()
    with pytest.raises(Interrupted, match="shutdown requested before inference"):
        inv.check("inference")
    with pytest.raises(HandlerTimeout, match="the deadline passed before writing"):
        invocation(tmp_path, deadline=0).check("writing")
    invocation(tmp_path, deadline=None).check("anything")


def test_log_since_an_offset(tmp_path):
    inv = invocation(tmp_path)
    assert inv.log_offset() == 0 and inv.log_since(0) == ""  # no log yet
    inv.log_file.write_bytes(b"before\n")
    offset = inv.log_offset()
    assert offset == 7
    with open(inv.log_file, "ab") as fh:
        fh.write(b"first line\nsecond \xff line\n")
    assert inv.log_since(offset) == "first line\nsecond \ufffd line\n"
    assert inv.log_since(offset, limit=8) == " \ufffd line\n"  # the last bytes only
    assert inv.log_since(offset, limit=1000) == "first line\nsecond \ufffd line\n"  # never before the offset
    assert inv.log_since(0).startswith("before\n")


class Plain(Handler):
    name = "plain"

    def handle(self, inv: Invocation) -> HandlerResult:
        return HandlerResult()


def test_default_hooks():
    options = {"a": 1}
    said: list[str] = []
    prepared = Plain.prepare(options, environ={}, say=said.append, samples_dir=None)
    assert prepared == options and prepared is not options and not said
    with pytest.raises(ConfigError, match="the plain handler has no weights to fetch"):
        Plain.fetch_weights(None, {})


def test_darknet_prepare_keeps_given_weights(tmp_path):
    options = {"backend": "opencv", "weights": str(tmp_path / "w"), "cfg": "c", "names": "n"}
    assert DarknetHandler.prepare(options, environ={}, say=print, samples_dir=tmp_path) == options
