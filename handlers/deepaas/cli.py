"""cli mode: `deepaas-cli --deepaas_method_output FILE predict --<file_arg> COPY [--accept TYPE] [--ARG V ...]`
per record, in a child process.

The child runs through Invocation.run_child: own process group, deadline, SIGTERM grace, output to
inv.log_file. DEEPAAS_V2_MODEL selects the model (the only selector deepaas-cli honours: it picks its
model at import time, before --model-name is parsed). Unless `file_arg` is set and `args`, `accept` unset, the
first record also runs a short probe (probe.py, about as long as one call) with the same interpreter, to
learn the model's name and file argument, check `args` and `accept` against the model's own schema (as
warm mode does: deepaas-cli's argparse alone takes an int out of its range), and fail clearly when
several models exist and none is named. Paths given in `args` to file-type arguments are passed
absolute (deepaas-cli runs in its own work dir, and opens them itself).

deepaas-cli (2.6.0; since 2.5.2 by the issue's account) writes only dicts/lists (as JSON) and BytesIO
results: a returned open file, bytes or str is logged ("Output of type ...") and silently dropped, and
a BytesIO with no --accept crashes json.dumps. (It also calls the plugin's get_train_args() at start-up:
a plugin without one cannot run under it.) With `cli_shim` (default) the handler runs shim.py with
deepaas-cli's own interpreter (read from its #! line): it wraps the model's predict() so a str, bytes
or file-like result is streamed to a side file (and None handed to deepaas-cli), then calls
deepaas-cli's own main() with the usual argv - deepaas-cli's own code path for everything else.
Without the shim (or when deepaas-cli is not a Python console script) such results end as NoOutputError.
TMPDIR points into the record's work dir, so the temporary copy deepaas-cli makes of the input (and
never deletes) goes away with the record; deepaas-cli builds UploadedFile(name="data", filename=<that
copy>, original_filename=<our copy's path>).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.errors import ConfigError, HandlerError, NoOutputError
from conveyor.handler import Invocation
from conveyor.handlers.deepaas.child_modes import CLI, child_env
from conveyor.handlers.deepaas.interpreter import script_interpreter
from conveyor.handlers.deepaas.model_log import last_error
from conveyor.handlers.deepaas.results import accept_extension, close_quietly, open_result, write_result
from conveyor.handlers.deepaas.selection import (
    KEY,
    Model,
    ModelMissing,
    args_rejected,
    check_args,
    choose_file_arg,
    choose_model,
    file_arg_paths,
    file_args,
)

log = logging.getLogger(__name__)

# Run by path with the model's own interpreter, which may not have Conveyor installed.
PROBE_SCRIPT = Path(__file__).with_name("probe.py")
SHIM_SCRIPT = Path(__file__).with_name("shim.py")


def find_model(
    inv: Invocation,
    *,
    model_name: str | None,
    file_arg: str | None,
    accept: str | None,
    args: Mapping[str, Any],
) -> Model:
    """The model deepaas-cli will run and its file argument: from the options when `file_arg` is set, else
    from the probe."""
    work, env, cli_path, python = _deepaas_cli(inv, model_name)
    if file_arg and not args and not accept:  # nothing to find out or check: save the probe's second
        return Model(model_name or "", file_arg)
    if python is None:
        if file_arg:
            log.warning("deepaas: %s is not a Python console script: %s cannot be checked against the "
                        "model's arguments before it runs, and are passed as they are", cli_path, f"{KEY}.args")
            return Model(model_name or "", file_arg)
        raise ConfigError(f"{cli_path} is not a Python console script, so the model's file argument "
                          "cannot be found out: set it", key=f"{KEY}.file_arg")
    return probe(inv, python, env, work, model_name=model_name, file_arg=file_arg, accept=accept, args=args)


def predict(
    inv: Invocation,
    copy: Path,
    stem: str,
    *,
    model: Model,
    model_name: str | None,
    accept: str | None,
    args: Mapping[str, Any],
    shim: bool,
) -> tuple[Path, int]:
    """One record through deepaas-cli: (the output file, the exit code)."""
    work, env, cli_path, python = _deepaas_cli(inv, model_name)
    raw, drop = work / "raw", work / "drop"
    for folder in (raw, drop):
        folder.mkdir(parents=True, exist_ok=True)
    ext = accept_extension(accept) or ".json"
    out_file = raw / f"{stem}{ext}"
    errors = work / "error.txt"
    tail = ["--deepaas_method_output", str(out_file), "predict", f"--{model.file_arg}", str(copy)]
    if accept:
        tail += ["--accept", accept]
    paths = file_arg_paths(model.files, args)  # absolute: deepaas-cli runs in its own work dir
    for key, value in args.items():
        if value is not None:
            tail += [f"--{key}", str(paths[key]) if key in paths else _cli_value(value)]
    if shim and python is not None:
        argv, shimmed = [python, str(SHIM_SCRIPT), str(drop), str(errors), *tail], True
    else:
        argv, shimmed = [cli_path, *tail], False
    offset = inv.log_offset()
    rc = inv.run_child(argv, cwd=work, env=env, prefix=CLI)
    if rc != 0:
        message = _read_text(errors) or last_error(inv, offset)
        raise HandlerError(f"model {model.name or '?'!r} failed ({CLI} exit {rc}): {message}",
                           exit_code=rc, model=model.name or None)
    dropped = sorted(drop.iterdir())
    if dropped:
        result = open_result(dropped[0], text=dropped[0].name == "result.txt")
    else:
        result = _read_cli_output(raw, shimmed)
    try:
        return write_result(result, inv.output_dir, stem, accept), rc
    finally:
        close_quietly(result)


def _deepaas_cli(inv: Invocation, model_name: str | None) -> tuple[Path, dict[str, str], str, str | None]:
    """The record's deepaas-cli work dir, the child's environment, deepaas-cli's path and its Python."""
    work = inv.work_dir / "deepaas-cli"
    env = child_env(inv, model_name, work / "tmp")
    cli_path = shutil.which(CLI, path=env.get("PATH", os.defpath))
    if cli_path is None:
        raise ConfigError(f"mode cli: {CLI} is not on PATH ({env.get('PATH', '')})", key=f"{KEY}.mode")
    return work, env, cli_path, script_interpreter(cli_path, env.get("PATH", os.defpath), module="deepaas.cmd.cli")


def probe(
    inv: Invocation,
    python: str,
    env: Mapping[str, str],
    work: Path,
    *,
    model_name: str | None,
    file_arg: str | None,
    accept: str | None,
    args: Mapping[str, Any],
) -> Model:
    """Ask the model's own Python which model runs and what its predict arguments are (probe.py)."""
    out = work / "probe.json"
    offset = inv.log_offset()
    given = {**args, "accept": accept} if accept else dict(args)
    argv = [python, str(PROBE_SCRIPT), model_name or "", json.dumps(given, default=str)]
    rc = inv.run_child(argv, cwd=work, env=env, stdout_file=out, prefix="deepaas-probe")
    if rc != 0:
        raise HandlerError(f"the deepaas model probe failed (exit {rc}): {last_error(inv, offset)}", exit_code=rc)
    try:
        report = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HandlerError(f"the deepaas model probe wrote no report: {exc}") from exc
    try:
        name = choose_model(report["names"], model_name)
    except ModelMissing as exc:
        raise ConfigError(f"{exc}, for {python}", key=f"{KEY}.model") from exc
    fields = report["fields"] or {}
    chosen_file_arg = choose_file_arg(name, fields, file_arg, given=args)
    if accept and "accept" not in fields:
        raise ConfigError(f"model {name!r} declares no 'accept' predict argument", key=f"{KEY}.accept")
    check_args(name, fields, chosen_file_arg, args)
    files = file_args(fields, chosen_file_arg, args)
    file_arg_paths(files, args)  # each exists, before the model runs
    if report.get("errors"):
        raise args_rejected(name, report["errors"], args)
    log.info("deepaas: %s runs model %r (file argument %r)", CLI, name, chosen_file_arg)
    return Model(name=name, file_arg=chosen_file_arg, files=tuple(files))


def _read_cli_output(raw: Path, shimmed: bool) -> Any:
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


def _cli_value(value: Any) -> str:
    """A predict argument as deepaas-cli parses it: bools as true/false, lists and dicts as Python literals."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return repr(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
