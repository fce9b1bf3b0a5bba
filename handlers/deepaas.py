"""The deepaas handler: DEEPaaS models (the DEEP Open Catalog's packaging), warm in-process or as a child.

    conveyor:
      handler:
        name: deepaas
        mode: auto        # warm | cli | predict | auto (default)
        model: NAME       # entry-point name in `deepaas.v2.model`; needed when several are installed
        accept: TYPE      # media type asked of the model (image/png, application/zip ...); default: the model's
        args: {...}       # further predict arguments (e.g. {top_k: 3})
        file_arg: NAME    # which file argument gets the input, when the model declares several
        cli_shim: true    # cli mode: run deepaas-cli's own main() under the small patch below

Modes
  warm     The model is loaded into this process once (the `deepaas.v2.model` entry point, through
           deepaas.model.loading), `warm()` runs once, then `predict(**kwargs)` runs per record, across
           warm Lambda invocations too. Every call into the model happens on one daemon thread owned
           by the handler; the caller waits for it until `inv.deadline` or `inv.shutdown`. A call
           that outlives its deadline cannot be killed (Python cannot stop a thread): the record fails
           with HandlerTimeout (context `needs_restart`), the handler drops its model thread and
           re-runs setup() (a fresh thread, warm() again) before the next record; while the abandoned
           prediction is still running, records fail at once rather than pile up on a wedged model.
           In Lambda the platform's own timeout still ends the whole environment; in Batch/OSCAR the
           process ends with the job (the thread is a daemon and never holds the exit).
           deepaas's own ModelWrapper is not used: it needs an asyncio loop and runs every call in a
           pool of spawned processes (CONF.workers), i.e. not in-process at all.
  cli      `deepaas-cli --deepaas_method_output FILE predict --<file_arg> COPY [--accept TYPE] [--ARG V ...]`
           per record, through conveyor.child.run_child: own process group, deadline, SIGTERM grace,
           output to inv.log_file. DEEPAAS_V2_MODEL selects the model (the only selector deepaas-cli
           honours: it picks its model at import time, before --model-name is parsed). Unless
           `file_arg` is set, the first record also runs a short probe (about as long as one call)
           with the same interpreter, to learn the model's name and file argument, check `args` and
           `accept`, and fail clearly when several models exist and none is named.
           deepaas-cli (2.6.0; since 2.5.2 by the issue's account) writes only dicts/lists (as JSON)
           and BytesIO results: a returned open file, bytes or str is logged ("Output of type ...")
           and silently dropped, and a BytesIO with no --accept crashes json.dumps. (It also calls
           the plugin's get_train_args() at start-up: a plugin without one cannot run under it.)
           With `cli_shim` (default) the handler runs `python -c SHIM ...` with deepaas-cli's own
           interpreter (read from its #! line): SHIM imports deepaas.cmd.cli, wraps the model's
           predict() so a str, bytes or file-like result is streamed to a side file (and None handed
           to deepaas-cli), then calls cli.main() with the usual argv - deepaas-cli's own code path
           for everything else. Without the shim (or
           when deepaas-cli is not a Python console script) such results end as NoOutputError.
           TMPDIR points into the record's work dir, so the temporary copy deepaas-cli makes of the
           input (and never deletes) goes away with the record.
  predict  `deepaas-predict -i COPY -o DIR -ct TYPE [--model-name NAME]`, for old images. deepaas-predict
           2.6.0 does not call the v2 `predict()`: it calls the plugin's pre-v2 `predict_data({"files":
           [UploadedFile], "accept": TYPE})` (and looks `predict_url` up eagerly), so only models that
           still have those work. It writes JSON results as a Python repr (turned into JSON here), and
           copies a returned open file by its `.name` (a BytesIO result crashes it). `args` cannot be
           passed in this mode.
  auto     warm when deepaas imports in this process and the model's entry point loads here; else cli
           when `deepaas-cli` is on the record's PATH; else predict. (Several models with none named
           is a configuration error in every mode, not a reason to fall back.)

Whatever the mode, the model gets a private copy of the input in the record's work dir, under the
input's original file name (catalog models delete their input). In warm mode it is passed as
deepaas's API passes an upload: UploadedFile(name=<file_arg>, filename=<copy>, content_type=<guessed
from the name>, original_filename=<name>), with the other arguments loaded through the model's own
get_predict_args() schema (defaults, conversion, validation; `accept` defaults to its first choice as
in the API). deepaas-cli builds UploadedFile(name="data", filename=<its own temp copy of our copy>,
original_filename=<our copy's path>); deepaas-predict UploadedFile(name=filename=<our copy's path>).

Output names (one file per record, in inv.output_dir; <stem> = the input's name without its last
extension, e.g. "my cat" for "my cat.jpg"):
  dict, list, number, bool      <stem>.json   valid JSON (NaN/Infinity -> null, numpy values -> lists/numbers)
  str                           <stem>.json when the text parses as JSON, else <stem>.txt
                                (<stem> + the extension of `accept` when that is a text/* type)
  bytes, BytesIO, open file     <stem> + the extension of `accept` (image/png -> .png, application/zip ->
                                .zip ...); without a non-JSON accept: from the content's magic bytes
                                (png, jpg, gif, zip, pdf, gz, tif, wav, webp, mp4, ogg, flac, mp3, json,
                                text), else the returned file's own extension, else .bin
  None                          NoOutputError
A model exception is a HandlerError carrying the model's own message, in every mode.
"""

from __future__ import annotations

import ast
import contextvars
import datetime
import io
import json
import logging
import math
import mimetypes
import os
import queue
import re
import shlex
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigError, HandlerError, HandlerTimeout, Interrupted, NoOutputError
from conveyor.handler import Handler, HandlerResult, Invocation

if TYPE_CHECKING:
    from conveyor.config import FunctionConfig

logger = logging.getLogger(__name__)

MODEL_GROUP = "deepaas.v2.model"
MODES = ("auto", "warm", "cli", "predict")
KNOWN_OPTIONS = {"mode", "model", "accept", "args", "file_arg", "cli_shim"}
KEY = "conveyor.handler"
CLI = "deepaas-cli"
PREDICT = "deepaas-predict"
JSON_TYPES = {"application/json", "*/*", "text/json"}
POLL = 0.1  # how often a waiting record looks at its shutdown event

# mimetypes knows most, but not all, of what models answer with; these win over it.
EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/tiff": ".tif",
    "application/zip": ".zip",
    "application/x-zip-compressed": ".zip",
    "application/gzip": ".gz",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "text/csv": ".csv",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/mpeg": ".mp3",
    "video/mp4": ".mp4",
}
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"PK\x03\x04", ".zip"),
    (b"PK\x05\x06", ".zip"),
    (b"%PDF-", ".pdf"),
    (b"\x1f\x8b", ".gz"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"OggS", ".ogg"),
    (b"fLaC", ".flac"),
    (b"ID3", ".mp3"),
)
SNIFF_BYTES = 4096


# --- the child-side code (runs under deepaas-cli's own interpreter, maybe an old Python) ----------

PROBE = r"""
import json, sys
from deepaas.model import loading
want = sys.argv[1]
models = loading.get_available_models("v2")
out = {"names": sorted(models), "model": None, "fields": None}
if not want and len(models) == 1:
    want = list(models)[0]
if want in models:
    out["model"] = want
    fields = {}
    for key, value in models[want].get_predict_args().items():
        meta = getattr(value, "metadata", None) or {}
        fields[key] = {"file": meta.get("type") == "file", "required": bool(getattr(value, "required", False))}
    out["fields"] = fields
sys.stdout.write(json.dumps(out))
"""

SHIM = r"""
import io, os, shutil, sys
drop_dir, error_file = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
sys.argv[0] = "deepaas-cli"
try:
    from deepaas.cmd import cli
    model_predict = cli.model_obj.predict

    def predict(*args, **kwargs):
        result = model_predict(*args, **kwargs)
        if isinstance(result, str):
            with open(os.path.join(drop_dir, "result.txt"), "w", encoding="utf-8") as out:
                out.write(result)
            return None
        if isinstance(result, (bytes, bytearray, memoryview)):
            with open(os.path.join(drop_dir, "result.bin"), "wb") as out:
                out.write(result)
            return None
        if hasattr(result, "read"):
            name = getattr(result, "name", None)
            ext = os.path.splitext(name)[1] if isinstance(name, str) else ""
            if isinstance(result, io.BytesIO):
                ext = ""
            with open(os.path.join(drop_dir, "result" + (ext or ".bin")), "wb") as out:
                if isinstance(result, io.BytesIO):
                    out.write(result.getbuffer())
                else:
                    if hasattr(result, "seekable") and result.seekable():
                        result.seek(0)
                    shutil.copyfileobj(result, out, 1 << 20)
            close = getattr(result, "close", None)
            if close is not None:
                close()
            return None
        return result

    cli.model_obj.predict = predict
    code = cli.main()
except SystemExit:
    raise
except BaseException as exc:
    with open(error_file, "w", encoding="utf-8") as out:
        out.write("%s: %s" % (type(exc).__name__, exc))
    raise
sys.exit(code)
"""


# --- what the handler learned about the model ----------------------------------------------------


@dataclass(frozen=True)
class _Model:
    name: str  # "" when deepaas-cli picks it (cli mode with file_arg set and no model named)
    file_arg: str
    obj: Any = None  # the plugin itself (warm mode only)


class _NotHere(Exception):
    """The model cannot run in this process (auto mode then runs it as a child)."""


class _ModelMissing(Exception):
    """The named model (or any model) is not installed where we looked."""


class DeepaasHandler(Handler):
    name = "deepaas"

    def __init__(self, config: "FunctionConfig", options: Mapping[str, Any]) -> None:
        super().__init__(config, options)
        opts = self.options
        unknown = sorted(set(opts) - KNOWN_OPTIONS)
        if unknown:
            logger.warning("deepaas handler: ignoring unknown option(s) %s under %s", ", ".join(unknown), KEY)
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
        self._model: _Model | None = None  # warm: loaded in setup(); cli: learned by the probe
        self._worker: _ModelThread | None = None
        self._stuck: _ModelThread | None = None  # a thread still busy with an abandoned prediction
        self._not_here = ""  # why auto mode could not load the model in this process
        self._uploaded_file: Callable[..., Any] | None = None
        self._default_accept: str | None = None  # what deepaas's API would send when nothing is asked
        self._schema: Any = None

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
                self._model = self._load_here()
                self.active = "warm"
            except _NotHere as exc:
                if self.mode == "warm":
                    raise ConfigError(f"mode warm: {exc}", key=f"{KEY}.mode") from exc
                logger.info("deepaas: %s; the model will run as a child process", exc)
                self._not_here = str(exc)  # cli or predict, chosen on the first record (its PATH decides)
        if self.active == "warm":
            self._start_warm()

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
            self.active = self._pick_child_mode(inv.env)
        copy = _private_copy(inv.input_path, inv.work_dir / "deepaas-input")
        stem = _stem(inv.input_path.name)
        started = time.monotonic()
        if self.active == "warm":
            out, rc = self._predict_warm(inv, copy, stem), 0
        elif self.active == "cli":
            out, rc = self._predict_cli(inv, copy, stem)
        else:
            out, rc = self._predict_with_deepaas_predict(inv, copy, stem)
        seconds = round(time.monotonic() - started, 4)
        inv.log.info("deepaas %s: %s -> %s in %.3f s", self.active, inv.input_path.name, out.name, seconds)
        details = {"mode": self.active, "model": self._model.name if self._model else self.model_name,
                   "output": out.name, "predict_seconds": seconds}
        return HandlerResult(exit_code=rc, details={"deepaas": details})

    # -- warm: in this process ------------------------------------------------------------------------

    def _load_here(self) -> _Model:
        try:
            from deepaas.model import loading
            from deepaas.model.v2.wrapper import UploadedFile
        except Exception as exc:  # ImportError, or a broken install
            raise _NotHere(f"deepaas does not import in this process ({type(exc).__name__}: {exc})") from exc
        found = {ep.name: ep for ep in entry_points(group=MODEL_GROUP)}
        try:
            name = _choose_model(sorted(found), self.model_name)
        except _ModelMissing as exc:
            raise _NotHere(str(exc)) from exc
        try:
            plugin = loading.get_model_by_name(name, "v2")
        except Exception as exc:
            # deepaas (through stevedore) reports a plugin that fails to import as "not found":
            # load the entry point ourselves to show the real reason.
            reason: BaseException = exc
            try:
                found[name].load()
            except Exception as real:
                reason = real
            raise _NotHere(f"model {name!r} does not load in this process ({_describe_exc(reason)})") from reason
        try:
            fields = dict(plugin.get_predict_args())
        except Exception as exc:
            raise HandlerError(f"model {name!r}: get_predict_args() failed: {_describe_exc(exc)}") from exc
        info = {k: {"file": _is_file_field(v), "required": bool(getattr(v, "required", False))}
                for k, v in fields.items()}
        file_arg = _choose_file_arg(name, info, self.file_arg)
        if self.accept and "accept" not in fields:
            raise ConfigError(f"model {name!r} declares no 'accept' predict argument", key=f"{KEY}.accept")
        self._default_accept = None if self.accept else _api_default_accept(fields.get("accept"))
        self._uploaded_file = UploadedFile
        self._schema = _schema_for(fields)
        given = self._call_args()
        try:  # check the configured arguments now, not on every record
            self._schema.load(given, partial=True)
        except Exception as exc:
            raise ConfigError(f"model {name!r} rejects them: {_validation_message(exc)}", key=f"{KEY}.args") from exc
        logger.info("deepaas: model %r loaded in-process (file argument %r)", name, file_arg)
        return _Model(name=name, file_arg=file_arg, obj=plugin)

    def _start_warm(self) -> None:
        assert self._model is not None
        if self._worker is not None:  # a previous setup() whose warm() failed
            self._worker.stop()
        self._worker = _ModelThread(f"deepaas-{self._model.name}")
        warm = getattr(self._model.obj, "warm", None)
        if warm is None:
            return
        started = time.monotonic()
        try:
            self._worker.submit(warm).result()
        except NotImplementedError:
            return
        except Exception as exc:
            raise HandlerError(f"model {self._model.name!r}: warm() failed: {_describe_exc(exc)}",
                               model=self._model.name) from exc
        logger.info("deepaas: model %r warmed in %.3f s", self._model.name, time.monotonic() - started)

    def _call_args(self) -> dict[str, Any]:
        given = dict(self.args)
        accept = self.accept or self._default_accept
        if accept:
            given["accept"] = accept
        return given

    def _predict_warm(self, inv: Invocation, copy: Path, stem: str) -> Path:
        model, worker = self._model, self._worker
        assert model is not None and worker is not None and self._uploaded_file is not None
        upload = self._uploaded_file(
            name=model.file_arg,
            filename=str(copy),
            content_type=mimetypes.guess_type(copy.name)[0] or "application/octet-stream",
            original_filename=copy.name,
        )
        try:
            kwargs = self._schema.load({**self._call_args(), model.file_arg: upload})
        except Exception as exc:
            raise HandlerError(f"model {model.name!r} rejects its arguments: {_validation_message(exc)}") from exc
        if inv.deadline.expired():
            raise HandlerTimeout(f"no time left to run model {model.name!r}: the deadline has already passed")
        future = worker.submit(model.obj.predict, **kwargs)
        result = self._await(future, inv)
        try:
            return write_result(result, inv.output_dir, stem, self.accept or self._default_accept)
        finally:
            _close_quietly(result)

    def _await(self, future: Future, inv: Invocation) -> Any:
        name = self._model.name if self._model else "?"
        started = time.monotonic()
        while True:
            remaining = inv.deadline.remaining()
            done, _ = wait([future], timeout=POLL if remaining is None else min(POLL, remaining))
            if done:
                break
            if inv.shutdown.is_set():
                self._abandon(inv, "a termination signal arrived")
                raise Interrupted(f"model {name!r} was still predicting when a termination signal arrived; "
                                  "its in-process call cannot be stopped", model=name, needs_restart=True)
            if inv.deadline.expired():
                elapsed = time.monotonic() - started
                self._abandon(inv, "its deadline passed")
                raise HandlerTimeout(
                    f"model {name!r} predicted for {elapsed:.1f} s and passed its deadline; the in-process "
                    "call cannot be stopped, the handler will set the model up again on a fresh thread",
                    model=name, elapsed=round(elapsed, 3), needs_restart=True,
                )
        exc = future.exception()
        if exc is not None:
            _append_traceback(inv.log_file, exc)
            raise HandlerError(f"model {name!r} failed: {_describe_exc(exc)}", model=name) from exc
        return future.result()

    def _abandon(self, inv: Invocation, why: str) -> None:
        inv.log.error("deepaas: abandoning the in-process prediction of %s: %s", inv.input_path, why)
        with self._lock:
            self._stuck, self._worker = self._worker, None
            self._ready = False  # setup() again before the next record: new thread, warm() again

    # -- cli / predict: a child process ------------------------------------------------------------

    def _pick_child_mode(self, env: Mapping[str, str]) -> str:
        path = env.get("PATH", os.defpath)
        if shutil.which(CLI, path=path):
            return "cli"
        if shutil.which(PREDICT, path=path):
            return "predict"
        raise ConfigError(
            f"mode auto: deepaas does not run in this process, and neither {CLI} nor {PREDICT} is on PATH "
            f"({path})", key=f"{KEY}.mode",
        )

    def _child_env(self, inv: Invocation, tmp: Path) -> dict[str, str]:
        env = dict(inv.env)
        if self.model_name:
            env["DEEPAAS_V2_MODEL"] = self.model_name
        tmp.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp)
        return env

    def _run(self, inv: Invocation, argv: list[str], env: Mapping[str, str], cwd: Path, *,
             stdout_file: Path | None = None, prefix: str) -> int:
        return inv.run_child(argv, cwd=cwd, env=env, stdout_file=stdout_file, prefix=prefix)

    def _cli_python(self, cli_path: str, env: Mapping[str, str]) -> str | None:
        return script_interpreter(cli_path, env.get("PATH", os.defpath), module="deepaas.cmd.cli")

    def _probe(self, inv: Invocation, python: str, env: Mapping[str, str], work: Path) -> _Model:
        out = work / "probe.json"
        offset = _size(inv.log_file)
        argv = [python, "-c", PROBE, self.model_name or ""]
        rc = self._run(inv, argv, env, work, stdout_file=out, prefix="deepaas-probe")
        if rc != 0:
            raise HandlerError(f"the deepaas model probe failed (exit {rc}): {_last_error(inv.log_file, offset)}",
                               exit_code=rc)
        try:
            report = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HandlerError(f"the deepaas model probe wrote no report: {exc}") from exc
        try:
            name = _choose_model(report["names"], self.model_name)
        except _ModelMissing as exc:
            raise ConfigError(f"{exc}, for {python}", key=f"{KEY}.model") from exc
        file_arg = _choose_file_arg(name, report["fields"] or {}, self.file_arg)
        if self.accept and "accept" not in (report["fields"] or {}):
            raise ConfigError(f"model {name!r} declares no 'accept' predict argument", key=f"{KEY}.accept")
        unknown = sorted(set(self.args) - set(report["fields"] or {}))
        if unknown:
            raise ConfigError(f"model {name!r} has no predict argument(s) {', '.join(unknown)}", key=f"{KEY}.args")
        logger.info("deepaas: %s runs model %r (file argument %r)", CLI, name, file_arg)
        return _Model(name=name, file_arg=file_arg)

    def _predict_cli(self, inv: Invocation, copy: Path, stem: str) -> tuple[Path, int]:
        work = inv.work_dir / "deepaas-cli"
        raw, drop = work / "raw", work / "drop"
        for folder in (raw, drop):
            folder.mkdir(parents=True, exist_ok=True)
        env = self._child_env(inv, work / "tmp")
        cli_path = shutil.which(CLI, path=env.get("PATH", os.defpath))
        if cli_path is None:
            raise ConfigError(f"mode cli: {CLI} is not on PATH ({env.get('PATH', '')})", key=f"{KEY}.mode")
        python = self._cli_python(cli_path, env)
        if self._model is None:
            if self.file_arg:  # nothing to find out: save the probe's second of imports
                self._model = _Model(self.model_name or "", self.file_arg)
            elif python is None:
                raise ConfigError(f"{cli_path} is not a Python console script, so the model's file argument "
                                  "cannot be found out: set it", key=f"{KEY}.file_arg")
            else:
                self._model = self._probe(inv, python, env, work)
        ext = _accept_extension(self.accept) or ".json"
        out_file = raw / f"{stem}{ext}"
        errors = work / "error.txt"
        tail = ["--deepaas_method_output", str(out_file), "predict", f"--{self._model.file_arg}", str(copy)]
        if self.accept:
            tail += ["--accept", self.accept]
        for key, value in self.args.items():
            if value is not None:
                tail += [f"--{key}", _cli_value(value)]
        shimmed = self.cli_shim and python is not None
        argv = [python, "-c", SHIM, str(drop), str(errors), *tail] if shimmed else [cli_path, *tail]
        offset = _size(inv.log_file)
        rc = self._run(inv, argv, env, work, prefix=CLI)
        if rc != 0:
            message = _read_text(errors) or _last_error(inv.log_file, offset)
            raise HandlerError(f"model {self._model.name or '?'!r} failed ({CLI} exit {rc}): {message}",
                               exit_code=rc, model=self._model.name or None)
        dropped = sorted(drop.iterdir())
        if dropped:
            result = _open_result(dropped[0], text=dropped[0].name == "result.txt")
        else:
            result = self._read_cli_output(raw, shimmed)
        try:
            return write_result(result, inv.output_dir, stem, self.accept), rc
        finally:
            _close_quietly(result)

    def _read_cli_output(self, raw: Path, shimmed: bool) -> Any:
        written = sorted(p for p in raw.iterdir() if p.is_file())
        if not written:
            hint = "" if shimmed else (
                f" ({CLI} >= 2.5.2 silently drops a returned open file, bytes or str unless the accepted type is "
                "JSON; enable cli_shim)"
            )
            raise NoOutputError(f"{CLI} wrote no result{hint}")
        path = written[0]
        if path.suffix == ".json":
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise HandlerError(f"{CLI} wrote a result that is not JSON: {exc}") from exc
            return value
        return open(path, "rb")

    def _predict_with_deepaas_predict(self, inv: Invocation, copy: Path, stem: str) -> tuple[Path, int]:
        work = inv.work_dir / "deepaas-predict"
        raw, cwd = work / "raw", work / "cwd"
        for folder in (raw, cwd):
            folder.mkdir(parents=True, exist_ok=True)
        env = self._child_env(inv, work / "tmp")
        exe = shutil.which(PREDICT, path=env.get("PATH", os.defpath))
        if exe is None:
            raise ConfigError(f"mode predict: {PREDICT} is not on PATH ({env.get('PATH', '')})", key=f"{KEY}.mode")
        content_type = self.accept or "application/json"
        argv = [exe, "-i", str(copy), "-o", str(raw), "-ct", content_type]
        if self.model_name:
            argv += ["--model-name", self.model_name]
        offset = _size(inv.log_file)
        rc = self._run(inv, argv, env, cwd, prefix=PREDICT)
        if rc != 0:
            message = _last_error(inv.log_file, offset)
            if "predict_data" in message or "predict_url" in message:
                message += (f" ({PREDICT} 2.6.0 calls the pre-v2 predict_data()/predict_url(), not predict(): "
                            "use mode cli or warm for a v2-only model)")
            raise HandlerError(f"model {self.model_name or '?'!r} failed ({PREDICT} exit {rc}): {message}",
                               exit_code=rc, model=self.model_name)
        written = sorted(p for p in raw.iterdir() if p.is_file())
        if not written:
            raise NoOutputError(f"{PREDICT} wrote no result")
        path = written[0]
        if _media(content_type) in JSON_TYPES or path.suffix == ".json":
            text = path.read_text(encoding="utf-8")
            try:
                result: Any = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError) as exc:
                raise HandlerError(f"{PREDICT} wrote a result that is not a Python literal, so it cannot be "
                                   f"turned into JSON ({exc}): {text[:200]!r}") from exc
        else:
            result = open(path, "rb")
        try:
            return write_result(result, inv.output_dir, stem, self.accept), rc
        finally:
            _close_quietly(result)


# --- the model thread ------------------------------------------------------------------------------


class _ModelThread:
    """One daemon thread that makes every call into an in-process model, in order.

    A daemon, so a model that never returns cannot hold the process at exit. Each call runs in
    the submitter's context (the request id stays on the model's log lines).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0  # submitted and not finished
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._thread.is_alive() and self._pending > 0

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._count_lock:
            self._pending += 1
        self._jobs.put((future, contextvars.copy_context(), fn, args, kwargs))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, context, fn, args, kwargs = job
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(context.run(fn, *args, **kwargs))
                    except BaseException as exc:  # handed to the waiting record
                        future.set_exception(exc)
            finally:
                with self._count_lock:
                    self._pending -= 1


# --- choosing the model and its file argument -----------------------------------------------------


def _choose_model(names: list[str], wanted: str | None) -> str:
    """The model to run: the named one, or the only one installed. Several and none named is a ConfigError."""
    if wanted:
        if wanted not in names:
            raise _ModelMissing(f"model {wanted!r} is not installed "
                                f"(installed {MODEL_GROUP} models: {', '.join(names) or 'none'})")
        return wanted
    if len(names) == 1:
        return names[0]
    if not names:
        raise _ModelMissing(f"no DEEPaaS model is installed (the entry-point group {MODEL_GROUP} is empty)")
    raise ConfigError(f"several DEEPaaS models are installed ({', '.join(names)}) and none is named: "
                      f"set {KEY}.model to one of them", key=f"{KEY}.model")


def _is_file_field(value: Any) -> bool:
    metadata = getattr(value, "metadata", None) or {}
    return metadata.get("type") == "file"


def _choose_file_arg(model: str, fields: Mapping[str, Mapping[str, Any]], wanted: str | None) -> str:
    files = [k for k, v in fields.items() if v.get("file")]
    if wanted:
        if wanted not in fields:
            raise ConfigError(f"model {model!r} has no predict argument {wanted!r} (it has: {', '.join(fields)})",
                              key=f"{KEY}.file_arg")
        return wanted
    if len(files) == 1:
        return files[0]
    required = [k for k in files if fields[k].get("required")]
    if len(required) == 1:
        return required[0]
    if not files:
        raise ConfigError(f"model {model!r} declares no file argument (a field with metadata type 'file')",
                          key=f"{KEY}.file_arg")
    raise ConfigError(f"model {model!r} declares several file arguments ({', '.join(files)}): name one",
                      key=f"{KEY}.file_arg")


def _schema_for(fields: Mapping[str, Any]) -> Any:
    """The model's predict arguments as a marshmallow schema: defaults, conversion, validation, as deepaas's API."""
    import marshmallow

    return marshmallow.Schema.from_dict(dict(fields), name="DeepaasPredictArgs")()


def _api_default_accept(field: Any) -> str | None:
    """deepaas's API sends the first of `accept`'s choices when the field has no default of its own."""
    if field is None:
        return None
    import marshmallow

    if getattr(field, "load_default", marshmallow.missing) is not marshmallow.missing:
        return None
    choices = getattr(getattr(field, "validate", None), "choices", None)
    return str(next(iter(choices))) if choices else None


def _validation_message(exc: Exception) -> str:
    messages = getattr(exc, "messages", None)
    return json.dumps(messages, default=str) if messages else _describe_exc(exc)


# --- the child's interpreter ------------------------------------------------------------------------

_SH_EXEC = re.compile(r"""^'''exec'\s+("[^"]+"|\S+)""", re.MULTILINE)


def script_interpreter(
    script: str | os.PathLike[str], path: str | None = None, module: str | None = None
) -> str | None:
    """The Python interpreter a console script runs under, from its #! line; None when it is not one.

    Handles `#!/abs/python`, `#!/usr/bin/env python3` and pip's `#!/bin/sh` + `'''exec' "python" "$0"`
    form (used for long or spaced paths). With `module`, the script must also mention it
    (pip's console scripts import their entry point), so wrappers that do more are left alone.
    """
    try:
        with open(script, "rb") as fh:
            head = fh.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return None
    if not head.startswith("#!") or (module and module not in head):
        return None
    first = head.splitlines()[0][2:].strip()
    try:
        words = shlex.split(first)
    except ValueError:
        return None
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    elif os.path.basename(words[0]) in ("sh", "bash"):
        match = _SH_EXEC.search(head)
        words = [match.group(1).strip('"')] if match else []
    if not words or "python" not in os.path.basename(words[0]):
        return None
    found = words[0] if os.path.isabs(words[0]) else shutil.which(words[0], path=path)
    return found if found and os.access(found, os.X_OK) else None


# --- writing results --------------------------------------------------------------------------------


def write_result(result: Any, output_dir: Path, stem: str, accept: str | None = None) -> Path:
    """Write what predict() returned as one file named after the input (see the module docstring)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if result is None:
        raise NoOutputError("the model returned nothing (None)")
    if _is_returned_file(result):  # deepaas's ReturnedFile(filename=...): a path to read
        with open(result.filename, "rb") as fh:
            return write_result(fh, output_dir, stem, accept)
    if isinstance(result, str):
        ext = _accept_extension(accept) if _media(accept).startswith("text/") else None
        if ext is None:
            ext = ".json" if _parses_as_json(result) else ".txt"
        target = output_dir / f"{stem}{ext}"
        target.write_text(result, encoding="utf-8")
        return target
    if isinstance(result, (bytes, bytearray, memoryview)):
        result = io.BytesIO(bytes(result))
    if isinstance(result, io.BytesIO) or hasattr(result, "read"):
        return _write_stream(result, output_dir, stem, accept)
    try:
        value = _jsonable(result)
    except TypeError as exc:
        raise HandlerError(f"the model returned a {type(result).__name__} that cannot be written: {exc}") from exc
    target = output_dir / f"{stem}.json"
    with open(target, "w", encoding="utf-8") as fh:
        json.dump(value, fh, ensure_ascii=False, allow_nan=False)
        fh.write("\n")
    return target


def _write_stream(stream: Any, output_dir: Path, stem: str, accept: str | None) -> Path:
    if isinstance(stream, io.BytesIO):
        stream = io.BytesIO(stream.getbuffer())  # the whole buffer, wherever its position is (as deepaas-cli)
    else:
        try:
            if stream.seekable():
                stream.seek(0)
        except (AttributeError, OSError, ValueError):
            pass
    head = stream.read(SNIFF_BYTES)
    if isinstance(head, str):
        head = head.encode("utf-8")
    name = getattr(stream, "name", None)
    own_ext = os.path.splitext(name)[1].lower() if isinstance(name, str) else ""
    if own_ext == ".bin":
        own_ext = ""
    ext = _accept_extension(accept) or sniff_extension(head) or own_ext or ".bin"
    target = output_dir / f"{stem}{ext}"
    with open(target, "wb") as out:
        out.write(head)
        while True:
            chunk = stream.read(1 << 20)
            if not chunk:
                break
            out.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
    return target


def sniff_extension(head: bytes) -> str | None:
    """An extension from a file's first bytes, or None when they say nothing we know."""
    for magic, ext in MAGIC:
        if head.startswith(magic):
            return ext
    if head[:4] == b"RIFF" and head[8:12] in (b"WAVE", b"WEBP"):
        return ".wav" if head[8:12] == b"WAVE" else ".webp"
    if head[4:8] == b"ftyp":
        return ".mp4"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # (a multi-byte character cut at SNIFF_BYTES: too rare to matter)
        return None
    if not text or any(ch < " " and ch not in "\t\n\r\f" for ch in text):
        return None
    if len(head) < SNIFF_BYTES and _parses_as_json(text):
        return ".json"
    return ".txt"


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _accept_extension(accept: str | None) -> str | None:
    """The extension for a non-JSON accepted type; None for JSON, */* or nothing."""
    media = _media(accept)
    if not media or media in JSON_TYPES:
        return None
    return EXTENSIONS.get(media) or mimetypes.guess_extension(media, strict=False)


def _parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _is_returned_file(value: Any) -> bool:
    return (isinstance(value, tuple) and type(value).__name__ == "ReturnedFile"
            and bool(getattr(value, "filename", None)))


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tuples as lists, numpy values through tolist(), non-finite floats as null."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return _jsonable(tolist())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _open_result(path: Path, *, text: bool) -> Any:
    if text:
        return path.read_text(encoding="utf-8")
    return open(path, "rb")


def _close_quietly(result: Any) -> None:
    if hasattr(result, "read") and hasattr(result, "close") and not isinstance(result, io.BytesIO):
        try:
            result.close()
        except Exception:
            pass


# --- small helpers ------------------------------------------------------------------------------------


def _optional_str(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("must be a non-empty string", key=f"{KEY}.{key}")
    return value.strip()


def _stem(name: str) -> str:
    return Path(name).stem or "output"


def _private_copy(src: Path, folder: Path) -> Path:
    """A copy of the input, same file name, that the model may delete or change."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / src.name
    shutil.copyfile(src, target)
    return target


def _cli_value(value: Any) -> str:
    """A predict argument as deepaas-cli parses it: bools as true/false, lists and dicts as Python literals."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return repr(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _describe_exc(exc: BaseException) -> str:
    message = str(exc) or str(getattr(exc, "reason", "") or "")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _append_traceback(log_file: Path, exc: BaseException) -> None:
    try:
        with open(log_file, "a", encoding="utf-8") as fh:
            fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        pass


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[0m|\[00m")
_OSLO_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \d+ [A-Z]+ \S+ (?:\[[^\]]*\] )?")
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt): \S")
_DEEPAAS_ERROR = re.compile(r"^\[?ERROR\]?: \S")


def _last_error(log_file: Path, offset: int, limit: int = 16384) -> str:
    """The model's own error from a child's log: the traceback's last line, or deepaas's ERROR line."""
    try:
        with open(log_file, "rb") as fh:
            fh.seek(max(offset, _size(log_file) - limit))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    lines = [_OSLO_PREFIX.sub("", _ANSI.sub("", line)).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    for pattern in (_EXC_LINE, _DEEPAAS_ERROR):
        for line in reversed(lines):
            if pattern.match(line):
                return line
    return lines[-1] if lines else "(no output)"


__all__ = ["DeepaasHandler", "script_interpreter", "sniff_extension", "write_result"]
