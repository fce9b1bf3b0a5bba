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


def select_function(values: Values, doc: Mapping[Any, Any], environ: Mapping[str, str]) -> Selection:
    """The function this worker runs: the document itself when flat, else one of its `functions`."""
    providers: list[Section] = [(doc.get("storage_providers"), "storage_providers")]
    conveyor: list[Section] = [(doc.get("conveyor"), "conveyor")]
    if "functions" not in doc or "name" in doc:
        return Selection(dict(doc), {}, providers, conveyor)
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
                    flat = dict(values.mapping(service, service_key))
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
