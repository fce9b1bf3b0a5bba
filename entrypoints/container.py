"""The container entrypoint (`conveyor-entrypoint`): `conveyor run`, which detects the platform.

Platforms that pass a command keep working: AWS Batch appends a job definition's `command` to
the image's ENTRYPOINT (SCAR's is `/bin/sh -c 'echo $EVENT | <supervisor>'`), so a first
argument that is not an option is run as that command instead. A Conveyor subcommand
(`conveyor-entrypoint inspect`) is passed to the CLI.

An init: started as PID 1 (`docker run IMAGE`, a Batch job) with tini installed (the images have
it), the entrypoint re-executes itself as `tini -- <itself>`, or runs the given command under
tini, so the processes a model leaves behind are reaped rather than kept as zombies. Where
something else is PID 1 (Lambda's init, the RIE, OSCAR's `/bin/sh -c 'echo $EVENT | ...'`, or
`docker run --init`) nothing changes.

Before `run` imports anything heavy, the sealed variables (FUNCTION_CONFIG, FDL, SCRIPT, EVENT)
leave the process's environment block (conveyor.sealing: one re-exec, about 20 ms, only when one
of them is set or tini is started), tini's block included. A command run instead keeps them: it
may need them (`echo $EVENT | ...`).
"""

import os
import sys

from conveyor.sealing import sealed_environ

INIT = "tini"


def init_argv() -> list[str]:
    """`tini --` when this process is PID 1 and tini is installed; else [] (an init is there, or none can be)."""
    if os.getpid() != 1:
        return []
    import shutil  # only as PID 1: with bz2 and lzma, 2 ms of every start

    found = shutil.which(INIT)
    return [found, "--"] if found else []


def run() -> None:
    args = sys.argv[1:]
    init = init_argv()
    if not args or args[0].startswith("-") or args[0] == "run":
        sealed_environ(init)  # may re-execute this process; `conveyor run` then finds the values restored
    from conveyor.cli import command_names, main

    commands = command_names()
    if args and not args[0].startswith("-") and args[0] not in commands:
        os.execvp((init + args)[0], init + args)
    main(args if args and args[0] in commands else ["run", *args])


def conveyor() -> None:
    """The `conveyor` command (setup.cfg's console script): conveyor.cli.main, with `conveyor run`
    sealed before the CLI is imported, so a re-exec costs one bare interpreter start."""
    if sys.argv[1:2] == ["run"]:
        sealed_environ()
    from conveyor.cli import main

    main()


if __name__ == "__main__":
    run()
