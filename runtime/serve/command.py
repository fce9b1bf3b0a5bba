"""The `conveyor serve` click command. Kept import-light: the server is imported when it runs.

It gets the environment from the CLI group (click's context object) and returns the exit code to
it: exiting stays in conveyor.cli.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

from conveyor.platform import Platform
from conveyor.serve import DEFAULT_PORT


def listen_port(port: int | None, environ: Mapping[str, str]) -> int:
    """--port, else $port (the classic watchdog's), else $PORT (Knative's), else 8080."""
    if port is not None:
        return port
    for name in ("port", "PORT"):
        value = environ.get(name, "").strip()
        if value:
            try:
                number = int(value)
            except ValueError:
                raise click.BadParameter(f"${name} is {value!r}, not a port number", param_hint="--port") from None
            if not 0 <= number <= 65535:
                raise click.BadParameter(f"${name} is {number}, not a port number", param_hint="--port")
            return number
    return DEFAULT_PORT


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Function definition (YAML). Default: the platform's own location (see README).")
@click.option("--platform", "platform_opt", type=click.Choice([p.value for p in Platform]),
              help="Skip detection (also CONVEYOR_PLATFORM).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (an image run as an OSCAR exposed service passes 0.0.0.0).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on. Default: $port, else $PORT, else 8080.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Listen on this unix socket instead of a port (the warm daemon of `conveyor run`).")
@click.option("--slots", type=click.IntRange(min=1), default=1, show_default=True,
              help="Requests the model runs at once; one more is answered 429 (503 for a storage event).")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Exit after this many seconds without a request (default: never; the warm daemon: "
              "conveyor.warm_idle_timeout).")
@click.pass_obj
def serve(environ: Mapping[str, str], config_path: str | None, platform_opt: str | None, host: str,
          port: int | None, socket_path: Path | None, slots: int, idle_timeout: float | None) -> int:
    """Keep the model loaded and answer HTTP requests the way an OSCAR sync service does.

    Any path: the body is the event, parsed as `conveyor run` parses stdin; the answer is what
    `conveyor run` writes to stdout (200), the failure lines (500; 408 on the deadline), or the
    result records as JSON for a storage event (a MinIO/SeaweedFS bucket notification). 429 when
    every model slot is busy (503 for a storage event, so its sender retries). GET /_/health and
    /health answer 200 once the model is loaded; GET /metrics is Prometheus text. SIGTERM drains:
    requests under way get conveyor.grace_period to finish, then the exit is 0.
    """
    from conveyor.config import load_config
    from conveyor.config.redaction import secret_values
    from conveyor.errors import ConveyorError
    from conveyor.logs import keep_job_output, setup_logging
    from conveyor.platform import detect_platform
    from conveyor.sealing import sealed_environ
    from conveyor.storage import transfer_options

    environ = sealed_environ()  # FUNCTION_CONFIG, FDL ... out of this process's block (conveyor.sealing)
    environ.pop("EVENT", None)  # each request brings its own event
    setup_logging(environ.get("LOG_LEVEL", "INFO"), secrets=secret_values(environ))
    try:
        platform = detect_platform(environ, override=platform_opt)
        config = load_config(environ, platform, path=config_path)
        setup_logging(config.log_level, secrets=config.secret_values(environ))
        keep_job_output(True)  # logs never reach a response here: the model's lines always show
        try:
            from conveyor.serve.app import serve as run_server
            from conveyor.serve.worker import Worker
        except ImportError as exc:
            click.echo(f"conveyor: config error: `conveyor serve` needs the serve extra "
                       f"(pip install 'conveyor-runtime[serve]'): {exc}", err=True)
            return 78
        worker = Worker(config, environ, platform, slots=slots,
                        transfer=transfer_options(environ))
        return run_server(worker, host=host, port=listen_port(port, environ), socket_path=socket_path,
                          idle_timeout=idle_timeout, grace_period=config.conveyor.grace_period)
    except ConveyorError as exc:
        click.echo(f"conveyor: {exc.kind} error: {exc.message}", err=True)
        return exc.exit_code
