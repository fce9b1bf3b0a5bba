"""The container entrypoint (`conveyor-entrypoint`): `conveyor run`, which detects the platform.

Platforms that pass a command keep working: AWS Batch appends a job definition's `command` to
the image's ENTRYPOINT (SCAR's is `/bin/sh -c 'echo $EVENT | <supervisor>'`), so a first
argument that is not an option is run as that command instead. A Conveyor subcommand
(`conveyor-entrypoint inspect`) is passed to the CLI.
"""

import os
import sys

from conveyor.cli import cli, main


def run() -> None:
    args = sys.argv[1:]
    if args and not args[0].startswith("-") and args[0] not in cli.commands:
        os.execvp(args[0], args)
    main(args if args and args[0] in cli.commands else ["run", *args])


if __name__ == "__main__":
    run()
