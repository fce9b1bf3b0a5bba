"""The catalogue: the models the gateway offers, read from one YAML file (`conveyor gateway --catalogue FILE`).

    models:
      - name: yolo                       # in URLs and folder names: a-z, 0-9, '-', '_'
        title: Object detection (YOLOv3-tiny)
        description: Finds people, animals and objects in a photo and draws boxes around them.
        accepts: [.jpg, .jpeg, .png]     # file types offered in the upload dialog; [] or absent = anything
        example: samples/dog.jpg         # an example input, downloadable from the page (optional)
        platform: local                  # lambda | batch | lambda-batch | oscar | local
        definition: functions/yolo.yaml  # the function definition it runs with ...
      - name: echo
        title: Copy
        description: Returns the file unchanged.
        platform: oscar
        function:                        # ... or the definition inline, in any shape Conveyor reads
          name: echo
          input: [{storage_provider: minio.default, path: echo/in}]
          output: [{storage_provider: minio.default, path: echo/out}]
          storage_providers: {minio: {default: {endpoint: "http://127.0.0.1:9000", access_key: ..., secret_key: ...}}}
          conveyor: {status: {storage_provider: minio.default, path: echo/status}, keep_input_folders: true}

Relative paths (definition, example) are relative to the catalogue file. A definition is loaded with
conveyor.config's loader (load_config), so it is read exactly as `conveyor run --config FILE` reads
it: SCAR, OSCAR and oscar-cli shapes, storage_providers, minio.default's secret files, `conveyor:`.
The gateway stores an upload under the definition's first `input` entry, finds outputs through the
result record, and reads the record from `conveyor: status:` (without it, every job stays PENDING).
`conveyor: keep_input_folders: true` is required: it puts each upload's outputs under its own
<user>/<upload id>/ folder of the output path.
The top level may also be the list of models itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conveyor.config import FunctionConfig, load_config, read_text_file
from conveyor.errors import ConfigError
from conveyor.platform import Platform

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
PLATFORMS = ("lambda", "batch", "lambda-batch", "oscar", "local")
# Which platform's rules load_config applies to a definition run on each catalogue platform.
_LOAD_AS = {"lambda": "lambda", "lambda-batch": "lambda", "batch": "batch", "oscar": "oscar", "local": "local"}


@dataclass(frozen=True)
class Model:
    """One catalogue entry."""

    name: str  # URL-safe: [a-z0-9-_]+
    title: str
    description: str  # one line
    accepts: tuple[str, ...]  # file extensions like ".jpg", ".png"; empty = anything
    config: FunctionConfig  # its input/output/status storage and platform
    platform: str  # lambda | batch | lambda-batch | oscar | local
    example: Path | None = None  # an example input file, downloadable from the page

    def accepts_name(self, name: str) -> bool:
        return not self.accepts or name.lower().endswith(self.accepts)


def load_catalogue(path: Path, environ: Mapping[str, str]) -> list[Model]:
    """The models of a catalogue file; ConfigError naming the entry and key for anything unusable."""
    path = Path(path)
    text = read_text_file(str(path))
    if text is None:
        raise ConfigError("catalogue file not found", source=str(path))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {' '.join(str(exc).split())}", source=str(path)) from None
    entries = doc.get("models") if isinstance(doc, Mapping) else doc
    if not isinstance(entries, list) or not entries:
        raise ConfigError("must hold a non-empty list `models:` of catalogue entries", key="models", source=str(path))
    models: list[Model] = []
    for index, entry in enumerate(entries):
        model = _entry(entry, f"models[{index}]", path, environ)
        if any(m.name == model.name for m in models):
            raise ConfigError(
                f"model name {model.name!r} is given twice", key=f"models[{index}].name", source=str(path)
            )
        models.append(model)
    return models


def _entry(entry: Any, key: str, catalogue: Path, environ: Mapping[str, str]) -> Model:
    source = str(catalogue)
    if not isinstance(entry, Mapping):
        raise ConfigError("must be a mapping (name, title, description, ...)", key=key, source=source)

    def text(field: str, default: str | None = None) -> str:
        value = entry.get(field, default)
        if not isinstance(value, str) or (default is None and not value.strip()):
            raise ConfigError("must be a non-empty string", key=f"{key}.{field}", source=source)
        return " ".join(value.split())

    name = text("name")
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{name!r} must be 1-64 of a-z, 0-9, '-', '_'", key=f"{key}.name", source=source)
    platform = text("platform", "local").lower()
    if platform not in PLATFORMS:
        raise ConfigError(f"{platform!r} is not one of {', '.join(PLATFORMS)}", key=f"{key}.platform", source=source)
    accepts_value = entry.get("accepts") or []
    if isinstance(accepts_value, str):
        accepts_value = accepts_value.replace(",", " ").split()
    if not isinstance(accepts_value, list) or not all(isinstance(a, str) and a.strip() for a in accepts_value):
        raise ConfigError("must be a list of file extensions like .jpg", key=f"{key}.accepts", source=source)
    accepts = tuple(dict.fromkeys(("." + a.strip().lower().lstrip(".")) for a in accepts_value))
    example = None
    if entry.get("example") is not None:
        example = _relative(catalogue, text("example"))
        if not example.is_file():
            raise ConfigError(f"example file not found: {example}", key=f"{key}.example", source=source)
    config = _definition(entry, key, catalogue, environ, platform)
    if not config.inputs:
        raise ConfigError(
            "the function definition has no `input` entry: the gateway stores uploads under the first one",
            key=f"{key}.definition",
            source=source,
        )
    if not config.conveyor.keep_input_folders:
        raise ConfigError(
            "the function definition must set `conveyor: keep_input_folders: true`: the gateway stores each "
            "upload under <input path>/<user>/<upload id>/, and without it every user's outputs of a file "
            "name land on the same object (one person would see and delete another's results)",
            key=f"{key}.definition",
            source=source,
        )
    if config.conveyor.status is None:
        log.warning(
            "model %s: its definition sets no `conveyor: status:`, so the gateway cannot read its result "
            "records and its jobs stay PENDING",
            name,
        )
    return Model(
        name=name,
        title=text("title", name) or name,
        description=text("description", ""),
        accepts=accepts,
        config=config,
        platform=platform,
        example=example,
    )


def _relative(catalogue: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else catalogue.parent / path


def _definition(
    entry: Mapping[str, Any], key: str, catalogue: Path, environ: Mapping[str, str], platform: str
) -> FunctionConfig:
    has_path, has_inline = entry.get("definition") is not None, entry.get("function") is not None
    if has_path == has_inline:
        raise ConfigError(
            "give the function definition either as `definition: FILE` or inline as `function: {...}`",
            key=key,
            source=str(catalogue),
        )
    load_as = Platform(_LOAD_AS[platform])
    if has_path:
        value = entry["definition"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("must be a file path", key=f"{key}.definition", source=str(catalogue))
        return load_config(environ, load_as, path=_relative(catalogue, value))
    inline = entry["function"]
    if not isinstance(inline, Mapping):
        raise ConfigError("must be a mapping (a function definition)", key=f"{key}.function", source=str(catalogue))
    virtual = f"{catalogue}: {key}.function"
    body = yaml.safe_dump(dict(inline), sort_keys=False)

    def reader(wanted: str) -> str | None:
        return body if wanted == virtual else read_text_file(_relative(catalogue, wanted).as_posix())

    return load_config(environ, load_as, path=virtual, read_file=reader)
