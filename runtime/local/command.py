"""The `conveyor local` click command. Kept import-light: the loop is imported when it runs.

It gets the environment from the CLI group (click's context object) and returns the exit code to
it: reading os.environ and exiting stay in conveyor.cli.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

from conveyor.local import GATEWAY_PORT

PLATFORM_CHOICES = click.Choice(["oscar", "lambda", "batch"])
DEFAULT_DIR = ".conveyor/local"


@click.command("local", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DIR,
              show_default=True, help="Where the run lives: inbox/ (drop files here), results/, status/, logs/, "
              "and the S3 server's data.")
@click.option("--platform", "platform", type=PLATFORM_CHOICES, default="oscar", show_default=True,
              help="How each event runs: oscar / batch = a fresh `conveyor run` per event (a Kubernetes "
              "or Batch job), lambda = warm in-process environments that keep the model loaded.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Events processed at the same time (jobs, or warm Lambda environments).")
@click.option("--model", metavar="NAME", default=None,
              help="darknet (default: YOLOv3-tiny), script (a copy script), deepaas-demo (the DEEPaaS test "
              "model), or any installed handler name.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A function definition to run instead of a --model preset (its handler, script, "
              "environment and timeouts; storage is replaced by the embedded server's buckets).")
@click.option("--once", is_flag=True,
              help="Process what is in the drop folder (the samples when it is empty), print the summary "
              "and exit: 0 when every file succeeded, 1 otherwise. No gateway.")
@click.option("--docker", is_flag=True,
              help="Run the model image per event (docker run --network host) instead of a local process.")
@click.option("--image", metavar="IMAGE", help="The image for --docker (default: the model's, e.g. conveyor/yolo).")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds an event may take (the model's deadline; Lambda's function timeout).")
@click.option("--samples/--no-samples", default=True, show_default=True,
              help="Copy the sample inputs into the drop folder when it is empty at start.")
@click.option("--gateway-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help=f"Without --once: serve the gateway (the web page to upload files and follow them) on "
              f"127.0.0.1:PORT; 0 = no gateway.  [default: {GATEWAY_PORT}, or a free port when it is taken]")
@click.option("--user", "users", multiple=True, metavar="NAME:PASSWORD",
              help="A login for the gateway (repeatable). Without it, one user is made up (scientist, a random "
              "password), printed at start and kept in DIR/.conveyor/gateway-login for the next run.")
@click.option("--json", "json_summary", is_flag=True, help="Also print the summary as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Show Conveyor's own log on stderr too (always in logs/).")
@click.pass_obj
def local(environ: Mapping[str, str], root: Path, platform: str, workers: int, model: str | None,
          config_path: Path | None, once: bool, docker: bool, image: str | None, timeout: float, samples: bool,
          gateway_port: int | None, users: tuple[str, ...], json_summary: bool, verbose: bool) -> int:
    """Run the whole event loop on this machine: an S3 server, a drop folder and a real model.

    Every file uploaded to the `input` bucket (from DIR/inbox, or any S3 client with the printed
    endpoint and keys) becomes the MinIO event OSCAR would deliver and is processed as the chosen
    platform would; outputs land in DIR/results/<file>/ and a result record in DIR/status/.
    Without --once, the gateway serves a web page beside the loop (its URL and login are printed):
    pick the model, upload files, watch their jobs, view and download the results.
    Progress and the summary go to stderr. Ctrl-C or SIGTERM stops every job and the server.
    """
    from conveyor.local.runner import LocalOptions, LocalRun

    options = LocalOptions(
        root=root,
        platform=platform,
        workers=workers,
        model=model,
        config_path=config_path,
        once=once,
        docker=docker,
        image=image,
        timeout=timeout,
        samples=samples,
        gateway_port=gateway_port,
        users=tuple(users),
        json_summary=json_summary,
        verbose=verbose,
    )
    return LocalRun(options, dict(environ)).run()
