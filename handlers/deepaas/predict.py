"""predict mode: `deepaas-predict -i COPY -o DIR -ct TYPE [--model-name NAME]` per record, for old images.

deepaas-predict 2.6.0 does not call the v2 `predict()`: it calls the plugin's pre-v2 `predict_data({"files":
[UploadedFile], "accept": TYPE})` (and looks `predict_url` up eagerly), so only models that still have
those work. It writes JSON results as a Python repr (turned into JSON here), and copies a returned open
file by its `.name` (a BytesIO result crashes it). `args` cannot be passed in this mode. It builds
UploadedFile(name=filename=<our copy's path>).
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path
from typing import Any

from conveyor.errors import ConfigError, HandlerError, NoOutputError
from conveyor.handler import Invocation
from conveyor.handlers.deepaas.child_modes import PREDICT, child_env
from conveyor.handlers.deepaas.model_log import last_error
from conveyor.handlers.deepaas.results import JSON_TYPES, close_quietly, write_result
from conveyor.handlers.deepaas.selection import KEY
from conveyor.media import media_type


def predict(inv: Invocation, copy: Path, stem: str, *, model_name: str | None, accept: str | None) -> tuple[Path, int]:
    """One record through deepaas-predict: (the output file, the exit code)."""
    work = inv.work_dir / "deepaas-predict"
    raw, cwd = work / "raw", work / "cwd"
    for folder in (raw, cwd):
        folder.mkdir(parents=True, exist_ok=True)
    env = child_env(inv, model_name, work / "tmp")
    exe = shutil.which(PREDICT, path=env.get("PATH", os.defpath))
    if exe is None:
        raise ConfigError(f"mode predict: {PREDICT} is not on PATH ({env.get('PATH', '')})", key=f"{KEY}.mode")
    content_type = accept or "application/json"
    argv = [exe, "-i", str(copy), "-o", str(raw), "-ct", content_type]
    if model_name:
        argv += ["--model-name", model_name]
    offset = inv.log_offset()
    rc = inv.run_child(argv, cwd=cwd, env=env, prefix=PREDICT)
    if rc != 0:
        message = last_error(inv, offset)
        if "predict_data" in message or "predict_url" in message:
            message += (f" ({PREDICT} 2.6.0 calls the pre-v2 predict_data()/predict_url(), not predict(): "
                        "use mode cli or warm for a v2-only model)")
        raise HandlerError(f"model {model_name or '?'!r} failed ({PREDICT} exit {rc}): {message}",
                           exit_code=rc, model=model_name)
    written = sorted(p for p in raw.iterdir() if p.is_file())
    if not written:
        raise NoOutputError(f"{PREDICT} wrote no result")
    path = written[0]
    if media_type(content_type) in JSON_TYPES or path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            result: Any = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError) as exc:
            raise HandlerError(f"{PREDICT} wrote a result that is not a Python literal, so it cannot be "
                               f"turned into JSON ({exc}): {text[:200]!r}") from exc
    else:
        result = open(path, "rb")
    try:
        return write_result(result, inv.output_dir, stem, accept), rc
    finally:
        close_quietly(result)
