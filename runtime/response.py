"""The synchronous response (contract section 6): base64 of the one output, of a zip of several,
or the model's own stdout when it wrote no file. Streamed: never the whole output in memory."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

# What ends a sync response on stdout: faas-supervisor print()ed the body, so it ended with one
# newline (after the model's own stdout too); byte-for-byte clients expect it, base64 decoders skip
# it. Written by the CLI only: a Lambda response's body is a JSON field and gets none.
RESPONSE_END = b"\n"
CHUNK = 3 * 256 * 1024  # a multiple of 3, so base64 chunks concatenate into one valid encoding


def stream_base64(src: Path, sink: BinaryIO) -> None:
    with open(src, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sink.write(base64.b64encode(chunk))


def write_sync_response(
    output_dir: Path, files: Sequence[str], stdout_path: Path | None, sink: BinaryIO, scratch: Path
) -> str:
    """Write the response body to sink; return which kind it was ("file", "zip", "stdout", "empty")."""
    if len(files) == 1:
        stream_base64(output_dir / files[0], sink)
        return "file"
    if files:
        import zipfile  # only for several outputs: 1 ms of every cold start otherwise

        bundle = scratch / "response.zip"
        with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in files:
                zf.write(output_dir / rel, arcname=rel)
        stream_base64(bundle, sink)
        return "zip"
    if stdout_path is not None and stdout_path.exists():
        with open(stdout_path, "rb") as fh:
            shutil.copyfileobj(fh, sink)
        return "stdout"
    return "empty"
