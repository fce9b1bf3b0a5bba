"""`conveyor sweep`: a folder through one warm model, in shards (conveyor.sweep).

Pure logic first (the shard of a key, the shard of a process, the Batch request, the Indexed Job
manifest), then `conveyor sweep` as a real process against the session's SeaweedFS, with
CountingHandler below as the model: it notes every set-up and every input it handles in the
deployment's MARKERS folder, so a test can tell the model was loaded once and each input
handled once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.config import FunctionConfig, IOSpec, ProviderRef
from conveyor.errors import ConfigError, HandlerError
from conveyor.handler import Handler, HandlerResult, Invocation
from conveyor.sweep.listing import make_item, parse_input
from conveyor.sweep.manifest import indexed_job
from conveyor.sweep.shards import Shard, resolve_shard, shard_of
from conveyor.sweep.submit import array_request
from tests.support.pipeline import CONVEYOR, Deployment, body, keys, minio_event, records

HANDLER = "tests.test_sweep:CountingHandler"


class CountingHandler(Handler):
    """The model of these tests: copies its input to <name> and its STORAGE_OBJECT_KEY to
    <name>.key; notes its set-ups (`setups`) and inputs (`handled`) in MARKERS. Options: `delay`
    (seconds per input, cut short by a termination signal), `bad`: inputs whose name holds it fail
    until MARKERS/heal exists, `broken_setup`: the set-up fails."""

    name = "counting"

    def setup(self) -> None:
        self._note("setups", str(os.getpid()))
        if self.options.get("broken_setup"):
            raise ConfigError("the weights are not there", key="conveyor.handler.weights")

    def _note(self, what: str, line: str) -> None:
        with open(Path(self.config.environment["MARKERS"]) / what, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def handle(self, inv: Invocation) -> HandlerResult:
        assert inv.input_path is not None
        name, key = inv.input_path.name, inv.env["STORAGE_OBJECT_KEY"]
        if delay := float(self.options.get("delay", 0)):
            inv.shutdown.wait(delay)
            inv.check("the copy")
        bad = self.options.get("bad")
        if bad and bad in name and not (Path(inv.env["MARKERS"]) / "heal").exists():
            raise HandlerError(f"refusing {name}")
        shutil.copy(inv.input_path, inv.output_dir / name)
        (inv.output_dir / f"{name}.key").write_text(key, encoding="utf-8")
        self._note("handled", json.dumps({"key": key, "event": inv.env.get("EVENT")}))
        return HandlerResult()


# -- which shard -------------------------------------------------------------------------------


def test_a_keys_shard_is_its_sha256_modulo_n_and_every_key_has_exactly_one() -> None:
    keys_ = [f"in/{i}.png" for i in range(300)]
    for count in (1, 2, 3, 7):
        owners = [[i for i in range(count) if Shard(i, count).holds(k)] for k in keys_]
        assert all(len(o) == 1 for o in owners)
        if count > 1:  # spread: no shard is left empty
            assert {o[0] for o in owners} == set(range(count))
    digest = hashlib.sha256("in/ünï ☃.png".encode()).digest()
    assert shard_of("in/ünï ☃.png", 5) == int.from_bytes(digest[:8], "big") % 5  # not hash(): stable across runs


@pytest.mark.parametrize(
    ("environ", "flags", "expected"),
    [
        ({}, (None, None), Shard(0, 1)),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "2", "AWS_BATCH_JOB_ARRAY_SIZE": "4"}, (None, None), Shard(2, 4)),
        ({"AWS_BATCH_JOB_ID": "0c7f-parent:3", "CONVEYOR_SHARDS": "5"}, (None, None), Shard(3, 5)),  # moto
        ({"JOB_COMPLETION_INDEX": "1", "CONVEYOR_SHARDS": "2"}, (None, None), Shard(1, 2)),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "1", "JOB_COMPLETION_INDEX": "0", "CONVEYOR_SHARDS": "3"}, (None, None),
         Shard(1, 3)),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "1", "CONVEYOR_SHARDS": "3"}, (2, None), Shard(2, 3)),  # the flag first
        ({"CONVEYOR_SHARDS": "3", "AWS_BATCH_JOB_ARRAY_SIZE": "9"}, (0, None), Shard(0, 3)),
        ({"CONVEYOR_SHARDS": "3"}, (1, 4), Shard(1, 4)),
        ({"AWS_BATCH_JOB_ID": "plain-job"}, (None, None), Shard(0, 1)),  # a job that is no array child
        ({"CONVEYOR_SHARDS": "1"}, (None, None), Shard(0, 1)),
    ],
)
def test_the_shard_comes_from_the_flags_then_the_engines(environ, flags, expected) -> None:
    assert resolve_shard(environ, *flags) == expected


@pytest.mark.parametrize(
    ("environ", "flags", "wording"),
    [
        ({}, (3, 3), "out of range"),
        ({}, (-1, 3), "out of range"),
        ({"JOB_COMPLETION_INDEX": "4", "CONVEYOR_SHARDS": "4"}, (None, None), "out of range"),
        ({}, (0, 0), "at least 1"),
        ({}, (None, 3), "no shard index"),
        ({"JOB_COMPLETION_INDEX": "2"}, (None, None), "no number of shards"),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "two", "CONVEYOR_SHARDS": "3"}, (None, None), "not a whole number"),
        ({"CONVEYOR_SHARDS": "many"}, (0, None), "not a whole number"),
    ],
)
def test_a_shard_that_cannot_be_is_a_config_error(environ, flags, wording) -> None:
    with pytest.raises(ConfigError, match=wording) as caught:
        resolve_shard(environ, *flags)
    assert caught.value.exit_code == 78


# -- the inputs as their uploads would have named them ----------------------------------------------


@pytest.mark.parametrize("provider", ["minio.default", "s3.default", "minio.other", "webdav.dcache"])
def test_an_input_is_the_event_its_upload_would_have_sent(provider) -> None:
    spec = IOSpec(ProviderRef.parse(provider), "b/in")
    item = make_item(spec, "in/a b+c/ünï ☃.png")
    ref = item.ref
    assert (ref.bucket, ref.key, item.name) == ("b", "in/a b+c/ünï ☃.png", "b/in/a b+c/ünï ☃.png")
    assert item.event.kind == "storage"
    from conveyor.process import input_provider

    assert str(input_provider(ref)) == provider


def test_input_takes_provider_colon_path() -> None:
    assert parse_input("minio.default:bucket/some/folder/") == IOSpec(ProviderRef("minio"), "bucket/some/folder")
    for bad in ("bucket/folder", "minio.default:", ":bucket"):
        with pytest.raises(ConfigError):
            parse_input(bad)


# -- launching on the engines ------------------------------------------------------------------------


def test_the_batch_request_is_the_functions_array_job() -> None:
    config = FunctionConfig(name="plants")
    request = array_request(config, 4, "minio.default:b/in")
    assert (request["jobDefinition"], request["jobQueue"]) == ("plants", "plants")  # as the hand-off names them
    assert request["arrayProperties"] == {"size": 4}
    assert request["containerOverrides"] == {
        "command": ["conveyor", "sweep", "--input", "minio.default:b/in"],
        "environment": [{"name": "CONVEYOR_SHARDS", "value": "4"}],
    }
    assert "arrayProperties" not in array_request(config, 1)  # AWS Batch has no array of one
    for shards in (0, 10_001):
        with pytest.raises(ConfigError):
            array_request(config, shards)
    with pytest.raises(ConfigError, match="multi-node"):
        array_request(FunctionConfig(name="plants", multi_node_parallel=True), 4)


def test_the_indexed_job_manifest_is_valid_kubernetes() -> None:
    import kubernetes_validate  # ships the schemas: no network

    job = indexed_job(FunctionConfig(name="Plants_Classifier"), 6, "ghcr.io/x/plants:1", parallelism=3, retries=2)
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimitPerIndex"]) == (
        "Indexed", 6, 3, 2)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert {"name": "CONVEYOR_SHARDS", "value": "6"} in container["env"]
    [mount] = container["volumeMounts"]
    [volume] = pod["volumes"]
    # as OSCAR mounts a service's definition: its ConfigMap (named after the service) at /oscar/config
    assert (mount["mountPath"], mount["readOnly"], volume["configMap"]["name"]) == ("/oscar/config", True,
                                                                                   "Plants_Classifier")
    assert job["metadata"]["name"] == "plants-classifier-sweep"
    broken = json.loads(json.dumps(job))
    broken["spec"]["completions"] = "six"
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does check
        kubernetes_validate.validate(broken, "1.33.0", strict=True)


# -- conveyor sweep, as a process ----------------------------------------------------------------------


def sweeping(d: Deployment, **conveyor: Any) -> Deployment:
    """The deployment with CountingHandler and a status location (what a resumable sweep needs)."""
    d.definition["conveyor"].update(
        handler={"name": HANDLER, **conveyor},
        status={"storage_provider": "minio.default", "path": f"{d.bucket}/status"},
    )
    return d


def run_sweep(d: Deployment, *args: str, platform: str | None = "oscar", **env: str) -> subprocess.CompletedProcess:
    command = [*CONVEYOR, "sweep", "--config", str(d.write()), *(["--platform", platform] if platform else []), *args]
    return subprocess.run(command, capture_output=True, env=d.env(**env), timeout=180)


def start_sweep(d: Deployment, *args: str, **env: str) -> subprocess.Popen:
    command = [*CONVEYOR, "sweep", "--config", str(d.write()), "--platform", "oscar", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=d.env(**env))


def handled(d: Deployment) -> list[str]:
    path = d.markers / "handled"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [json.loads(line)["key"] for line in lines]


def setups(d: Deployment) -> int:
    path = d.markers / "setups"
    return len(path.read_text().splitlines()) if path.exists() else 0


def stored_record(client: Any, bucket: str, key: str) -> dict[str, Any]:
    return json.loads(body(client, bucket, f"status/{bucket}/{key}.json"))


def put_inputs(client: Any, bucket: str, names: list[str]) -> dict[str, bytes]:
    contents = {f"in/{name}": f"content of {name}".encode() for name in names}
    for key, data in contents.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    return contents


def test_every_input_through_one_model_as_if_uploaded_one_by_one(deploy, bucket, s3_client) -> None:
    d = sweeping(deploy(None))
    contents = put_inputs(s3_client, bucket, [f"img-{i}.png" for i in range(7)] + ["sub/deeper/x.txt"])
    proc = run_sweep(d)
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert setups(d) == 1  # the model loaded once for the shard
    assert sorted(handled(d)) == sorted(contents)  # each input once
    for key, data in contents.items():
        name = key.rsplit("/", 1)[1]
        assert body(s3_client, bucket, f"out/{name}") == data
        assert body(s3_client, bucket, f"out/{name}.key").decode() == key
        record = stored_record(s3_client, bucket, key)
        assert record["status"] == "SUCCEEDED", record
        assert sorted(record["outputs"]) == [f"{bucket}/out/{name}", f"{bucket}/out/{name}.key"]
        assert record["extra"]["prefetched"] is True and record["extra"]["sweep_shard"] == "0/1"
    assert len(records(proc.stderr)) == len(contents)  # the record protocol's lines, one per input
    assert "8/8 done" in stderr
    assert "8 processed (8 succeeded, 0 failed), 0 skipped" in stderr
    assert keys(s3_client, bucket, "in/") == sorted(contents)  # the inputs are left where they are

    # the same as `conveyor run` on the upload's own event: the record's input and the model's EVENT
    [event_seen] = [json.loads(line)["event"] for line in (d.markers / "handled").read_text().splitlines()
                    if json.loads(line)["key"] == "in/img-3.png"]
    uploaded = minio_event(bucket, "in/img-3.png")
    assert json.loads(event_seen)["Records"][0]["s3"]["object"]["key"] == uploaded["Records"][0]["s3"]["object"]["key"]
    swept = stored_record(s3_client, bucket, "in/img-3.png")
    single = d.run(uploaded)
    assert single.returncode == 0, single.stderr.decode()
    [alone] = records(single.stderr)
    for field in ("bucket", "key", "source", "event_name"):
        assert swept["input"][field] == alone["input"][field], field
    assert sorted(swept["outputs"]) == sorted(alone["outputs"])


def test_a_second_run_skips_what_succeeded_and_reruns_the_rest(deploy, bucket, s3_client) -> None:
    d = sweeping(deploy(None), bad="bad")
    contents = put_inputs(s3_client, bucket, ["a.png", "b.png", "bad-1.png", "c.png"])
    first = run_sweep(d)
    assert first.returncode == 70, first.stderr.decode()  # the failed input's code, as `conveyor run`
    assert "conveyor: handler error: refusing bad-1.png (input" in first.stderr.decode()
    assert stored_record(s3_client, bucket, "in/bad-1.png")["status"] == "FAILED"
    assert keys(s3_client, bucket, "out/bad-1.png") == []  # a failed input publishes nothing
    # one more input was left RUNNING by a sweep that died (its start record)
    running = stored_record(s3_client, bucket, "in/c.png") | {"status": "RUNNING"}
    s3_client.put_object(Bucket=bucket, Key=f"status/{bucket}/in/c.png.json", Body=json.dumps(running).encode())

    dry = run_sweep(d, "--dry-run")
    assert dry.returncode == 0, dry.stderr.decode()
    assert sorted(dry.stdout.decode().splitlines()) == [
        f"process {bucket}/in/bad-1.png", f"process {bucket}/in/c.png",
        f"skip {bucket}/in/a.png (already SUCCEEDED)", f"skip {bucket}/in/b.png (already SUCCEEDED)",
    ]
    (d.markers / "heal").touch()
    before = len(handled(d))
    second = run_sweep(d)
    assert second.returncode == 0, second.stderr.decode()
    assert sorted(handled(d)[before:]) == ["in/bad-1.png", "in/c.png"]
    assert "2 processed (2 succeeded, 0 failed), 2 skipped (already SUCCEEDED)" in second.stderr.decode()
    for key in contents:
        assert stored_record(s3_client, bucket, key)["status"] == "SUCCEEDED"
    third = run_sweep(d)
    assert third.returncode == 0 and len(handled(d)) == before + 2  # nothing left to do
    assert setups(d) == 2  # the third run had nothing to process: no model loaded


def test_a_dry_run_touches_nothing(deploy, bucket, s3_client) -> None:
    d = sweeping(deploy(None))
    put_inputs(s3_client, bucket, ["a.png", "b.png", "c.png"])
    proc = run_sweep(d, "--dry-run", "--shards", "2", "--shard", "1")
    assert proc.returncode == 0, proc.stderr.decode()
    mine = sorted(f"process {bucket}/in/{n}" for n in ("a.png", "b.png", "c.png") if shard_of(f"in/{n}", 2) == 1)
    assert sorted(proc.stdout.decode().splitlines()) == mine
    assert keys(s3_client, bucket) == ["in/a.png", "in/b.png", "in/c.png"]  # no output, no record
    assert setups(d) == 0 and list(d.scratch.iterdir()) == []


def test_an_empty_folder_is_nothing_to_do(deploy, bucket, s3_client) -> None:
    d = sweeping(deploy(None))
    s3_client.put_object(Bucket=bucket, Key="elsewhere/x.png", Body=b"x")
    proc = run_sweep(d)
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"nothing to do: no object under {bucket}/in/" in proc.stderr.decode()
    assert setups(d) == 0


@pytest.mark.parametrize(("args", "env"), [(("--shards", "3", "--shard", "3"), {}), (("--shards", "0"), {}),
                                           ((), {"JOB_COMPLETION_INDEX": "5", "CONVEYOR_SHARDS": "2"})])
def test_a_shard_out_of_range_exits_78(deploy, bucket, s3_client, args, env) -> None:
    d = sweeping(deploy(None))
    put_inputs(s3_client, bucket, ["a.png"])
    proc = run_sweep(d, *args, **env)
    assert proc.returncode == 78, proc.stderr.decode()
    assert "conveyor: config error:" in proc.stderr.decode()
    assert keys(s3_client, bucket) == ["in/a.png"]


def test_a_model_that_cannot_be_set_up_stops_the_sweep_before_any_input(deploy, bucket, s3_client) -> None:
    d = sweeping(deploy(None), broken_setup=True)
    put_inputs(s3_client, bucket, ["a.png", "b.png"])
    proc = run_sweep(d)
    stderr = proc.stderr.decode()
    assert proc.returncode == 78, stderr
    assert "the weights are not there" in stderr and "2 left for a re-run" in stderr
    assert setups(d) == 1  # tried once, not once per input
    assert keys(s3_client, bucket) == ["in/a.png", "in/b.png"]  # no record: a re-run does them


def test_a_path_holding_the_outputs_and_records_does_not_sweep_them(deploy, bucket, s3_client) -> None:
    """--input the whole bucket, where out/ and status/ are too: a second run finds only what it did."""
    d = sweeping(deploy(None))
    d.definition["input"] = [{"storage_provider": "minio.default", "path": bucket}]
    contents = put_inputs(s3_client, bucket, ["a.png", "b.png"])
    first = run_sweep(d, "--input", f"minio.default:{bucket}")
    assert first.returncode == 0, first.stderr.decode()
    assert sorted(handled(d)) == sorted(contents)
    second = run_sweep(d)
    assert second.returncode == 0, second.stderr.decode()
    assert "2 of the 2 object(s)" in second.stderr.decode() and sorted(handled(d)) == sorted(contents)


def test_without_a_status_location_every_input_runs_again(deploy, bucket, s3_client) -> None:
    d = sweeping(deploy(None))
    del d.definition["conveyor"]["status"]
    put_inputs(s3_client, bucket, ["a.png"])
    assert run_sweep(d).returncode == 0
    again = run_sweep(d)
    assert again.returncode == 0 and handled(d) == ["in/a.png", "in/a.png"]
    assert "cannot tell which inputs already SUCCEEDED" in again.stderr.decode()


def test_the_shards_together_process_every_input_once(deploy, bucket, s3_client) -> None:
    d = sweeping(deploy(None))
    contents = put_inputs(s3_client, bucket, [f"f{i:02d}.bin" for i in range(24)])
    procs = [start_sweep(d, "--shards", "3", "--shard", str(i)) for i in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1].decode()[-2000:] for o in outs]
    assert sorted(handled(d)) == sorted(contents)  # each once, by one shard
    assert setups(d) == 3
    for i, (_, err) in enumerate(outs):
        mine = [k for k in contents if shard_of(k, 3) == i]
        assert f"{len(mine)} processed ({len(mine)} succeeded, 0 failed)" in err.decode()


def test_two_processes_of_one_shard_at_once_agree(deploy, bucket, s3_client) -> None:
    """The same shard started twice (a retried Batch child whose first attempt lives on): every
    input may be done twice, but no output ever holds anything else than its input's result, and
    every record ends SUCCEEDED with its outputs."""
    d = sweeping(deploy(None), delay=0.05)
    contents = put_inputs(s3_client, bucket, [f"f{i:02d}.bin" for i in range(12)])
    procs = [start_sweep(d), start_sweep(d)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outs]
    assert set(handled(d)) == set(contents)
    for key, data in contents.items():
        name = key.rsplit("/", 1)[1]
        assert body(s3_client, bucket, f"out/{name}") == data
        assert body(s3_client, bucket, f"out/{name}.key").decode() == key
        record = stored_record(s3_client, bucket, key)
        assert record["status"] == "SUCCEEDED" and len(record["outputs"]) == 2, record
    assert sorted(keys(s3_client, bucket, "out/")) == sorted(
        f"out/{k.rsplit('/', 1)[1]}{ext}" for k in contents for ext in ("", ".key"))


def test_hostile_keys(deploy, bucket, s3_client) -> None:
    d = sweeping(deploy(None))
    names = ["ünïcødé ☃ + plus.png", "a" * 240 + ".png", "x%2F..%2Fy.png", "-rf .png", "new\tline.txt"]
    contents = put_inputs(s3_client, bucket, names)
    proc = run_sweep(d)
    assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(handled(d)) == sorted(contents)
    for key, data in contents.items():
        record = stored_record(s3_client, bucket, key)
        assert record["status"] == "SUCCEEDED"
        [copy, noted] = sorted(o.split("/", 1)[1] for o in record["outputs"])  # named as a single upload's
        assert body(s3_client, bucket, copy) == data and body(s3_client, bucket, noted).decode() == key


def in_process_job(d: Deployment, wrap: Any = None) -> Any:
    """The Job `conveyor sweep` builds, in this process; `wrap(store)` may wrap each real store."""
    from conveyor.config import load_config
    from conveyor.handler import load_handler
    from conveyor.job import Job, Stores
    from conveyor.platform import Platform
    from conveyor.storage import open_store

    config = load_config(d.env(), Platform.OSCAR, path=str(d.write()))

    def opener(*args: Any) -> Any:
        store = open_store(*args)
        return wrap(store) if wrap else store

    return Job(config=config, platform=Platform.OSCAR, handler=load_handler(config), stores=Stores(config, opener),
               base_env=d.env(), scratch_dir=d.scratch, request_id="sweep-test")


class Wrapped:
    """A real store, with hooks on some calls."""

    def __init__(self, inner: Any, **hooks: Any) -> None:
        self.inner, self.hooks = inner, hooks

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.inner, name)
        hook = self.hooks.get(name)
        return call if hook is None else (lambda *a, **k: hook(call, *a, **k))


def test_a_listed_key_that_climbs_out_of_the_input_path_is_refused_unfetched(deploy, bucket, s3_client) -> None:
    """Stores that keep `..` segments in keys (AWS S3 does; SeaweedFS refuses them) list such a key
    under the input path: it is recorded as outside the inputs, never downloaded."""
    from conveyor.sweep.listing import plan_shard
    from conveyor.sweep.runner import run_shard

    d = sweeping(deploy(None))
    put_inputs(s3_client, bucket, ["fine.png"])
    fetched: list[str] = []

    def listing(call: Any, b: str, prefix: str = "") -> list[str]:
        return sorted([*call(b, prefix), "in/../escape.png"])

    def download(call: Any, b: str, key: str, dest: Path) -> int:
        fetched.append(key)
        return call(b, key, dest)

    job = in_process_job(d, lambda store: Wrapped(store, list_keys=listing, download=download))
    spec = job.config.inputs[0]
    plan = plan_shard(job.config, spec, Shard(), job.stores)
    summary = run_shard(job, plan)
    job.handler.close()
    assert summary.succeeded == 1 and summary.exit_code == 65
    [refused] = summary.failed
    assert refused.input["key"] == "in/../escape.png" and refused.error["kind"] == "outside_inputs"
    assert stored_record(s3_client, bucket, "in/fine.png")["status"] == "SUCCEEDED"
    assert fetched == ["in/fine.png"]


class OverlapHandler(CountingHandler):
    """CountingHandler that, on f0.bin, waits for f1.bin to be downloaded (it is, ahead, while the
    model works) and tells when f1.bin reaches the model; it notes how many downloaded inputs wait."""

    f1_downloaded = __import__("threading").Event()
    f1_handled = __import__("threading").Event()
    waiting: list[int] = []

    def handle(self, inv: Invocation) -> HandlerResult:
        scratch = Path(inv.env["TMPDIR"])
        self.waiting.append(sum(1 for p in scratch.glob("conveyor-*/*") if p.name.isdigit()))
        name = inv.input_path.name if inv.input_path else ""
        if name == "f0.bin":
            inv.env = {**inv.env, "PREFETCHED": str(self.f1_downloaded.wait(20))}
            self._note("prefetched", inv.env["PREFETCHED"])
        if name == "f1.bin":
            self.f1_handled.set()
        return super().handle(inv)


def test_downloads_and_uploads_overlap_the_model(deploy, bucket, s3_client) -> None:
    from conveyor.sweep.listing import plan_shard
    from conveyor.sweep.runner import PREFETCH, run_shard

    d = sweeping(deploy(None))
    d.definition["conveyor"]["handler"]["name"] = "tests.test_sweep:OverlapHandler"
    contents = put_inputs(s3_client, bucket, [f"f{i}.bin" for i in range(6)])
    overlapped: list[bool] = []

    def download(call: Any, b: str, key: str, dest: Path) -> int:
        size = call(b, key, dest)
        if key == "in/f1.bin":
            OverlapHandler.f1_downloaded.set()
        return size

    def put_file(call: Any, file: Any, b: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if key == "out/f0.bin":  # f0's upload waits for the model to take f1: it does, as f0 uploads
            overlapped.append(OverlapHandler.f1_handled.wait(20))
        return call(file, b, key, *args, **kwargs)

    job = in_process_job(d, lambda store: Wrapped(store, download=download, put_file=put_file))
    plan = plan_shard(job.config, job.config.inputs[0], Shard(), job.stores)
    summary = run_shard(job, plan)
    job.handler.close()
    assert summary.exit_code == 0 and summary.succeeded == len(contents)
    assert (d.markers / "prefetched").read_text().split() == ["True"]  # f1 came down while f0 was in the model
    assert overlapped == [True]  # f0's outputs went up while f1 was in the model
    assert max(OverlapHandler.waiting) <= PREFETCH  # bounded: so many downloaded inputs wait, at most
    assert all(stored_record(s3_client, bucket, key)["extra"]["prefetched"] for key in contents)


def test_a_termination_signal_finishes_the_input_under_way_and_leaves_the_rest(deploy, bucket, s3_client) -> None:
    d = sweeping(deploy(None), delay=1.5)
    contents = put_inputs(s3_client, bucket, [f"f{i}.bin" for i in range(6)])
    proc = start_sweep(d)
    deadline = time.monotonic() + 60
    while not handled(d) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handled(d), "no input was handled"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)  # well within the grace period + a record
    stderr = err.decode()
    assert proc.returncode == 143, stderr
    assert "left for a re-run" in stderr
    results = {r["input"]["key"]: r for r in records(err)}
    assert 1 <= len(results) < len(contents)
    for key, record in results.items():
        name = key.rsplit("/", 1)[1]
        if record["status"] == "SUCCEEDED":
            assert body(s3_client, bucket, f"out/{name}") == contents[key]
        else:  # stopped: withdrawn, nothing of it published
            assert record["error"]["kind"] == "interrupted", record
            assert keys(s3_client, bucket, f"out/{name}") == []
    again = run_sweep(d)
    assert again.returncode == 0, again.stderr.decode()
    for key in contents:
        assert stored_record(s3_client, bucket, key)["status"] == "SUCCEEDED"
    done_first = sum(r["status"] == "SUCCEEDED" for r in results.values())
    assert f"{len(contents) - done_first} processed" in again.stderr.decode()


def test_a_store_that_goes_down_stops_the_sweep_and_a_rerun_finishes_it(tmp_path, s3_server_factory) -> None:
    from tests.conftest import unique_bucket_name

    server = s3_server_factory()
    client = server.client()
    bucket = unique_bucket_name("down")
    client.create_bucket(Bucket=bucket)
    d = sweeping(Deployment(tmp_path, server, bucket, None), delay=0.3)
    contents = put_inputs(client, bucket, [f"f{i:02d}.bin" for i in range(30)])
    proc = start_sweep(d)
    deadline = time.monotonic() + 60
    while len(handled(d)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop()
    try:
        _, err = proc.communicate(timeout=150)  # bounded: retried, then given up
    finally:
        server.start()
    stderr = err.decode()
    assert proc.returncode == 74, stderr[-3000:]
    assert "in a row" in stderr and "left for a re-run" in stderr
    logged = records(err)
    assert len(logged) < len(contents)
    # no input SUCCEEDED without its outputs, in its log line or at the status location
    for record in logged:
        if record["status"] == "SUCCEEDED":
            name = record["input"]["key"].rsplit("/", 1)[1]
            assert body(client, bucket, f"out/{name}") == contents[record["input"]["key"]]
    for key in contents:
        try:
            stored = stored_record(client, bucket, key)
        except client.exceptions.NoSuchKey:
            continue
        if stored["status"] == "SUCCEEDED":
            assert body(client, bucket, f"out/{key.rsplit('/', 1)[1]}") == contents[key]
    again = run_sweep(d)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    for key, data in contents.items():
        assert stored_record(client, bucket, key)["status"] == "SUCCEEDED"
        assert body(client, bucket, f"out/{key.rsplit('/', 1)[1]}") == data


# -- on the engines: AWS Batch (moto) and a Kubernetes Indexed Job ------------------------------------


@pytest.fixture
def moto_batch():
    """moto's Batch (tests/support/batch.py) with a queue and a job definition named after the function."""
    from tests.support.batch import moto_batch_server

    moto = moto_batch_server()
    moto.queue("pipeline-test", ["conveyor", "run"])
    return moto.endpoint, moto.batch


def test_a_batch_array_job_sweeps_every_input_once(deploy, bucket, s3_client, moto_batch) -> None:
    endpoint, batch = moto_batch
    d = sweeping(deploy(None))
    contents = put_inputs(s3_client, bucket, [f"f{i:02d}.bin" for i in range(15)])
    aws = {"AWS_ENDPOINT_URL_BATCH": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    submitted = run_sweep(d, "--submit", "batch", "--shards", "3", **aws)
    assert submitted.returncode == 0, submitted.stderr.decode()
    parent = submitted.stdout.decode().strip()
    [job] = batch.describe_jobs(jobs=[parent])["jobs"]
    assert job["arrayProperties"]["size"] == 3
    assert job["jobQueue"].rsplit("/", 1)[-1] == "pipeline-test"
    assert job["jobDefinition"].rsplit("/", 1)[-1].split(":")[0] == "pipeline-test"
    container = job["container"]
    assert container["command"] == ["conveyor", "sweep"]
    job_env = {e["name"]: e["value"] for e in container["environment"]}
    assert job_env["CONVEYOR_SHARDS"] == "3"
    assert setups(d) == 0  # submitting loads no model and processes nothing
    # Each child as moto's Batch runs it: AWS_BATCH_JOB_ID=<parent>:<i>, the job's command and
    # environment, the definition as the job definition carries it (FUNCTION_CONFIG).
    definition = base64.b64encode(yaml.safe_dump(d.definition).encode()).decode()
    children = []
    for i in range(3):
        env = d.env(**{**job_env, "AWS_BATCH_JOB_ID": f"{parent}:{i}", "AWS_BATCH_JOB_ATTEMPT": "1",
                       "FUNCTION_CONFIG": definition})
        argv = [*CONVEYOR, *container["command"][1:]]
        children.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    outs = [c.communicate(timeout=180) for c in children]
    assert [c.returncode for c in children] == [0, 0, 0], [o[1].decode()[-2000:] for o in outs]
    assert sorted(handled(d)) == sorted(contents)
    for key in contents:
        record = stored_record(s3_client, bucket, key)
        assert record["status"] == "SUCCEEDED" and record["platform"] == "batch"
        assert record["job_id"] == f"{parent}:{shard_of(key, 3)}"


def test_an_indexed_job_sweeps_every_input_once(deploy, bucket, s3_client) -> None:
    import kubernetes_validate

    d = sweeping(deploy(None))
    contents = put_inputs(s3_client, bucket, [f"f{i:02d}.bin" for i in range(15)])
    printed = run_sweep(d, "--manifest", "kubernetes", "--shards", "4", "--image", "conveyor/base", platform=None)
    assert printed.returncode == 0, printed.stderr.decode()
    manifest = yaml.safe_load(printed.stdout)
    kubernetes_validate.validate(manifest, "1.33.0", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [mount] = container["volumeMounts"]
    assert f"{mount['mountPath']}/function_config.yaml" == "/oscar/config/function_config.yaml"
    # Each pod as Kubernetes runs it: the container's command and env plus JOB_COMPLETION_INDEX.
    # The ConfigMap's mount is stood in for by --config (this machine has no /oscar), and the
    # platform it reveals by CONVEYOR_PLATFORM.
    pods = []
    for i in range(manifest["spec"]["completions"]):
        env = d.env(**{e["name"]: e["value"] for e in container["env"]}, JOB_COMPLETION_INDEX=str(i),
                    CONVEYOR_PLATFORM="oscar")
        argv = [*CONVEYOR, *container["command"][1:], "--config", str(d.write())]
        pods.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    outs = [p.communicate(timeout=180) for p in pods]
    assert [p.returncode for p in pods] == [0] * 4, [o[1].decode()[-2000:] for o in outs]
    assert sorted(handled(d)) == sorted(contents)
    for key in contents:
        assert stored_record(s3_client, bucket, key)["status"] == "SUCCEEDED"
