"""The script handler: runs the user's script, unchanged, the way SCAR and OSCAR users wrote it.

What runs, per record (first match wins):
  1. the event's own `script` (SCAR's per-call script), with the event's `cmd_args` as its arguments;
  2. `conveyor: handler: options: command:` - a list of str (exec'd as is) or a str (run by /bin/sh -c),
     with the event's `cmd_args` appended as arguments;
  3. the configured script (`config.script`: env SCRIPT, /oscar/config/script.sh or `init_script`,
     resolved by the config loader), with the event's `cmd_args` as its arguments;
  4. the event's `cmd_args` alone, run as the command line itself.

A script is written to the record's work dir (mode 0700). Which program runs it:
  - no `#!` line, or a `#!` naming a POSIX shell (sh, bash, dash, ash; directly or through
    `/usr/bin/env`): `/bin/sh script`, exactly as faas-supervisor runs every script (dash on Debian
    and Ubuntu images, so a `#!/bin/bash` script behaves as its author tested it on SCAR and OSCAR).
    `conveyor: script_shell: shebang` honours the shell's `#!` line instead;
  - a `#!` naming any other interpreter (python3, Rscript, perl ...): the script is exec'd, so that
    interpreter runs it. When the work dir does not allow exec (a noexec mount), the `#!` line is
    read and its interpreter run instead.
Which one ran, and why, is logged once per record at INFO.

The working directory is the worker's own (the image's WORKDIR, /var/task in Lambda), as under
faas-supervisor, so scripts that call `./darknet` or read `cfg/...` keep working; `options: cwd:`
changes it. The environment is exactly `inv.env`; stdout goes to `<work_dir>/stdout` (the sync
response uses it when no output file was written), stderr to the log. A non-zero exit is a
HandlerError carrying the exit code.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigError, HandlerError
from conveyor.handler import Handler, HandlerResult, Invocation

if TYPE_CHECKING:
    from conveyor.config import FunctionConfig

logger = logging.getLogger(__name__)

SHELL = "/bin/sh"
# `#!` interpreters run as /bin/sh by default (conveyor.script_shell: sh), as under faas-supervisor.
POSIX_SHELLS = frozenset({"sh", "bash", "dash", "ash"})
SCRIPT_SHELL_KEY = "conveyor.script_shell"
SCRIPT_NAME = "script.sh"
STDOUT_NAME = "stdout"
OPTIONS_KEY = "conveyor.handler.options"
KNOWN_OPTIONS = {"command", "cwd"}
SCRIPT_SOURCES = (
    "the event's 'script', conveyor.handler.options.command, env SCRIPT, /oscar/config/script.sh, init_script"
)


class ScriptHandler(Handler):
    name = "script"

    def __init__(self, config: "FunctionConfig", options: Mapping[str, Any]) -> None:
        super().__init__(config, options)
        # Parsed once, at start-up; nothing per record is ever stored on self.
        self._command = _parse_command(self.options.get("command"))
        cwd = self.options.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd):
            raise ConfigError("must be a directory path", key=f"{OPTIONS_KEY}.cwd")
        self._cwd = cwd
        unknown = sorted(set(self.options) - KNOWN_OPTIONS)
        if unknown:
            logger.warning("script handler: ignoring unknown options %s", ", ".join(unknown))

    def handle(self, inv: Invocation) -> HandlerResult:
        argv, source, fallback, why = self._command_line(inv)
        stdout_path = inv.work_dir / STDOUT_NAME
        if why is None:
            inv.log.info("running %s (%s)", _describe(argv), source)
        else:
            inv.log.info("running %s (%s) %s", SCRIPT_NAME, source, why)

        def run(command: list[str]) -> int:
            return inv.run_child(command, cwd=self._cwd, stdout_file=stdout_path)

        try:
            rc = run(argv)
        except HandlerError as exc:
            cause = exc.__cause__
            if fallback is None or not isinstance(cause, OSError):
                raise
            if cause.errno not in (errno.EACCES, errno.ETXTBSY, errno.ENOEXEC, errno.ENOENT):
                raise
            if self._cwd is not None and cause.filename is not None and os.fspath(cause.filename) == self._cwd:
                raise  # the working directory, not the script
            interpreter = fallback[0]
            if not os.path.exists(interpreter):
                raise HandlerError(
                    f"the script's interpreter {interpreter!r} (from its #! line) does not exist"
                    + (" - the script has Windows (CRLF) line endings" if interpreter.endswith("\r") else ""),
                    interpreter=interpreter,
                    script_source=source,
                ) from cause
            if cause.errno == errno.ENOENT:
                raise  # something else is missing (the interpreter's own loader ...)
            inv.log.info("cannot exec the script directly (%s): running %s instead", cause.strerror, fallback[0])
            rc = run(fallback)

        if rc != 0:
            raise HandlerError(
                f"script exited with code {rc}{_explain(rc)}",
                exit_code=rc,
                script_source=source,
            )
        return HandlerResult(exit_code=0, stdout_path=stdout_path, details={"script_source": source})

    def _command_line(self, inv: Invocation) -> tuple[list[str], str, list[str] | None, str | None]:
        """(argv, where it came from, the #! interpreter fallback argv or None, why this program runs it)."""
        event = inv.event
        event_script = getattr(event, "script", None)
        args = [str(a) for a in (getattr(event, "cmd_args", None) or ())]
        if event_script:
            return self._script_argv(inv, event_script, args, "event script")
        if self._command is not None:
            if isinstance(self._command, str):
                return [SHELL, "-c", self._command, "sh", *args], f"{OPTIONS_KEY}.command", None, None
            return [*self._command, *args], f"{OPTIONS_KEY}.command", None, None
        if self.config.script:
            return self._script_argv(inv, self.config.script, args, self.config.script_source or "configured script")
        if args:
            return args, "event cmd_args", None, None
        raise ConfigError(f"no user script to run: looked at {SCRIPT_SOURCES} and the event's 'cmd_args'")

    def _script_argv(self, inv: Invocation, script: bytes, args: list[str], source: str):
        path = inv.work_dir / SCRIPT_NAME
        _write_script(path, script)
        if inv.user is not None:  # conveyor.isolate_model: the model's user runs (reads) it
            os.chown(path, inv.user.uid, inv.user.gid)
        interpreter = _shebang(script)
        if interpreter is None:
            why = f"with {SHELL} (it has no #! line)"
            return [SHELL, str(path), *args], source, None, why
        shell = _shell_name(interpreter)
        honour = self.config.conveyor.script_shell == "shebang"
        if shell is not None and not honour:
            why = f"with {SHELL} (its #! names {shell}; faas-supervisor runs scripts with {SHELL}"
            if " ".join(interpreter) != SHELL:  # bash, or options such as `#!/bin/sh -e`, are not used
                why += f"; set {SCRIPT_SHELL_KEY}: shebang to use {' '.join(interpreter)}"
            return [SHELL, str(path), *args], source, None, why + ")"
        shown = " ".join(interpreter)
        if shell is not None:
            why = f"with {shown} (its #! line, as {SCRIPT_SHELL_KEY}: shebang asks)"
        else:
            why = f"with {shown} (its #! line names {_program_name(interpreter)}, not a shell)"
        return [str(path), *args], source, [*interpreter, str(path), *args], why


def _parse_command(value: Any) -> list[str] | str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise ConfigError("must be a non-empty list of strings, or a shell command string", key=f"{OPTIONS_KEY}.command")


def _write_script(path: Path, script: bytes | str) -> None:
    data = script.encode() if isinstance(script, str) else bytes(script)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: under conveyor.isolate_model the folder is the model's, and Conveyor writes as root
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o700)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    os.chmod(path, 0o700)


def _shebang(script: bytes | str) -> list[str] | None:
    """The interpreter argv of a `#!` line, split the way Linux does (path, then one optional argument)."""
    data = script.encode() if isinstance(script, str) else bytes(script)
    if not data.startswith(b"#!"):
        return None
    line = data[2:].split(b"\n", 1)[0].decode("utf-8", errors="surrogateescape")
    line = line.strip(" \t")
    if not line:
        return [SHELL]
    interpreter, _, argument = line.replace("\t", " ").partition(" ")
    argument = argument.strip(" ")
    return [interpreter, argument] if argument else [interpreter]


def _program_name(interpreter: list[str]) -> str:
    """The program a `#!` line names: its interpreter's base name, or what `/usr/bin/env` runs."""
    name = os.path.basename(interpreter[0])
    if name == "env" and len(interpreter) > 1:
        # `#!/usr/bin/env bash`, `#!/usr/bin/env -S bash -e`: the first word not an option (nor the
        # argument of -u/-C), nor NAME=VALUE.
        words = iter(interpreter[1].split())
        for word in words:
            if word in ("-u", "--unset", "-C", "--chdir"):
                next(words, None)
            elif not word.startswith("-") and "=" not in word:
                return os.path.basename(word)
    return name


def _shell_name(interpreter: list[str]) -> str | None:
    """The POSIX shell a `#!` line names (sh, bash, dash, ash), or None for any other interpreter."""
    name = _program_name(interpreter)
    return name if name in POSIX_SHELLS else None


def _explain(rc: int) -> str:
    if rc == 126:
        return " (command found but not executable)"
    if rc == 127:
        return " (command not found)"
    if rc > 128:
        try:
            return f" (killed by {signal.Signals(rc - 128).name})"
        except ValueError:
            return ""
    return ""


def _describe(argv: list[str]) -> str:
    shown = " ".join(argv[:4])
    return shown if len(argv) <= 4 else f"{shown} ... ({len(argv)} arguments)"
