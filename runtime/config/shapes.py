"""Which document shape this is (SCAR, OSCAR, oscar-cli), and the one function definition it picks.

Shapes understood, unchanged:
  - the flat file SCAR writes into the image (/var/task/function_config.yaml, and base64 in the
    Batch job's FUNCTION_CONFIG): the `lambda:` section of the user's definition, plus
    `storage_providers` and, in batch mode, `batch: {multi_node_parallel: ...}`;
  - the flat service OSCAR writes into /oscar/config/function_config.yaml (`image`, `script`,
    `environment.variables`, `minio.default` with `hidden` keys ...);
  - the user-facing definitions (for --config): SCAR's `functions: {aws: [{lambda: {...}, batch: {...}}]}`
    and oscar-cli's `functions: {oscar: [{<cluster>: {...}}]}`, with `storage_providers` at the top.
With several functions in one file, AWS_LAMBDA_FUNCTION_NAME or OSCAR_SERVICE_NAME picks one.

An OSCAR service's keys are read whatever their case, as OSCAR's API reads them (`environment:
{Variables: ...}` is `environment.variables`); SCAR's shapes are read as spelled, as SCAR does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from conveyor.config.values import Section, Values, join, kind

# (the function's name if it has one, its flat definition, key -> key path in the document)
_Candidate = tuple[str | None, dict[str, Any], dict[str, str]]


class Selection(NamedTuple):
    """One function definition, flattened, and the sections that apply to it."""

    flat: dict[str, Any]  # the function's own keys (name, input, output, container ...)
    paths: dict[str, str]  # key in `flat` -> its key path in the document (absent: the key itself)
    providers: list[Section]  # storage_providers sections, later ones win
    conveyor: list[Section]  # conveyor: sections, later ones win


# The keys of an OSCAR service that OSCAR's API reads whatever their case (it decodes the service
# as JSON with Go's encoding/json, which matches struct fields case-insensitively): `Variables`,
# `Log_Level`, `Storage_Provider` ... are read as `variables`, `log_level`, `storage_provider`. Only
# keys, never the names under them (variable names, provider ids). `_MAP` marks a map of names.
_MAP = "<names>"
_IO = {"storage_provider": None, "path": None, "prefix": None, "suffix": None}
_PROVIDER_FIELDS = {
    name: None
    for name in (
        "endpoint", "verify", "access_key", "secret_key", "region", "oneprovider_host", "token", "space",
        "hostname", "login", "password",
    )
}
_PROVIDERS = {kind: {_MAP: _PROVIDER_FIELDS} for kind in ("s3", "minio", "onedata", "webdav", "rucio")}
OSCAR_SERVICE_KEYS: dict[str, Any] = {
    **{
        name: None
        for name in (
            "name", "log_level", "image", "script", "file_stage_in", "isolation_level", "bucket_list",
        )
    },
    "input": [_IO],
    "output": [_IO],
    "environment": {"variables": None, "secrets": None},
    "storage_providers": _PROVIDERS,
}


def fold_keys(value: Any, schema: Any) -> Any:
    """`value` with its keys spelled as `schema` spells them when they match but for case.

    An exact spelling wins; two spellings of one mapping key (`variables` and `Variables`) are
    merged in document order, as Go's decoder fills one map from both.
    """
    if isinstance(schema, list) and isinstance(value, list):
        return [fold_keys(item, schema[0]) for item in value]
    if not isinstance(schema, dict) or not isinstance(value, Mapping):
        return value
    if _MAP in schema:
        return {k: fold_keys(v, schema[_MAP]) for k, v in value.items()}
    known = {name.lower(): name for name in schema}
    out: dict[Any, Any] = {}
    for key, item in value.items():
        name = key if key in schema else known.get(key.lower()) if isinstance(key, str) else None
        if name is None:
            out.setdefault(key, item)
            continue
        item = fold_keys(item, schema[name])
        if isinstance(out.get(name), Mapping) and isinstance(item, Mapping):
            item = {**out[name], **item}
        elif name in out and name != key:
            continue  # the exact spelling wins over another case of it
        out[name] = item
    return out


def select_function(values: Values, doc: Mapping[Any, Any], environ: Mapping[str, str]) -> Selection:
    """The function this worker runs: the document itself when flat, else one of its `functions`."""
    providers: list[Section] = [(doc.get("storage_providers"), "storage_providers")]
    conveyor: list[Section] = [(doc.get("conveyor"), "conveyor")]
    if "functions" not in doc or "name" in doc:
        if isinstance(doc.get("container"), Mapping):
            # SCAR's flat file (its lambda section): SCAR reads its keys as spelled, and its top-level
            # `environment: {Variables: ...}` is the Lambda function's own (UDOCKER_DIR ...), not the script's.
            return Selection(dict(doc), {}, providers, conveyor)
        flat = fold_keys(doc, OSCAR_SERVICE_KEYS)
        return Selection(flat, {}, [(flat.get("storage_providers"), "storage_providers")], conveyor)
    functions = values.mapping(doc["functions"], "functions")
    candidates: list[_Candidate] = []
    for platform_key in ("aws", "oscar"):
        entries = functions.get(platform_key)
        if entries is None:
            continue
        where = join("functions", platform_key)
        if not isinstance(entries, list):
            raise values.fail(where, f"must be a list of function definitions, not {kind(entries)}")
        for i, entry in enumerate(entries):
            entry_key = join(where, i)
            entry = values.mapping(entry, entry_key)
            if platform_key == "aws":
                candidates.append(_scar_function(values, entry, entry_key))
            else:
                for cluster, service in entry.items():
                    service_key = join(entry_key, str(cluster))
                    flat = fold_keys(dict(values.mapping(service, service_key)), OSCAR_SERVICE_KEYS)
                    candidates.append((_name_of(flat), flat, {k: join(service_key, k) for k in flat}))
    if not candidates:
        raise values.fail(
            "functions",
            "holds no function definition (expected functions.aws[].lambda"
            " as SCAR writes it, or functions.oscar[].<cluster> as oscar-cli does)",
        )
    _, flat, paths = _choose(values, candidates, environ)
    for name, sections in (("storage_providers", providers), ("conveyor", conveyor)):
        if name in flat:  # function-level sections win over the top-level ones
            sections.append((flat[name], paths[name]))
    return Selection(flat, paths, providers, conveyor)


def _scar_function(values: Values, entry: Mapping[Any, Any], key: str) -> _Candidate:
    lambda_key = join(key, "lambda")
    if "lambda" not in entry:
        raise values.fail(lambda_key, "is required in every functions.aws entry")
    flat = dict(values.mapping(entry["lambda"], lambda_key))
    paths = {k: join(lambda_key, str(k)) for k in flat}
    if "batch" in entry:
        flat["batch"] = entry["batch"]
        paths["batch"] = join(key, "batch")
    return _name_of(flat), flat, paths


def _choose(values: Values, candidates: list[_Candidate], environ: Mapping[str, str]) -> _Candidate:
    if len(candidates) == 1:
        return candidates[0]
    wanted = [environ.get(v) for v in ("AWS_LAMBDA_FUNCTION_NAME", "OSCAR_SERVICE_NAME")]
    for candidate in candidates:
        if candidate[0] is not None and candidate[0] in wanted:
            return candidate
    names = ", ".join(str(c[0]) for c in candidates)
    raise values.fail(
        "functions",
        f"holds {len(candidates)} functions ({names}): set AWS_LAMBDA_FUNCTION_NAME or OSCAR_SERVICE_NAME"
        " to the one this worker runs",
    )


def _name_of(flat: Mapping[Any, Any]) -> str | None:
    name = flat.get("name")
    return str(name) if isinstance(name, (str, int, float)) and not isinstance(name, bool) else None
