"""Which DEEPaaS model runs and which of its predict arguments gets the input file, and its argument schema."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.errors import ConfigError
from conveyor.handlers.deepaas.model_log import describe_exc

MODEL_GROUP = "deepaas.v2.model"
KEY = "conveyor.handler"


@dataclass(frozen=True)
class Model:
    """What the handler learned about the model."""

    name: str  # "" when deepaas-cli picks it (cli mode with file_arg set and no model named)
    file_arg: str
    obj: Any = None  # the plugin itself (warm mode only)
    files: tuple[str, ...] = ()  # the file-type arguments `args` gives paths to, besides file_arg


class ModelMissing(Exception):
    """The named model (or any model) is not installed where we looked."""


def choose_model(names: list[str], wanted: str | None) -> str:
    """The model to run: the named one, or the only one installed. Several and none named is a ConfigError."""
    if wanted:
        if wanted not in names:
            raise ModelMissing(f"model {wanted!r} is not installed "
                               f"(installed {MODEL_GROUP} models: {', '.join(names) or 'none'})")
        return wanted
    if len(names) == 1:
        return names[0]
    if not names:
        raise ModelMissing(f"no DEEPaaS model is installed (the entry-point group {MODEL_GROUP} is empty)")
    raise ConfigError(f"several DEEPaaS models are installed ({', '.join(names)}) and none is named: "
                      f"set {KEY}.model to one of them", key=f"{KEY}.model")


def is_file_field(value: Any) -> bool:
    metadata = getattr(value, "metadata", None) or {}
    return metadata.get("type") == "file"


def choose_file_arg(
    model: str, fields: Mapping[str, Mapping[str, Any]], wanted: str | None, given: Collection[str] = (),
) -> str:
    """The predict argument that gets the input: the named one, the only file field, the only file field
    `args` gives no path, or the only required one."""
    files = [k for k, v in fields.items() if v.get("file")]
    if wanted:
        if wanted not in fields:
            raise ConfigError(f"model {model!r} has no predict argument {wanted!r} (it has: {', '.join(fields)})",
                              key=f"{KEY}.file_arg")
        return wanted
    if len(files) == 1:
        return files[0]
    left = [k for k in files if k not in given]
    if files and len(left) == 1:
        return left[0]
    required = [k for k in left if fields[k].get("required")]
    if len(required) == 1:
        return required[0]
    if not files:
        raise ConfigError(f"model {model!r} declares no file argument (a field with metadata type 'file')",
                          key=f"{KEY}.file_arg")
    raise ConfigError(f"model {model!r} declares several file arguments ({', '.join(files)}): name one",
                      key=f"{KEY}.file_arg")


def check_args(model: str, fields: Mapping[str, Mapping[str, Any]], file_arg: str, args: Mapping[str, Any]) -> None:
    """What every mode checks of `args` itself, before the model's schema (check_file_args, args_rejected):
    every name is a predict argument, and the input's own argument is not given a value."""
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise ConfigError(f"model {model!r} has no predict argument(s) {', '.join(unknown)} "
                          f"(it has: {', '.join(fields)})", key=f"{KEY}.args.{unknown[0]}")
    if file_arg in args:
        raise ConfigError(f"{file_arg!r} is the argument that gets the record's input file: give it no value "
                          f"in args (or name another one in {KEY}.file_arg)", key=f"{KEY}.args.{file_arg}")


def file_args(fields: Mapping[str, Mapping[str, Any]], file_arg: str, args: Mapping[str, Any]) -> list[str]:
    """The file-type arguments `args` gives a path to, besides the input's own argument."""
    return [k for k, v in args.items() if k != file_arg and v is not None and fields.get(k, {}).get("file")]


def file_arg_paths(names: Collection[str], args: Mapping[str, Any]) -> dict[str, Path]:
    """The paths `args` gives to file-type arguments, each an existing file. A relative path is taken from
    Conveyor's working directory, as the script handler runs scripts (deepaas-cli would take it from its
    private work dir, where nothing is): the same file in every mode."""
    paths: dict[str, Path] = {}
    for name in names:
        value = args[name]
        key = f"{KEY}.args.{name}"
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise ConfigError(f"{name!r} is a file argument: give it a file path (got {value!r})", key=key)
        path = Path(os.path.abspath(os.path.expanduser(str(value))))
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(f"the file given to the model's file argument {name!r} {what}: {path}", key=key)
        paths[name] = path
    return paths


def args_rejected(model: str, messages: Any, args: Mapping[str, Any]) -> ConfigError:
    """The model's own schema refused `args` (marshmallow's messages): one error, worded the same in every
    mode (warm loads the schema here; cli's probe loads it in the model's Python), naming the first key."""
    if isinstance(messages, Mapping) and messages:
        bad = sorted(str(k) for k in messages)
        first = bad[0]
        key = f"{KEY}.args.{first}" if first in args or first != "accept" else f"{KEY}.accept"
        parts = []
        for name in bad:
            said = messages.get(name)
            said = " ".join(str(m) for m in said) if isinstance(said, list) else str(said)
            parts.append(f"{name}: {said}")
        text = "; ".join(parts)
    else:
        key, text = f"{KEY}.args", str(messages)
    return ConfigError(f"model {model!r} rejects it: {text}", key=key)


def schema_for(fields: Mapping[str, Any]) -> Any:
    """The model's predict arguments as a marshmallow schema: defaults, conversion, validation, as deepaas's API."""
    import marshmallow

    return marshmallow.Schema.from_dict(dict(fields), name="DeepaasPredictArgs")()


def api_default_accept(field: Any) -> str | None:
    """deepaas's API sends the first of `accept`'s choices when the field has no default of its own."""
    if field is None:
        return None
    import marshmallow

    if getattr(field, "load_default", marshmallow.missing) is not marshmallow.missing:
        return None
    choices = getattr(getattr(field, "validate", None), "choices", None)
    return str(next(iter(choices))) if choices else None


def validation_messages(exc: Exception) -> Any:
    """marshmallow's messages of a failed load (a dict by argument), else the exception in one line."""
    return getattr(exc, "messages", None) or describe_exc(exc)


def validation_message(exc: Exception) -> str:
    messages = getattr(exc, "messages", None)
    return json.dumps(messages, default=str) if messages else describe_exc(exc)
