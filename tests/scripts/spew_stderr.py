#!/usr/bin/env python3
"""Writes $1 bytes of lines to stderr, then says so on stdout (it would block if nobody drained stderr)."""
import sys

total = int(sys.argv[1])
line = b"x" * 1023 + b"\n"
for _ in range(total // len(line)):
    sys.stderr.buffer.write(line)
sys.stderr.flush()
print("finished")
