"""What a DEEPaaS model returned, written as one output file named after the input.

Output names (one file per record, in inv.output_dir; <stem> = the input's name without its last
extension, e.g. "my cat" for "my cat.jpg"):
  dict, list, number, bool      <stem>.json   valid JSON (NaN/Infinity -> null, numpy values -> lists/numbers)
  str                           <stem>.json when the text parses as JSON, else <stem>.txt
                                (<stem> + the extension of `accept` when that is a text/* type)
  bytes, BytesIO, open file     <stem> + the extension of `accept` (image/png -> .png, application/zip ->
                                .zip ...); without a non-JSON accept: from the content's magic bytes
                                (png, jpg, gif, zip, pdf, gz, tif, wav, webp, mp4, ogg, flac, mp3, json,
                                text), else the returned file's own extension, else .bin
  None                          NoOutputError
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.errors import HandlerError, NoOutputError
from conveyor.media import extension_for, media_type, sniff

JSON_TYPES = {"application/json", "*/*", "text/json"}

SNIFF_BYTES = 4096


def write_result(result: Any, output_dir: Path, stem: str, accept: str | None = None) -> Path:
    """Write what predict() returned as one file named after the input (see the module docstring)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if result is None:
        raise NoOutputError("the model returned nothing (None)")
    if _is_returned_file(result):  # deepaas's ReturnedFile(filename=...): a path to read
        with open(result.filename, "rb") as fh:
            return write_result(fh, output_dir, stem, accept)
    if isinstance(result, str):
        ext = accept_extension(accept) if media_type(accept).startswith("text/") else None
        if ext is None:
            ext = ".json" if _parses_as_json(result) else ".txt"
        target = output_dir / f"{stem}{ext}"
        target.write_text(result, encoding="utf-8")
        return target
    if isinstance(result, (bytes, bytearray, memoryview)):
        result = io.BytesIO(bytes(result))
    if isinstance(result, io.BytesIO) or hasattr(result, "read"):
        return _write_stream(result, output_dir, stem, accept)
    try:
        value = _jsonable(result)
    except TypeError as exc:
        raise HandlerError(f"the model returned a {type(result).__name__} that cannot be written: {exc}") from exc
    target = output_dir / f"{stem}.json"
    with open(target, "w", encoding="utf-8") as fh:
        json.dump(value, fh, ensure_ascii=False, allow_nan=False)
        fh.write("\n")
    return target


def _write_stream(stream: Any, output_dir: Path, stem: str, accept: str | None) -> Path:
    if isinstance(stream, io.BytesIO):
        stream = io.BytesIO(stream.getbuffer())  # the whole buffer, wherever its position is (as deepaas-cli)
    else:
        try:
            if stream.seekable():
                stream.seek(0)
        except (AttributeError, OSError, ValueError):
            pass
    head = stream.read(SNIFF_BYTES)
    if isinstance(head, str):
        head = head.encode("utf-8")
    name = getattr(stream, "name", None)
    own_ext = os.path.splitext(name)[1].lower() if isinstance(name, str) else ""
    if own_ext == ".bin":
        own_ext = ""
    ext = accept_extension(accept) or sniff_extension(head) or own_ext or ".bin"
    target = output_dir / f"{stem}{ext}"
    with open(target, "wb") as out:
        out.write(head)
        while True:
            chunk = stream.read(1 << 20)
            if not chunk:
                break
            out.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
    return target


def sniff_extension(head: bytes) -> str | None:
    """An extension from a file's first bytes (conveyor.media knows the binary formats; text is
    .json or .txt), or None when they say nothing we know."""
    known = sniff(head)
    if known is not None:
        return known[0]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # (a multi-byte character cut at SNIFF_BYTES: too rare to matter)
        return None
    if not text or any(ch < " " and ch not in "\t\n\r\f" for ch in text):
        return None
    if len(head) < SNIFF_BYTES and _parses_as_json(text):
        return ".json"
    return ".txt"



def accept_extension(accept: str | None) -> str | None:
    """The extension for a non-JSON accepted type; None for JSON, */* or nothing."""
    kind = media_type(accept)
    if not kind or kind in JSON_TYPES:
        return None
    return extension_for(kind)


def _parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _is_returned_file(value: Any) -> bool:
    return (isinstance(value, tuple) and type(value).__name__ == "ReturnedFile"
            and bool(getattr(value, "filename", None)))


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tuples as lists, numpy values through tolist(), non-finite floats as null."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return _jsonable(tolist())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def open_result(path: Path, *, text: bool) -> Any:
    """A result a child left in a file: its text, or the open file (binary)."""
    if text:
        return path.read_text(encoding="utf-8")
    return open(path, "rb")


def close_quietly(result: Any) -> None:
    """Close a returned open file (not a BytesIO), ignoring errors."""
    if hasattr(result, "read") and hasattr(result, "close") and not isinstance(result, io.BytesIO):
        try:
            result.close()
        except Exception:
            pass
