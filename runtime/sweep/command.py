"""The `conveyor sweep` click command. Kept import-light: the sweep is imported when it runs.

It gets the environment from the CLI group (click's context object, re-read through
conveyor.sealing as `conveyor run` does) and returns the exit code to it: exiting stays in
conveyor.cli.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.config import FunctionConfig, IOSpec
    from conveyor.job import Stores
    from conveyor.platform import Platform
    from conveyor.sweep.listing import Plan
    from conveyor.sweep.runner import Summary
    from conveyor.sweep.shards import Shard

log = logging.getLogger(__name__)

PLATFORMS = click.Choice(["lambda", "batch", "oscar", "local"])
FAILURES_SHOWN = 10


@click.command("sweep", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Function definition (YAML). Default: the platform's own location (see README).")
@click.option("--platform", "platform_opt", type=PLATFORMS, help="Skip detection (also CONVEYOR_PLATFORM).")
@click.option("--input", "input_arg", metavar="PROVIDER:PATH",
              help="Sweep this path (minio.default:bucket/folder) instead of the definition's first input.")
@click.option("--shards", type=int, default=None, metavar="N",
              help="How many shards the sweep has. Default: CONVEYOR_SHARDS, else AWS_BATCH_JOB_ARRAY_SIZE, else 1.")
@click.option("--shard", type=int, default=None, metavar="I",
              help="This process's shard (0 to N-1). Default: AWS_BATCH_JOB_ARRAY_INDEX, else the :<i> of "
              "AWS_BATCH_JOB_ID, else JOB_COMPLETION_INDEX.")
@click.option("--dry-run", is_flag=True, help="Print what would be processed and skipped; touch nothing.")
@click.option("--submit", type=click.Choice(["batch"]), default=None,
              help="Submit the sweep as one AWS Batch array job of --shards children and print its id.")
@click.option("--manifest", type=click.Choice(["kubernetes"]), default=None,
              help="Print a Kubernetes Indexed Job of --shards pods (YAML) for --image.")
@click.option("--image", metavar="IMAGE", help="The function's image, for --manifest kubernetes.")
@click.option("--parallelism", type=click.IntRange(min=1), default=None, metavar="P",
              help="--manifest: pods at once (default: every shard).")
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="--manifest: retries of a failed shard (backoffLimitPerIndex).")
@click.pass_obj
def sweep(environ: Mapping[str, str], config_path: str | None, platform_opt: str | None, input_arg: str | None,
          shards: int | None, shard: int | None, dry_run: bool, submit: str | None, manifest: str | None,
          image: str | None, parallelism: int | None, retries: int) -> int:
    """Run every object under an input path through one warm model, in shards.

    Lists the objects under the definition's input path (or --input), keeps this shard's (a
    stable hash of the key modulo N), skips those whose result record already says SUCCEEDED,
    and processes the rest with the handler loaded once: each gets its result record and outputs
    as if it had been uploaded alone. Progress and a summary go to stderr. Exit 0 only when every
    input of the shard succeeded, else the first failure's code (as `conveyor run`); 78 for a bad
    shard. --submit batch / --manifest kubernetes launch the N shards on AWS Batch / Kubernetes.
    """
    try:
        return _sweep(config_path, platform_opt, input_arg, shards, shard, dry_run, submit, manifest, image,
                      parallelism, retries)
    except ConveyorError as exc:
        click.echo(f"conveyor: {exc.kind} error: {exc.message}", err=True)
        return exc.exit_code


def _say(text: str) -> None:
    click.echo(text, err=True)


def _sweep(config_path: str | None, platform_opt: str | None, input_arg: str | None, shards: int | None,
           shard_opt: int | None, dry_run: bool, submit: str | None, manifest: str | None, image: str | None,
           parallelism: int | None, retries: int) -> int:
    from dataclasses import replace

    from conveyor.config import load_config
    from conveyor.config.redaction import secret_values
    from conveyor.errors import ConfigError
    from conveyor.logs import setup_logging
    from conveyor.platform import detect_platform
    from conveyor.sealing import sealed_environ
    from conveyor.sweep.listing import parse_input

    # FUNCTION_CONFIG, FDL, SCRIPT, EVENT out of this process's environment block, as `conveyor run`
    environ = sealed_environ()
    setup_logging(environ.get("LOG_LEVEL", "INFO"), secrets=secret_values(environ))
    platform = detect_platform(environ, override=platform_opt)
    config = load_config(environ, platform, path=config_path)
    setup_logging(config.log_level, secrets=config.secret_values(environ))
    override = parse_input(input_arg) if input_arg else None
    if submit or manifest:
        if shards is None:
            raise ConfigError(f"--{'submit' if submit else 'manifest'} needs --shards N", key="--shards")
        return _launch(config, shards, submit, image, parallelism, retries, input_arg)
    from conveyor.sweep.shards import resolve_shard

    shard = resolve_shard(environ, shard_opt, shards)
    if override is not None:  # the sweep's path is the definition's input for this run (the records check it)
        config = replace(config, inputs=(override,))
    return _run(environ, config, platform, shard, override, dry_run)


def _launch(config: FunctionConfig, shards: int, submit: str | None, image: str | None, parallelism: int | None,
            retries: int, input_arg: str | None) -> int:
    if submit == "batch":
        from conveyor.delegate import batch_client
        from conveyor.sweep.submit import submit_sweep

        click.echo(submit_sweep(config, shards, batch_client, input_arg))
        return 0
    import yaml

    from conveyor.sweep.manifest import indexed_job

    job = indexed_job(config, shards, image or "", parallelism=parallelism, retries=retries, input_arg=input_arg)
    click.echo(yaml.safe_dump(job, sort_keys=False), nl=False)
    return 0


def _run(environ: Mapping[str, str], config: FunctionConfig, platform: Platform, shard: Shard,
         override: IOSpec | None, dry_run: bool) -> int:
    from conveyor.job import Stores
    from conveyor.logs import bound_request_id
    from conveyor.platform import Platform
    from conveyor.storage import transfer_options
    from conveyor.sweep.listing import plan_shard, sweep_input

    job_id = environ.get("AWS_BATCH_JOB_ID") if platform is Platform.BATCH else None
    request_id = job_id or environ.get("JOB_UUID") or f"sweep-{uuid.uuid4().hex[:8]}-{shard.index}"
    with bound_request_id(request_id):
        spec = sweep_input(config, override)
        stores = Stores(config, options=transfer_options(environ))
        shutdown = threading.Event()
        if not dry_run:
            _on_signals(shutdown)
        plan = plan_shard(config, spec, shard, stores)
        where = f"{spec.bucket}/{spec.key_prefix + '/' if spec.key_prefix else ''} on {spec.provider}"
        if not plan.listed:
            _say(f"conveyor sweep: nothing to do: no object under {where}")
            return 0
        _say(f"conveyor sweep: {shard}: {len(plan.todo) + len(plan.skipped)} of the {plan.listed} object(s) under "
             f"{where}, {len(plan.skipped)} already SUCCEEDED")
        if dry_run:
            for key in plan.todo:
                click.echo(f"process {spec.bucket}/{key}")
            for key in plan.skipped:
                click.echo(f"skip {spec.bucket}/{key} (already SUCCEEDED)")
            _say(f"conveyor sweep: dry run: {len(plan.todo)} to process, {len(plan.skipped)} to skip")
            return 0
        summary = _process(environ, config, platform, shard, plan, stores, request_id, job_id, shutdown)
    _report(summary)
    return summary.exit_code


def _process(environ: Mapping[str, str], config: FunctionConfig, platform: Platform, shard: Shard, plan: Plan,
             stores: Stores, request_id: str, job_id: str | None, shutdown: threading.Event) -> Summary:
    """The shard's inputs through the handler loaded here, once."""
    from conveyor.handler import load_handler
    from conveyor.job import Job
    from conveyor.scratch import scratch_dir
    from conveyor.sweep.runner import run_shard

    extra: dict[str, Any] = {"sweep_shard": f"{shard.index}/{shard.count}"}
    if job_id and environ.get("AWS_BATCH_JOB_ATTEMPT"):
        extra["batch_attempt"] = environ["AWS_BATCH_JOB_ATTEMPT"]
    job = Job(config=config, platform=platform, handler=load_handler(config), stores=stores, base_env=environ,
              scratch_dir=scratch_dir(environ), request_id=request_id, shutdown=shutdown, job_id=job_id, extra=extra)
    try:
        return run_shard(job, plan, say=_say)
    finally:
        job.handler.close()


def _report(summary: Summary) -> None:
    """The failures (the first few), then the summary line: on stderr, whatever log_level says."""
    failed = summary.failed
    for record in failed[:FAILURES_SHOWN]:
        error = record.error or {}
        _say(f"conveyor: {error.get('kind', 'internal')} error: {error.get('message', 'unknown error')} "
             f"(input {record.input.get('bucket')}/{record.input.get('key')})")
    if len(failed) > FAILURES_SHOWN:
        _say(f"conveyor sweep: ... and {len(failed) - FAILURES_SHOWN} more failed input(s)")
    if summary.error is not None:
        _say(f"conveyor: {summary.error.kind} error: {summary.error.message}")
    _say(summary.line())


def _on_signals(shutdown: threading.Event) -> None:
    """SIGTERM/SIGINT stop the sweep: the record under way finishes or is withdrawn, no other starts."""

    def stop(signum: int, _frame: object) -> None:
        if not shutdown.is_set():
            log.warning("received %s: finishing the input under way, starting no other",
                        signal.Signals(signum).name)
        shutdown.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)

