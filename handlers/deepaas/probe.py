"""The cli mode's probe, run as a script by deepaas-cli's own interpreter: which models exist, and the
chosen one's predict arguments, as JSON on stdout.

    python probe.py [MODEL]
    -> {"names": [...], "model": NAME | null, "fields": {ARG: {"file": bool, "required": bool}, ...} | null}

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


def main():
    from deepaas.model import loading

    want = sys.argv[1] if len(sys.argv) > 1 else ""
    models = loading.get_available_models("v2")
    out: dict[str, Any] = {"names": sorted(models), "model": None, "fields": None}
    if not want and len(models) == 1:
        want = next(iter(models))
    if want in models:
        out["model"] = want
        fields = {}
        for key, value in models[want].get_predict_args().items():
            meta = getattr(value, "metadata", None) or {}
            fields[key] = {"file": meta.get("type") == "file", "required": bool(getattr(value, "required", False))}
        out["fields"] = fields
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    _as_with_dash_c()
    main()
