"""DeepaasHandler: options, the choice of mode, and the life cycle around the warm, cli and predict modes."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigError, HandlerError
from conveyor.handler import Handler, HandlerResult, Invocation
from conveyor.handlers.deepaas import cli, predict, warm
from conveyor.handlers.deepaas.child_modes import pick_child_mode, private_copy
from conveyor.handlers.deepaas.model_thread import ModelThread
from conveyor.handlers.deepaas.selection import KEY, Model

if TYPE_CHECKING:
    from conveyor.config import FunctionConfig

log = logging.getLogger(__name__)

MODES = ("auto", "warm", "cli", "predict")
KNOWN_OPTIONS = {"mode", "model", "accept", "args", "file_arg", "cli_shim"}


class DeepaasHandler(Handler):
    name = "deepaas"

    def __init__(self, config: "FunctionConfig", options: Mapping[str, Any]) -> None:
        super().__init__(config, options)
        opts = self.options
        unknown = sorted(set(opts) - KNOWN_OPTIONS)
        if unknown:
            log.warning("deepaas handler: ignoring unknown option(s) %s under %s", ", ".join(unknown), KEY)
        mode = opts.get("mode", "auto")
        if not isinstance(mode, str) or mode.strip().lower() not in MODES:
            raise ConfigError(f"must be one of {', '.join(MODES)} (got {mode!r})", key=f"{KEY}.mode")
        self.mode = mode.strip().lower()
        self.model_name = _optional_str(opts.get("model"), "model")
        self.accept = _optional_str(opts.get("accept"), "accept")
        self.file_arg = _optional_str(opts.get("file_arg"), "file_arg")
        args = opts.get("args") or {}
        if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
            raise ConfigError("must be a mapping of predict argument names to values", key=f"{KEY}.args")
        self.args = dict(args)
        shim = opts.get("cli_shim", True)
        if not isinstance(shim, bool):
            raise ConfigError("must be true or false", key=f"{KEY}.cli_shim")
        self.cli_shim = shim
        if self.mode == "predict" and self.args:
            raise ConfigError("deepaas-predict cannot pass predict arguments: use mode cli or warm", key=f"{KEY}.args")
        self.active: str | None = None  # the mode in use: warm | cli | predict (decided by setup / first record)
        self._model: Model | None = None  # warm: loaded in setup(); cli: learned by the probe
        self._warm: warm.WarmModel | None = None  # warm mode: the model loaded here
        self._worker: ModelThread | None = None
        self._stuck: ModelThread | None = None  # a thread still busy with an abandoned prediction
        self._not_here = ""  # why auto mode could not load the model in this process

    @classmethod
    def hosted(cls, options: Mapping[str, Any]) -> bool:
        """Warm mode keeps the model in memory: a model host (conveyor.modelhost) supervises it, so a
        hung prediction is killed rather than abandoned; so does auto mode when deepaas is installed
        here (the host then loads it warm, or runs cli/predict children when it cannot)."""
        mode = str(options.get("mode", "auto")).strip().lower()
        return mode == "warm" or (mode == "auto" and importlib.util.find_spec("deepaas") is not None)

    # -- life cycle ---------------------------------------------------------------------------------

    def setup(self) -> None:
        if self._stuck is not None:
            if self._stuck.busy:
                raise HandlerError(
                    f"model {self._model.name if self._model else '?'!r} is still running a prediction that "
                    "passed its deadline; it cannot be stopped in-process, so this worker must be restarted",
                    needs_restart=True,
                )
            self._stuck.stop()
            self._stuck = None
        if self.mode in ("cli", "predict"):
            self.active = self.mode
        elif self.active is None and not self._not_here:
            try:
                self._warm = warm.load(self.model_name, self.file_arg, self.accept, self.args)
                self._model = self._warm.model
                self.active = "warm"
            except warm.NotHere as exc:
                if self.mode == "warm":
                    raise ConfigError(f"mode warm: {exc}", key=f"{KEY}.mode") from exc
                log.info("deepaas: %s; the model will run as a child process", exc)
                self._not_here = str(exc)  # cli or predict, chosen on the first record (its PATH decides)
        if self.active == "warm":
            self._start_warm()

    def _start_warm(self) -> None:
        assert self._warm is not None
        if self._worker is not None:  # a previous setup() whose warm() failed
            self._worker.stop()
        self._worker = ModelThread(f"deepaas-{self._warm.model.name}")
        warm.warm_up(self._warm, self._worker)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    @property
    def needs_restart(self) -> bool:
        """True while an abandoned in-process prediction is still running."""
        return self._stuck is not None and self._stuck.busy

    def handle(self, inv: Invocation) -> HandlerResult:
        self.ensure_setup()  # again after a timed-out warm prediction
        if inv.input_path is None:
            raise ConfigError("the deepaas handler needs the input file downloaded", key="file_stage_in")
        if self.active is None:
            self.active = pick_child_mode(inv.env)
        copy = private_copy(inv.input_path, inv.work_dir / "deepaas-input")
        stem = Path(inv.input_path.name).stem or "output"
        started = time.monotonic()
        if self.active == "warm":
            assert self._warm is not None and self._worker is not None
            out = warm.predict(self._warm, self._worker, inv, copy, stem,
                               args=self.args, accept=self.accept, abandon=self._abandon)
            rc = 0
        elif self.active == "cli":
            if self._model is None:
                self._model = cli.find_model(inv, model_name=self.model_name, file_arg=self.file_arg,
                                             accept=self.accept, args=self.args)
            out, rc = cli.predict(inv, copy, stem, model=self._model, model_name=self.model_name,
                                  accept=self.accept, args=self.args, shim=self.cli_shim)
        else:
            out, rc = predict.predict(inv, copy, stem, model_name=self.model_name, accept=self.accept)
        seconds = round(time.monotonic() - started, 4)
        inv.log.info("deepaas %s: %s -> %s in %.3f s", self.active, inv.input_path.name, out.name, seconds)
        details = {"mode": self.active, "model": self._model.name if self._model else self.model_name,
                   "output": out.name, "predict_seconds": seconds}
        return HandlerResult(exit_code=rc, details={"deepaas": details})

    def _abandon(self, inv: Invocation, why: str) -> None:
        """Give up an in-process prediction still running: a fresh thread and warm() before the next record."""
        inv.log.error("deepaas: abandoning the in-process prediction of %s: %s", inv.input_path, why)
        with self._lock:
            self._stuck, self._worker = self._worker, None
            self._ready = False


def _optional_str(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("must be a non-empty string", key=f"{KEY}.{key}")
    return value.strip()


__all__ = ["DeepaasHandler"]
