#!/usr/bin/env python3
"""A Python user script: upper-cases the input into the output dir."""
import os
import pathlib
import sys

src = pathlib.Path(os.environ["INPUT_FILE_PATH"])
dst = pathlib.Path(os.environ["TMP_OUTPUT_DIR"]) / (src.stem + ".upper" + src.suffix)
dst.write_text(src.read_text().upper())
print(f"wrote {dst.name}", file=sys.stderr)
print(" ".join(sys.argv[1:]) or "no-args")
