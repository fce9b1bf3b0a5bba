"""The function definition of a local run: a `--model` preset or a `--config` file, pointed at the
embedded S3 server.

Whatever the source, the run gets one flat definition (the shape OSCAR mounts and Batch passes in
FUNCTION_CONFIG), written to DIR/.conveyor/function_config.yaml (mode 0600: it holds the keys):

    storage_providers.minio.default   the embedded server (endpoint and keys)
    input                             minio.default, bucket `input`
    output                            minio.default, bucket `output` (a --config file's prefix /
                                      suffix filters are kept)
    conveyor.status                   minio.default, bucket `status`: the result records
    conveyor.timeout                  --timeout, unless the definition sets its own

From a --config file (any shape `conveyor run --config` reads: flat, SCAR or oscar-cli) the name,
log level, file_stage_in, environment variables, the resolved user script (inlined), the handler
and its options, and Conveyor's timeouts and log limits are kept; its own storage providers,
inputs and outputs are replaced, because a local run reads and writes the embedded server only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conveyor.config import FunctionConfig, load_config
from conveyor.errors import ConfigError
from conveyor.platform import Platform

INPUT_BUCKET = "input"
OUTPUT_BUCKET = "output"
STATUS_BUCKET = "status"
BUCKETS = (INPUT_BUCKET, OUTPUT_BUCKET, STATUS_BUCKET)
DEFAULT_MODEL = "darknet"
IMAGE_TYPES = (".jpg", ".jpeg", ".png")

COPY_SCRIPT = r"""#!/bin/sh
# conveyor local --model script: the smallest model. Copies its input and writes the input's
# sha256 next to it; refuses a .jpg / .png that is not one (a "corrupt" upload).
set -eu
name=$(basename "$INPUT_FILE_PATH")
magic=$(head -c 4 "$INPUT_FILE_PATH" | od -An -tx1 | tr -d ' \n')
case "$name" in
  *.jpg|*.jpeg|*.JPG|*.JPEG)
    case "$magic" in
      ffd8ff*) ;;
      *) echo "$name is not a JPEG (it starts with '${magic:-nothing}')" >&2; exit 65;;
    esac;;
  *.png|*.PNG)
    [ "$magic" = "89504e47" ] || { echo "$name is not a PNG (it starts with '${magic:-nothing}')" >&2; exit 65; };;
esac
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/$name"
sha256sum "$INPUT_FILE_PATH" | cut -d ' ' -f 1 > "$TMP_OUTPUT_DIR/$name.sha256"
echo "copied $name ($(wc -c < "$INPUT_FILE_PATH") bytes)"
"""


@dataclass(frozen=True)
class Model:
    """A --model preset: the handler block, and what the run needs around it."""

    name: str
    handler: Mapping[str, Any]
    description: str
    image: str  # for --docker
    script: str | None = None
    outputs_required: bool = True
    # For the gateway's catalogue: a title, the file types the model takes (empty: any file) and
    # an example input (a file in samples/).
    title: str = ""
    accepts: tuple[str, ...] = ()
    example: str | None = None


MODELS: dict[str, Model] = {
    "darknet": Model(
        name="darknet",
        handler={"name": "darknet", "backend": "auto", "threshold": 0.25},
        description="YOLOv3-tiny object detection (80 COCO classes): <name>.json and the annotated image",
        image="conveyor/yolo",
        title="Object detection (YOLOv3-tiny)",
        accepts=IMAGE_TYPES,
        example="dog.jpg",
    ),
    "script": Model(
        name="script",
        handler={"name": "script"},
        description="a shell script that copies its input and writes its sha256",
        image="conveyor/base",
        script=COPY_SCRIPT,
        title="Copy script (the smallest model)",
        example="dog.jpg",
    ),
    "deepaas-demo": Model(
        name="deepaas-demo",
        handler={"name": "deepaas", "model": "conveyor-demo", "accept": "application/json"},
        description="the DEEPaaS demo model (tests/plugins/conveyor-demo-model): <name>.json fingerprint",
        image="conveyor/deepaas-demo",
        title="DEEPaaS demo model",
        example="dog.jpg",
    ),
}


def model_named(name: str) -> Model:
    """A preset, or any registered handler by name with its default options."""
    if name in MODELS:
        return MODELS[name]
    from conveyor.handler import handler_class, known_handlers

    if ":" in name:  # a direct `module:Class` reference: it must load
        handler_class(name)
    elif name not in (handlers := known_handlers()):
        raise ConfigError(f"unknown model {name!r}: not a preset ({', '.join(MODELS)}) nor a handler "
                          f"({', '.join(handlers)})", key="--model")
    return Model(name=name, handler={"name": name}, description=f"the {name} handler", image="conveyor/base",
                 title=name)


def preset_for_handler(handler: str) -> Model | None:
    """The preset that runs this handler (what a --config file for it accepts, its example), if any."""
    return next((model for model in MODELS.values() if model.handler["name"] == handler), None)


def preset_definition(model: Model) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": f"conveyor-local-{model.name}",
        "log_level": "INFO",
        "conveyor": {"handler": dict(model.handler), "require_output": model.outputs_required},
    }
    if model.script is not None:
        doc["init_script"] = model.script
    return doc


def definition_from_file(path: str | os.PathLike[str], environ: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The parts of a --config file a local run keeps, as a flat definition; and the handler name."""
    config = load_config(environ, Platform.LOCAL, path=path, secrets_dir=None)
    return definition_from_config(config), config.conveyor.handler.name


def definition_from_config(config: FunctionConfig) -> dict[str, Any]:
    settings = config.conveyor
    conveyor: dict[str, Any] = {
        "handler": {"name": settings.handler.name, **_plain(settings.handler.options)},
        "grace_period": settings.grace_period,
        "log_tail_bytes": settings.log_tail_bytes,
        "log_max_bytes": settings.log_max_bytes,
    }
    if settings.timeout is not None:
        conveyor["timeout"] = settings.timeout
    if settings.require_output is not None:
        conveyor["require_output"] = settings.require_output
    doc: dict[str, Any] = {
        "name": config.name,
        "log_level": config.log_level,
        "file_stage_in": config.file_stage_in,
        "container": {"timeout_threshold": config.timeout_threshold},
        "conveyor": conveyor,
    }
    if config.environment:
        doc["environment"] = {"variables": dict(config.environment)}
    if config.script is not None:
        try:
            doc["init_script"] = _inline_script(config.script.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError("the user script is not UTF-8 text: a local run passes it inline",
                              key="init_script", source=config.source) from None
    filters = []
    for spec in config.outputs:
        entry = {"prefix": list(spec.prefix), "suffix": list(spec.suffix)}
        if entry not in filters:
            filters.append(entry)
    doc["_output_filters"] = filters
    return doc


def _inline_script(text: str) -> str:
    """The config loader takes init_script as text when it has a newline or a #! line."""
    return text if "\n" in text or text.lstrip().startswith("#!") else text + "\n"


def localize(
    doc: Mapping[str, Any], *, endpoint: str, access_key: str, secret_key: str, timeout: float
) -> dict[str, Any]:
    """The definition `doc` wired to the embedded server's buckets (see the module docstring)."""
    out = {k: v for k, v in doc.items() if not k.startswith("_")}
    conveyor = dict(out.get("conveyor") or {})
    conveyor.setdefault("timeout", timeout)
    conveyor["status"] = {"storage_provider": "minio.default", "path": STATUS_BUCKET}
    # inbox/a/x.jpg and inbox/b/x.jpg (or two gateway users' x.jpg) must not share output/x.json
    conveyor["keep_input_folders"] = True
    out["conveyor"] = conveyor
    out["storage_providers"] = {
        "minio": {
            "default": {
                "endpoint": endpoint,
                "access_key": access_key,
                "secret_key": secret_key,
                "region": "us-east-1",
                "verify": False,
            }
        }
    }
    out["input"] = [{"storage_provider": "minio.default", "path": INPUT_BUCKET}]
    filters = doc.get("_output_filters") or [{}]
    out["output"] = [{"storage_provider": "minio.default", "path": OUTPUT_BUCKET, **f} for f in filters]
    return out


def write_definition(doc: Mapping[str, Any], path: Path) -> str:
    """Write the definition (0600) and return its YAML text."""
    text = yaml.dump(dict(doc), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
    return text


class _Dumper(yaml.SafeDumper):
    """Safe YAML, with multi-line strings (the script) as literal blocks a person can read."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and all(ch == "\n" or ch == "\t" or ch >= " " for ch in value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _plain(value: Any) -> Any:
    """Mappings and sequences of a frozen config as plain dicts and lists (for yaml.safe_dump)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
