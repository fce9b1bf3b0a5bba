"""The container entrypoint (`conveyor-entrypoint`): `conveyor run`, which detects the platform.

Platforms that pass a command keep working: AWS Batch appends a job definition's `command` to
the image's ENTRYPOINT (SCAR's is `/bin/sh -c 'echo $EVENT | <supervisor>'`), so a first
argument that is not an option is run as that command instead. A Conveyor subcommand
(`conveyor-entrypoint inspect`) is passed to the CLI.

Before `run` imports anything heavy, the sealed variables (FUNCTION_CONFIG, FDL, SCRIPT, EVENT)
leave the process's environment block (conveyor.sealing: one re-exec, about 20 ms, only when one
of them is set). A command run instead keeps them: it may need them (`echo $EVENT | ...`).
"""

import os
import sys

from conveyor.sealing import sealed_environ


def run() -> None:
    args = sys.argv[1:]
    if not args or args[0].startswith("-") or args[0] == "run":
        sealed_environ()  # may re-execute this process; `conveyor run` then finds the values restored
    from conveyor.cli import cli, main

    if args and not args[0].startswith("-") and args[0] not in cli.commands:
        os.execvp(args[0], args)
    main(args if args and args[0] in cli.commands else ["run", *args])


if __name__ == "__main__":
    run()
