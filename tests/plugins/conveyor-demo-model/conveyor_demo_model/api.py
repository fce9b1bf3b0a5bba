"""conveyor-demo: a DEEPaaS v2 model that fingerprints its input file.

It is what a DEEP Open Catalog model looks like to DEEPaaS, minus the weights: module-level
`get_metadata()`, `get_predict_args()`, `warm()` and `predict(**kwargs)`, plugged in through
the `deepaas.v2.model` entry-point group. The result depends on `accept`:

    application/json (default)  a dict: file name, content type, size, sha256, label
    text/plain                  one line of text
    image/png                   an 8x8 PNG coloured by the sha256
    application/zip             result.json + fingerprint.png

PNG and ZIP come back as an in-memory BytesIO, or as an open file when `as_file` is true
(the two shapes DEEP models use). `predict_data()` is the pre-v2 entry that deepaas-predict
(2.6.0) still calls instead of `predict()`.

`WARM_CALLS` counts warm() calls, so a test can prove the model was warmed once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
import zipfile
import zlib

from webargs import fields, validate

WARM_CALLS = 0
MEDIA_TYPES = ("application/json", "text/plain", "image/png", "application/zip")


def get_metadata():
    return {
        "name": "conveyor-demo",
        "description": "Fingerprints its input: size and sha256, as JSON, text, a PNG or a ZIP.",
        "author": "Conveyor",
        "license": "Apache-2.0",
        "version": "0.1.0",
    }


def warm():
    global WARM_CALLS
    WARM_CALLS += 1


def get_predict_args():
    return {
        "image": fields.Field(
            required=True,
            metadata={"type": "file", "location": "form", "description": "Any file to fingerprint."},
        ),
        "accept": fields.Str(
            load_default="application/json",
            validate=validate.OneOf(list(MEDIA_TYPES)),
            metadata={"location": "headers", "description": "Media type of the result."},
        ),
        "as_file": fields.Bool(
            load_default=False,
            metadata={"description": "Return PNG/ZIP results as an open file instead of a BytesIO."},
        ),
        "label": fields.Str(load_default="demo", metadata={"description": "Copied into the result."}),
    }

def get_train_args():
    return {}  # deepaas-cli 2.6.0 calls this on every start, even to predict


def predict(**kwargs):
    upload = kwargs["image"]
    facts = _fingerprint(upload)
    facts["label"] = kwargs.get("label") or "demo"
    accept = kwargs.get("accept") or "application/json"
    if accept == "text/plain":
        return f"{facts['file_name']} {facts['size']} {facts['sha256']}"
    if accept == "image/png":
        payload, suffix = _png(bytes.fromhex(facts["sha256"])), ".png"
    elif accept == "application/zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("result.json", json.dumps(facts, indent=2))
            zf.writestr("fingerprint.png", _png(bytes.fromhex(facts["sha256"])))
        payload, suffix = buf.getvalue(), ".zip"
    else:
        return facts
    if kwargs.get("as_file"):
        fd, path = tempfile.mkstemp(prefix="conveyor-demo-", suffix=suffix)
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
        return open(path, "rb")  # handing an open file back is the point
    return io.BytesIO(payload)


def predict_data(data):
    """deepaas-predict 2.6.0 calls this with {"files": [UploadedFile], "accept": TYPE}."""
    return predict(image=data["files"][0], accept=data.get("accept"), as_file=True)


def predict_url(data):
    raise NotImplementedError("conveyor-demo takes files, not URLs")


def _fingerprint(upload):
    digest = hashlib.sha256()
    size = 0
    with open(upload.filename, "rb") as src:
        for chunk in iter(lambda: src.read(1 << 16), b""):
            digest.update(chunk)
            size += len(chunk)
    return {
        "model": "conveyor-demo",
        "file_name": os.path.basename(upload.original_filename or upload.filename),
        "content_type": upload.content_type,
        "size": size,
        "sha256": digest.hexdigest(),
    }


def _png(seed: bytes, side: int = 8) -> bytes:
    """An RGB PNG of side x side pixels whose colours come from `seed` (no imaging library)."""
    pixels = (seed * (side * side * 3 // len(seed) + 1))[: side * side * 3]
    rows = b"".join(b"\x00" + pixels[y * side * 3 : (y + 1) * side * 3] for y in range(side))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
