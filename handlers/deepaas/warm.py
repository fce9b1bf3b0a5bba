"""Warm mode: the DEEPaaS model loaded into this process once, every call made on one model thread.

The model is loaded through its `deepaas.v2.model` entry point (deepaas.model.loading), `warm()` runs
once, then `predict(**kwargs)` runs per record, across warm Lambda invocations too. Every call into the
model happens on one daemon thread (ModelThread) owned by the handler; the caller waits for it until
`inv.deadline` or `inv.shutdown`.

"This process" is, by default, a model host (conveyor.modelhost; DeepaasHandler.hosted): a prediction
that outlives its deadline is killed with the host's process group and the next record sets the model
up in a fresh host. With `conveyor: model_host: inline` it is Conveyor's own process, where a call
that outlives its deadline cannot be killed (Python cannot stop a thread): the record fails with
HandlerTimeout (context `needs_restart`: a host seeing it is stopped too), the handler drops its
model thread and re-runs setup() (a fresh thread, warm() again) before the next record; while the
abandoned prediction is still running, records fail at once rather than pile up on a wedged model.
deepaas's own ModelWrapper is not used: it needs an asyncio loop and runs every call in a pool of
spawned processes (CONF.workers), i.e. not in-process at all.

The input is passed as deepaas's API passes an upload: UploadedFile(name=<file_arg>, filename=<copy>,
content_type=<guessed from the name>, original_filename=<name>); so is every file `args` names for
another file-type argument (the demo app's image, audio and video), each from a private copy, as
deepaas-cli opens them. The other arguments are loaded through the model's own get_predict_args()
schema (defaults, conversion, validation; `accept` defaults to its first choice as in the API); they
are checked once at setup, worded as cli mode words its probe's check (selection.args_rejected).
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from conveyor.errors import ConfigError, HandlerError, HandlerTimeout, Interrupted
from conveyor.handler import Invocation
from conveyor.handlers.deepaas.child_modes import private_copy
from conveyor.handlers.deepaas.model_log import append_traceback, describe_exc
from conveyor.handlers.deepaas.model_thread import ModelThread
from conveyor.handlers.deepaas.results import close_quietly, write_result
from conveyor.handlers.deepaas.selection import (
    KEY,
    MODEL_GROUP,
    Model,
    ModelMissing,
    api_default_accept,
    args_rejected,
    check_args,
    choose_file_arg,
    choose_model,
    file_arg_paths,
    file_args,
    is_file_field,
    schema_for,
    validation_message,
    validation_messages,
)

log = logging.getLogger(__name__)

POLL = 0.1  # how often a waiting record looks at its shutdown event


class NotHere(Exception):
    """The model cannot run in this process (auto mode then runs it as a child)."""


@dataclass(frozen=True)
class WarmModel:
    """A model loaded in this process, with what calling it takes."""

    model: Model
    schema: Any  # its predict arguments (marshmallow)
    uploaded_file: Callable[..., Any]  # deepaas's UploadedFile
    default_accept: str | None  # what deepaas's API would send when nothing is asked

    def call_args(self, args: Mapping[str, Any], accept: str | None) -> dict[str, Any]:
        given = {k: v for k, v in args.items() if k not in self.model.files}
        accept = accept or self.default_accept
        if accept:
            given["accept"] = accept
        return given


def load(model_name: str | None, file_arg: str | None, accept: str | None, args: Mapping[str, Any]) -> WarmModel:
    """Load the model here and check the configured arguments against it; NotHere when it cannot run here."""
    try:
        from deepaas.model import loading
        from deepaas.model.v2.wrapper import UploadedFile
    except Exception as exc:  # ImportError, or a broken install
        raise NotHere(f"deepaas does not import in this process ({type(exc).__name__}: {exc})") from exc
    found = {ep.name: ep for ep in entry_points(group=MODEL_GROUP)}
    try:
        name = choose_model(sorted(found), model_name)
    except ModelMissing as exc:
        raise NotHere(str(exc)) from exc
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
        raise NotHere(f"model {name!r} does not load in this process ({describe_exc(reason)})") from reason
    try:
        fields = dict(plugin.get_predict_args())
    except Exception as exc:
        raise HandlerError(f"model {name!r}: get_predict_args() failed: {describe_exc(exc)}") from exc
    info = {k: {"file": is_file_field(v), "required": bool(getattr(v, "required", False))}
            for k, v in fields.items()}
    chosen_file_arg = choose_file_arg(name, info, file_arg, given=args)
    if accept and "accept" not in fields:
        raise ConfigError(f"model {name!r} declares no 'accept' predict argument", key=f"{KEY}.accept")
    check_args(name, info, chosen_file_arg, args)
    files = file_args(info, chosen_file_arg, args)
    file_arg_paths(files, args)  # each exists, now rather than at the first record
    warm = WarmModel(
        model=Model(name=name, file_arg=chosen_file_arg, obj=plugin, files=tuple(files)),
        schema=schema_for(fields),
        uploaded_file=UploadedFile,
        default_accept=None if accept else api_default_accept(fields.get("accept")),
    )
    try:  # check the configured arguments now, not on every record
        warm.schema.load(warm.call_args(args, accept), partial=True)
    except Exception as exc:
        raise args_rejected(name, validation_messages(exc), args) from exc
    log.info("deepaas: model %r loaded in-process (file argument %r)", name, chosen_file_arg)
    return warm


def warm_up(warm: WarmModel, thread: ModelThread) -> None:
    """Run the model's warm(), when it has one, on its thread."""
    name = warm.model.name
    method = getattr(warm.model.obj, "warm", None)
    if method is None:
        return
    started = time.monotonic()
    try:
        thread.submit(method).result()
    except NotImplementedError:
        return
    except Exception as exc:
        raise HandlerError(f"model {name!r}: warm() failed: {describe_exc(exc)}", model=name) from exc
    log.info("deepaas: model %r warmed in %.3f s", name, time.monotonic() - started)


def predict(
    warm: WarmModel,
    thread: ModelThread,
    inv: Invocation,
    copy: Path,
    stem: str,
    *,
    args: Mapping[str, Any],
    accept: str | None,
    abandon: Callable[[Invocation, str], None],
) -> Path:
    """One prediction on the model thread, its result written; `abandon` is called (with why) before a
    call left running past the deadline or a shutdown is given up."""
    model = warm.model
    uploads = {model.file_arg: _upload(warm, model.file_arg, copy)}
    for name, path in file_arg_paths(model.files, args).items():
        uploads[name] = _upload(warm, name, private_copy(path, inv.work_dir / "deepaas-files" / name))
    try:
        kwargs = warm.schema.load({**warm.call_args(args, accept), **uploads})
    except Exception as exc:
        raise HandlerError(f"model {model.name!r} rejects its arguments: {validation_message(exc)}") from exc
    inv.check(f"running model {model.name!r}")
    future = thread.submit(model.obj.predict, **kwargs)
    result = _await(future, inv, model.name, abandon)
    try:
        return write_result(result, inv.output_dir, stem, accept or warm.default_accept)
    finally:
        close_quietly(result)


def _upload(warm: WarmModel, name: str, copy: Path) -> Any:
    """A file as deepaas's API hands an upload to predict()."""
    return warm.uploaded_file(
        name=name,
        filename=str(copy),
        content_type=mimetypes.guess_type(copy.name)[0] or "application/octet-stream",
        original_filename=copy.name,
    )


def _await(future: Future, inv: Invocation, name: str, abandon: Callable[[Invocation, str], None]) -> Any:
    started = time.monotonic()
    while True:
        remaining = inv.deadline.remaining()
        done, _ = wait([future], timeout=POLL if remaining is None else min(POLL, remaining))
        if done:
            break
        if inv.shutdown.is_set():
            abandon(inv, "a termination signal arrived")
            raise Interrupted(f"model {name!r} was still predicting when a termination signal arrived; "
                              "its in-process call cannot be stopped", model=name, needs_restart=True)
        if inv.deadline.expired():
            elapsed = time.monotonic() - started
            abandon(inv, "its deadline passed")
            raise HandlerTimeout(
                f"model {name!r} predicted for {elapsed:.1f} s and passed its deadline; the in-process "
                "call cannot be stopped, the handler will set the model up again on a fresh thread",
                model=name, elapsed=round(elapsed, 3), needs_restart=True,
            )
    exc = future.exception()
    if exc is not None:
        append_traceback(inv.log_file, exc)
        raise HandlerError(f"model {name!r} failed: {describe_exc(exc)}", model=name) from exc
    return future.result()
