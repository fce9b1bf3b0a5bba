"""The `conveyor local` click command. Kept import-light: the loop is imported when it runs.

It gets the environment from the CLI group (click's context object) and returns the exit code to
it: reading os.environ and exiting stay in conveyor.cli.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

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
              "and exit: 0 when every file succeeded, 1 otherwise.")
@click.option("--docker", is_flag=True,
              help="Run the model image per event (docker run --network host) instead of a local process.")
@click.option("--image", metavar="IMAGE", help="The image for --docker (default: the model's, e.g. conveyor/yolo).")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds an event may take (the model's deadline; Lambda's function timeout).")
@click.option("--samples/--no-samples", default=True, show_default=True,
              help="Copy the sample inputs into the drop folder when it is empty at start.")
@click.option("--json", "json_summary", is_flag=True, help="Also print the summary as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Show Conveyor's own log on stderr too (always in logs/).")
@click.pass_obj
def local(environ: Mapping[str, str], root: Path, platform: str, workers: int, model: str | None,
          config_path: Path | None, once: bool, docker: bool, image: str | None, timeout: float, samples: bool,
          json_summary: bool, verbose: bool) -> int:
    """Run the whole event loop on this machine: an S3 server, a drop folder and a real model.

    Every file uploaded to the `input` bucket (from DIR/inbox, or any S3 client with the printed
    endpoint and keys) becomes the MinIO event OSCAR would deliver and is processed as the chosen
    platform would; outputs land in DIR/results/<file>/ and a result record in DIR/status/.
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
        json_summary=json_summary,
        verbose=verbose,
    )
    return LocalRun(options, dict(environ)).run()
