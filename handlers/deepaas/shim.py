"""The cli mode's shim, run as a script by deepaas-cli's own interpreter: deepaas-cli's main() with the
model's predict() wrapped, so a str, bytes or file-like result (which deepaas-cli drops) reaches us.

    python shim.py DROP_DIR ERROR_FILE [deepaas-cli arguments ...]

A str result goes to DROP_DIR/result.txt, bytes to result.bin, an open file to result<its extension>
(a BytesIO to result.bin), and None is handed to deepaas-cli; any other result goes through deepaas-cli
as usual. An exception's "Type: message" is written to ERROR_FILE before it propagates.
It runs in the model's Python, where Conveyor may not be installed (and which may be older than
Conveyor's): it imports nothing of Conveyor's and keeps to the Python 3.6 language.
"""

import io
import os
import shutil
import sys


def _as_with_dash_c():
    """Run as `python -c` would: the working directory first on sys.path, not this file's folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and sys.path[0] and os.path.abspath(sys.path[0]) == here:
        sys.path[0] = ""


def _keep(result, drop_dir):
    """Write a result deepaas-cli would drop into drop_dir and return None; return anything else."""
    if isinstance(result, str):
        with open(os.path.join(drop_dir, "result.txt"), "w", encoding="utf-8") as out:
            out.write(result)
        return None
    if isinstance(result, (bytes, bytearray, memoryview)):
        with open(os.path.join(drop_dir, "result.bin"), "wb") as out:
            out.write(result)
        return None
    if hasattr(result, "read"):
        name = getattr(result, "name", None)
        ext = os.path.splitext(name)[1] if isinstance(name, str) else ""
        if isinstance(result, io.BytesIO):
            ext = ""
        with open(os.path.join(drop_dir, "result" + (ext or ".bin")), "wb") as out:
            if isinstance(result, io.BytesIO):
                out.write(result.getbuffer())
            else:
                if hasattr(result, "seekable") and result.seekable():
                    result.seek(0)
                shutil.copyfileobj(result, out, 1 << 20)
        close = getattr(result, "close", None)
        if close is not None:
            close()
        return None
    return result


def main():
    drop_dir, error_file = sys.argv[1], sys.argv[2]
    del sys.argv[1:3]
    sys.argv[0] = "deepaas-cli"
    try:
        from deepaas.cmd import cli  # parses sys.argv on import: after it is deepaas-cli's

        model_predict = cli.model_obj.predict

        def predict(*args, **kwargs):
            return _keep(model_predict(*args, **kwargs), drop_dir)

        cli.model_obj.predict = predict
        code = cli.main()
    except SystemExit:
        raise
    except BaseException as exc:
        with open(error_file, "w", encoding="utf-8") as out:
            out.write(f"{type(exc).__name__}: {exc}")
        raise
    sys.exit(code)


if __name__ == "__main__":
    _as_with_dash_c()
    main()
