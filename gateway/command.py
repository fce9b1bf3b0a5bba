"""The `conveyor gateway` click command. Import-light: the web server is imported when it runs, so
`conveyor` works where the `gateway` extra is not installed.

It gets the environment from the CLI group (click's context object) and returns the exit code to
it: reading os.environ and exiting stay in conveyor.cli.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

EX_CONFIG = 78  # conveyor.errors.ConfigError's exit code
EX_UNAVAILABLE = 69


@click.command("gateway", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--catalogue", "catalogue_path", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The models to offer (YAML): per model a name, title, one-line description, accepted file "
              "types, an example file, the platform and its function definition (a file or inline). The format "
              "is described at the top of conveyor/gateway/catalogue.py and in the README.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Keep 127.0.0.1 unless a TLS proxy stands in front.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0: any free port, printed).")
@click.option("--user", "user_specs", multiple=True, metavar="NAME:PASSWORD",
              help="An account (repeatable). Without any, one user 'scientist' is created and its random "
              "password printed. A name is the user's folder in the buckets: letters, digits, '.', '_', '-'.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=100, show_default=True,
              help="Largest file accepted, in MiB; a larger one is refused (413) and nothing is stored.")
@click.option("-v", "--verbose", is_flag=True, help="Log every request's errors and Conveyor's own messages at DEBUG.")
@click.pass_obj
def gateway(environ: Mapping[str, str], catalogue_path: Path, host: str, port: int, user_specs: tuple[str, ...],
            max_upload_mb: float, verbose: bool) -> int:
    """Serve the web page and JSON API where people pick a model, upload files, follow their jobs
    and download the results.

    Uploads go to each model's input path under the user's own folder
    (`<input path>/<user>/<upload id>/<file>`); the page shows the state of each job from its
    result record (PENDING, RUNNING, SUCCEEDED, FAILED, DELEGATED with AWS Batch's state), its
    outputs, and how long jobs waited and ran. The gateway runs no model itself: a Conveyor
    deployment (Lambda, Batch, OSCAR or `conveyor local`) must process the input path, with
    `conveyor: status:` set so its records can be read and `conveyor: keep_input_folders: true`
    so each upload's outputs stay in its own folder.

    Scripts use the same API with HTTP Basic, e.g.
    `curl -u NAME:PASSWORD -F file=@dog.jpg http://127.0.0.1:8080/api/models/yolo/files`.
    Ctrl-C stops it.
    """
    from conveyor.errors import ConveyorError
    from conveyor.logs import setup_logging

    setup_logging("DEBUG" if verbose else "INFO")
    try:
        from conveyor.gateway.catalogue import load_catalogue
        from conveyor.gateway.server import Gateway
        from conveyor.gateway.users import Users
    except ImportError as exc:
        click.echo(f"conveyor: the gateway needs its extra: pip install 'conveyor-runtime[gateway]' ({exc})", err=True)
        return EX_UNAVAILABLE
    try:
        models = load_catalogue(catalogue_path, environ)
        password = None
        if user_specs:
            users = Users.from_specs(user_specs)
        else:
            users, password = Users.generated()
        server = Gateway(models, users, host=host, port=port, max_upload_bytes=int(max_upload_mb * 2**20),
                         environ=environ)
    except ConveyorError as exc:
        click.echo(f"conveyor: {exc.kind} error: {exc.message}", err=True)
        return exc.exit_code
    names = ", ".join(m.name for m in models)
    click.echo(f"conveyor gateway: {len(models)} model(s): {names}", err=True)
    if password is not None:
        click.echo(f"conveyor gateway: log in as {users.names[0]} with password {password}", err=True)
    try:
        server.serve(on_ready=lambda url: click.echo(f"conveyor gateway: open {url}", err=True))
    except OSError as exc:
        click.echo(f"conveyor: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        return EX_UNAVAILABLE
    return 0
