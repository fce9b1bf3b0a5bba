"""An in-process handler that prints to stdout, as careless models do (used by test_pipeline)."""

from __future__ import annotations

import os
import shutil

from conveyor.handler import Handler, HandlerResult, Invocation


class PrintingHandler(Handler):
    name = "printing"

    def handle(self, inv: Invocation) -> HandlerResult:
        print("chatty model: loading weights...")  # Python-level stdout
        os.write(1, b"chatty model: from a C library\n")  # straight to fd 1
        assert inv.input_path is not None
        shutil.copy(inv.input_path, inv.output_dir / "result.bin")
        return HandlerResult()
