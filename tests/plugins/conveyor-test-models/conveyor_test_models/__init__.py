"""DEEPaaS v2 models for Conveyor's handler tests: one that behaves, and several that do not.

    conveyor-echo     file argument `audio`; echoes its arguments (greeting, repeat, tags)
    conveyor-broken   raises RuntimeError with a recognisable message
    conveyor-deleter  deletes the input file it was given, as DEEP catalog models do
    conveyor-sleeper  sleeps `seconds` (default 30) before answering: a hung model
    conveyor-triple   the ai4os demo app's shape: three required file arguments (image, audio, video),
                      `intensity` an int in 1..100, `flavour` one of plain/spicy; v2 only

Each module but conveyor-triple has `predict_data()` as well, the pre-v2 entry that deepaas-predict 2.6.0 calls.
"""

import hashlib
import os


def describe(upload, model):
    """The facts every test model reports about its input."""
    with open(upload.filename, "rb") as src:
        data = src.read()
    return {
        "model": model,
        "file_name": os.path.basename(upload.original_filename or upload.filename),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def file_field(description):
    from webargs import fields

    return fields.Field(required=True, metadata={"type": "file", "location": "form", "description": description})
