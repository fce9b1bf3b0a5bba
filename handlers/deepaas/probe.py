"""The cli mode's probe, run as a script by deepaas-cli's own interpreter: which models exist, and the
chosen one's predict arguments, as JSON on stdout.

    python probe.py [MODEL [ARGS_JSON]]
    -> {"names": [...], "model": NAME | null, "fields": {ARG: {"file": bool, "required": bool}, ...} | null,
        "errors": null | {ARG: [message, ...]} | "message"}

ARGS_JSON is the handler's `args` (with `accept` when asked): those that are not file arguments are
loaded through the model's own schema (marshmallow, partial: the input is not there yet), exactly as
warm mode loads them, and what the schema refuses comes back in "errors" (null when it takes them, or
when the model's marshmallow has no Schema.from_dict: marshmallow 2, nothing checked).

It runs in the model's Python, where Conveyor may not be installed (and which may be older than
Conveyor's): it imports nothing of Conveyor's and keeps to the Python 3.6 language.
"""

import json
import os
import sys
from typing import Any


def _as_with_dash_c():
    """Run as `python -c` would: the working directory first on sys.path, not this file's folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and sys.path[0] and os.path.abspath(sys.path[0]) == here:
        sys.path[0] = ""


def _check(predict_args, given):
    """What the model's schema says of the given arguments: None when it takes them."""
    import marshmallow

    if not given or not hasattr(marshmallow.Schema, "from_dict"):
        return None
    given = {k: v for k, v in given.items() if k in predict_args}  # the handler names the unknown ones
    try:
        marshmallow.Schema.from_dict(dict(predict_args), name="DeepaasPredictArgs")().load(given, partial=True)
    except marshmallow.ValidationError as exc:
        return exc.messages
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def main():
    from deepaas.model import loading

    want = sys.argv[1] if len(sys.argv) > 1 else ""
    models = loading.get_available_models("v2")
    out: dict[str, Any] = {"names": sorted(models), "model": None, "fields": None, "errors": None}
    if not want and len(models) == 1:
        want = next(iter(models))
    if want in models:
        out["model"] = want
        fields = {}
        predict_args = dict(models[want].get_predict_args())
        for key, value in predict_args.items():
            meta = getattr(value, "metadata", None) or {}
            fields[key] = {"file": meta.get("type") == "file", "required": bool(getattr(value, "required", False))}
        out["fields"] = fields
        given = json.loads(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else {}
        out["errors"] = _check(predict_args, {k: v for k, v in given.items() if not fields.get(k, {}).get("file")})
    sys.stdout.write(json.dumps(out, default=str))


if __name__ == "__main__":
    _as_with_dash_c()
    main()
