"""Which DEEPaaS model runs and which of its predict arguments gets the input file, and its argument schema."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
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


def choose_file_arg(model: str, fields: Mapping[str, Mapping[str, Any]], wanted: str | None) -> str:
    """The predict argument that gets the input: the named one, the only file field, or the only required one."""
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


def validation_message(exc: Exception) -> str:
    messages = getattr(exc, "messages", None)
    return json.dumps(messages, default=str) if messages else describe_exc(exc)
