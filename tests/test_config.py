"""The function definition: sources in order, SCAR/OSCAR shapes, overrides, providers, script, redaction.

Environment as data: every test passes a dict for the environment and a dict-backed `read_file`
(a fake filesystem), and a temporary folder for the minio.default secret files. Nothing patches
os.environ and nothing reads /var/task or /oscar on the machine running the tests.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from conveyor.config import (
    LAMBDA_CONFIG_PATH,
    MINIO_DEFAULT_ENDPOINT,
    OSCAR_CONFIG_PATH,
    OSCAR_SCRIPT_PATH,
    ConveyorSettings,
    FunctionConfig,
    HandlerSpec,
    IOSpec,
    ProviderRef,
    StorageProvider,
    load_config,
    read_text_file,
)
from conveyor.errors import ConfigError, CredentialsError
from conveyor.platform import Platform

CONFIGS = Path(__file__).parent / "configs"


def fixture(name: str) -> str:
    return (CONFIGS / name).read_text()


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def fs(files: Mapping[str, str] | None = None, real: Path | None = None) -> Callable[[str], str | None]:
    """A fake filesystem: read_file(path) -> text, None when absent.

    With `real`, paths under that folder (a test's secrets folder) are read from the disk.
    """
    table = dict(files or {})

    def read(path: str) -> str | None:
        if path in table:
            return table[path]
        if real is not None and Path(path).is_relative_to(real):
            return read_text_file(path)
        return None

    return read


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    """An empty secrets folder; tests that want minio.default's secret files write them."""
    folder = tmp_path / "secrets"
    folder.mkdir()
    return folder


def write_minio_secrets(folder: Path, access: str = "files-access", secret: str = "files-5ecr3t") -> None:
    (folder / "minio.default").mkdir(parents=True, exist_ok=True)
    (folder / "minio.default" / "accessKey").write_text(access + "\n")
    (folder / "minio.default" / "secretKey").write_text(secret + "\n")


def load(
    files: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    platform: Platform = Platform.LOCAL,
    path: str | None = None,
    secrets_dir: Path | None = None,
) -> FunctionConfig:
    reader = fs(files, real=secrets_dir)
    return load_config(environ or {}, platform, path=path, read_file=reader, secrets_dir=secrets_dir)


def doc(text: str, **kw) -> FunctionConfig:
    """Load an inline definition as if it were --config /cfg/f.yaml."""
    files = {"/cfg/f.yaml": text, **kw.pop("files", {})}
    return load(files, path="/cfg/f.yaml", **kw)


# --------------------------------------------------------------------------------------------
# Sources, in order


def test_explicit_path_wins_over_everything() -> None:
    files = {"/work/mine.yaml": "name: mine", LAMBDA_CONFIG_PATH: "name: lambda", OSCAR_CONFIG_PATH: "name: oscar"}
    environ = {"FDL": b64("name: fdl"), "FUNCTION_CONFIG": b64("name: fc")}
    for platform in Platform:
        config = load(files, environ, platform, path="/work/mine.yaml")
        assert (config.name, config.source) == ("mine", "/work/mine.yaml")


def test_explicit_path_missing_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=re.escape("/nowhere/f.yaml")) as err:
        load({OSCAR_CONFIG_PATH: "name: oscar"}, path="/nowhere/f.yaml")
    assert err.value.exit_code == 78


def test_lambda_reads_var_task_before_fdl() -> None:
    files = {LAMBDA_CONFIG_PATH: "name: from-file", OSCAR_CONFIG_PATH: "name: oscar"}
    config = load(files, {"FDL": b64("name: from-fdl")}, Platform.LAMBDA)
    assert (config.name, config.source) == ("from-file", LAMBDA_CONFIG_PATH)


def test_lambda_falls_back_to_fdl() -> None:
    config = load({OSCAR_CONFIG_PATH: "name: oscar"}, {"FDL": b64("name: from-fdl")}, Platform.LAMBDA)
    assert (config.name, config.source) == ("from-fdl", "env FDL")


def test_lambda_ignores_oscar_sources() -> None:
    config = load({OSCAR_CONFIG_PATH: "name: oscar"}, {"FUNCTION_CONFIG": b64("name: fc")}, Platform.LAMBDA)
    assert (config.name, config.source) == ("conveyor", "<defaults>")


@pytest.mark.parametrize("platform", [Platform.OSCAR, Platform.BATCH, Platform.LOCAL])
def test_elsewhere_reads_oscar_file_before_function_config(platform: Platform) -> None:
    files = {OSCAR_CONFIG_PATH: "name: from-file", LAMBDA_CONFIG_PATH: "name: lambda"}
    config = load(files, {"FUNCTION_CONFIG": b64("name: from-env")}, platform)
    assert (config.name, config.source) == ("from-file", OSCAR_CONFIG_PATH)


@pytest.mark.parametrize("platform", [Platform.OSCAR, Platform.BATCH, Platform.LOCAL])
def test_elsewhere_falls_back_to_function_config(platform: Platform) -> None:
    files = {LAMBDA_CONFIG_PATH: "name: lambda"}
    config = load(files, {"FUNCTION_CONFIG": b64("name: from-env"), "FDL": b64("name: fdl")}, platform)
    assert (config.name, config.source) == ("from-env", "env FUNCTION_CONFIG")


def test_nothing_found_gives_the_defaults(secrets: Path) -> None:
    config = load(secrets_dir=secrets)
    assert config == FunctionConfig(secrets_dir=str(secrets))
    assert config.source == "<defaults>"
    assert config.conveyor == ConveyorSettings()
    assert config.script is None


def test_empty_file_is_an_empty_definition() -> None:
    config = load({OSCAR_CONFIG_PATH: "# nothing yet\n"}, platform=Platform.OSCAR)
    assert (config.name, config.source, config.outputs) == ("conveyor", OSCAR_CONFIG_PATH, ())


def test_base64_wrapped_at_76_columns_is_accepted() -> None:
    text = fixture("oscar_function_config.yaml")
    encoded = base64.encodebytes(text.encode()).decode()  # newline every 76 characters
    assert "\n" in encoded
    config = load(environ={"FUNCTION_CONFIG": encoded}, platform=Platform.BATCH)
    assert config.name == "plants"


@pytest.mark.parametrize(
    ("environ", "platform", "source"),
    [
        ({"FDL": "not base64 at all!"}, Platform.LAMBDA, "env FDL"),
        ({"FUNCTION_CONFIG": "bmFtZTog@@"}, Platform.OSCAR, "env FUNCTION_CONFIG"),
        ({"FUNCTION_CONFIG": b64(b"\xff\xfe name")}, Platform.BATCH, "env FUNCTION_CONFIG"),
    ],
)
def test_bad_base64_names_the_source(environ: dict[str, str], platform: Platform, source: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(environ=environ, platform=platform)
    assert source in str(err.value)
    assert err.value.context["source"] == source


def test_yaml_syntax_error_names_the_source_and_line() -> None:
    files = {OSCAR_CONFIG_PATH: fixture("broken_syntax.yaml")}
    with pytest.raises(ConfigError) as err:
        load(files, platform=Platform.OSCAR)
    message = str(err.value)
    assert OSCAR_CONFIG_PATH in message
    assert "not valid YAML" in message and "line" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["name: a\nb: \x00\n", "name: \ud800\n", "a: [" * 5000])
def test_hostile_yaml_is_one_clean_error(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        doc(text)
    assert "not valid YAML" in str(err.value) and "\n" not in str(err.value)


def test_yaml_in_env_syntax_error_names_the_env_var() -> None:
    with pytest.raises(ConfigError, match="env FDL"):
        load(environ={"FDL": b64(fixture("broken_syntax.yaml"))}, platform=Platform.LAMBDA)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        doc("- just\n- a list\n")


def test_unreadable_file_is_a_config_error() -> None:
    def deny(path: str) -> str | None:
        raise PermissionError(13, "Permission denied", path)

    with pytest.raises(ConfigError, match="Permission denied") as err:
        load_config({}, Platform.OSCAR, read_file=deny, secrets_dir=None)
    assert err.value.context["source"] == OSCAR_CONFIG_PATH


def test_default_reader_reads_a_real_file(secrets: Path) -> None:
    path = CONFIGS / "oscar_function_config.yaml"
    config = load_config({}, Platform.LOCAL, path=path, secrets_dir=secrets)
    assert (config.name, config.source) == ("plants", str(path))


# --------------------------------------------------------------------------------------------
# The shapes SCAR and OSCAR write


def test_scar_lambda_config(secrets: Path) -> None:
    files = {LAMBDA_CONFIG_PATH: fixture("scar_lambda_function_config.yaml"), "/var/task/yolo.sh": "#!/bin/sh\nyolo\n"}
    config = load(files, {"AWS_LAMBDA_FUNCTION_NAME": "scar-darknet"}, Platform.LAMBDA, secrets_dir=secrets)
    assert config.name == "scar-darknet"
    assert config.log_level == "DEBUG"
    assert config.execution_mode == "lambda-batch"
    assert config.image == "123456789012.dkr.ecr.us-east-1.amazonaws.com/scar-darknet:latest"
    assert config.timeout_threshold == 20.0
    assert config.file_stage_in is False
    assert config.multi_node_parallel is False  # no batch section in lambda-batch mode
    # container variables only, coerced to strings; the Lambda's own environment.Variables are not the model's
    assert dict(config.environment) == {"CONFIDENCE": "0.5", "DEBUG": "true", "MODEL_API_TOKEN": "tok-5ecr3t-env"}
    assert config.inputs == (IOSpec(ProviderRef("s3"), "scar-darknet/input"),)
    assert config.outputs == (
        IOSpec(ProviderRef("s3"), "scar-darknet/output", suffix=(".png", ".out")),
        IOSpec(ProviderRef("s3", "external"), "partner-results/darknet", prefix=("result",)),
    )
    external = config.provider("s3.external")
    assert (external.access_key, external.secret_key, external.region) == (
        "AKIAEXTERNALKEY000",
        "ext-s3-5ecr3t",
        "eu-west-1",
    )
    assert config.provider("s3") == StorageProvider(ProviderRef("s3"))  # the function's role
    # init_script is the base name SCAR copied next to function_config.yaml
    assert config.init_script == "yolo.sh"
    assert (config.script, config.script_source) == (b"#!/bin/sh\nyolo\n", "init_script /var/task/yolo.sh")


def test_scar_batch_job_config_from_function_config(secrets: Path) -> None:
    script = b"#!/bin/bash\nmpirun -np 3 /opt/app\n"
    environ = {
        "AWS_BATCH_JOB_ID": "job-1",
        "AWS_LAMBDA_FUNCTION_NAME": "scar-mpi",
        "FUNCTION_CONFIG": b64(fixture("scar_batch_function_config.yaml")),
        "SCRIPT": b64(script),
    }
    config = load(environ=environ, platform=Platform.BATCH, secrets_dir=secrets)
    assert (config.name, config.execution_mode, config.multi_node_parallel) == ("scar-mpi", "batch", True)
    assert config.source == "env FUNCTION_CONFIG"
    assert dict(config.environment) == {"EXEC_TYPE": "batch"}
    assert (config.script, config.script_source) == (script, "env SCRIPT")
    assert config.providers == {}


def test_scar_user_definition_picks_the_function_named_by_the_environment(secrets: Path) -> None:
    files = {"/defs/scar_fdl.yaml": fixture("scar_fdl.yaml"), "/defs/yolov3-script.sh": "yolo\n"}
    environ = {"AWS_LAMBDA_FUNCTION_NAME": "scar-av-yolov3"}
    config = load(files, environ, path="/defs/scar_fdl.yaml", secrets_dir=secrets)
    assert (config.name, config.execution_mode, config.image) == (
        "scar-av-yolov3",
        "batch",
        "grycap/yolov3:opencv-cudnn",
    )
    assert config.multi_node_parallel is False
    assert (config.script, config.script_source) == (
        b"yolo\n",
        "functions.aws[1].lambda.init_script /defs/yolov3-script.sh",
    )
    # top-level storage_providers belong to every function
    assert config.providers["minio.my_minio"].endpoint == "https://minio.example.org"


def test_scar_user_definition_first_function(secrets: Path) -> None:
    files = {"/defs/scar_fdl.yaml": fixture("scar_fdl.yaml"), "/defs/ffmpeg-script.sh": "ffmpeg\n"}
    config = load(
        files, {"AWS_LAMBDA_FUNCTION_NAME": "scar-av-ffmpeg"}, path="/defs/scar_fdl.yaml", secrets_dir=secrets
    )
    assert config.outputs[1] == IOSpec(ProviderRef("minio", "my_minio"), "scar-av-workflow/audio", suffix=("wav",))
    minio = config.provider("minio.my_minio")
    assert (minio.verify, minio.access_key, minio.secret_key) == (False, "fdl-minio-access", "fdl-minio-5ecr3t")


def test_several_functions_and_no_name_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        load({"/defs/f.yaml": fixture("scar_fdl.yaml")}, path="/defs/f.yaml")
    message = str(err.value)
    assert "scar-av-ffmpeg" in message and "scar-av-yolov3" in message
    assert "AWS_LAMBDA_FUNCTION_NAME" in message
    assert err.value.context["key"] == "functions"


def test_oscar_service_config(secrets: Path) -> None:
    files = {OSCAR_CONFIG_PATH: fixture("oscar_function_config.yaml")}
    config = load(files, {"OSCAR_SERVICE_NAME": "plants"}, Platform.OSCAR, secrets_dir=secrets)
    assert (config.name, config.image, config.log_level) == ("plants", "grycap/oscar-theano-plants", "INFO")
    assert (config.file_stage_in, config.isolation_level, config.bucket_list) == (False, "SERVICE", ())
    assert config.execution_mode == "lambda"
    assert dict(config.environment) == {"MODEL": "plants", "WORKERS": "2"}
    assert config.inputs == (IOSpec(ProviderRef("minio"), "plants/in"),)
    assert config.outputs[0] == IOSpec(ProviderRef("minio"), "plants/out", suffix=(".json",))
    assert config.outputs[1].provider == ProviderRef("onedata", "my_onedata")
    onedata = config.provider("onedata.my_onedata")
    assert (onedata.host, onedata.token, onedata.space) == ("op.example.org", "onedata-5ecr3t-token", "plants-space")
    # rucio: the definition loads (OSCAR writes it); this build has no Rucio store, which opening it says
    rucio = config.provider("rucio.rucio")
    assert (rucio.host, rucio.login) == ("rucio.example.org", "plants")
    # minio.default: OSCAR's endpoint, 'hidden' keys, no secret files -> a clear CredentialsError on use
    assert config.providers["minio.default"].endpoint == "http://minio.minio:9000"
    with pytest.raises(CredentialsError) as err:
        config.provider("minio.default")
    assert str(secrets / "minio.default" / "accessKey") in str(err.value)
    assert "hidden" in str(err.value)
    assert err.value.exit_code == 77
    # no script.sh mounted: the script text OSCAR wrote under `script`
    assert config.script is not None and config.script.startswith(b'#!/bin/bash\necho "SCRIPT: Invoked')
    assert config.script_source == "script (inline)"


def test_oscar_service_with_mounted_secrets_and_script(secrets: Path) -> None:
    write_minio_secrets(secrets, "minio-user-ak", "minio-user-5ecr3t")
    files = {OSCAR_CONFIG_PATH: fixture("oscar_function_config.yaml"), OSCAR_SCRIPT_PATH: "#!/bin/sh\nclassify\n"}
    config = load(files, platform=Platform.OSCAR, secrets_dir=secrets)
    minio = config.provider("minio.default")
    assert (minio.access_key, minio.secret_key) == ("minio-user-ak", "minio-user-5ecr3t")
    assert (minio.endpoint, minio.region, minio.verify) == ("http://minio.minio:9000", "us-east-1", True)
    assert minio.credentials_source == f"{secrets}/minio.default"
    assert (config.script, config.script_source) == (b"#!/bin/sh\nclassify\n", OSCAR_SCRIPT_PATH)


def test_oscar_cli_definition(secrets: Path) -> None:
    files = {"/svc/oscar_cli_fdl.yaml": fixture("oscar_cli_fdl.yaml"), "/svc/grayify.sh": "convert gray\n"}
    environ = {"OSCAR_SERVICE_NAME": "grayify"}
    config = load(files, environ, path="/svc/oscar_cli_fdl.yaml", secrets_dir=secrets)
    assert (config.name, config.image) == ("grayify", "grycap/imagemagick")
    assert (config.script, config.script_source) == (
        b"convert gray\n",
        "functions.oscar[1].oscar-test.script /svc/grayify.sh",
    )
    dcache = config.provider("webdav.dcache")
    assert (dcache.host, dcache.login, dcache.password) == ("my_dcache.com", "my_username", "dcache-5ecr3t-pass")


def test_oscar_cli_definition_isolation_level_is_case_insensitive(secrets: Path) -> None:
    files = {"/svc/f.yaml": fixture("oscar_cli_fdl.yaml"), "/svc/plants.sh": "plants\n"}
    config = load(files, {"OSCAR_SERVICE_NAME": "plants"}, path="/svc/f.yaml", secrets_dir=secrets)
    assert config.isolation_level == "USER"


def test_oscar_cli_script_file_missing_names_the_key_and_where_it_looked() -> None:
    files = {"/svc/f.yaml": fixture("oscar_cli_fdl.yaml")}
    config = load(files, {"OSCAR_SERVICE_NAME": "plants"}, path="/svc/f.yaml")
    assert config.script is None
    assert "key 'functions.oscar[0].oscar-test.script'" in (config.script_error or "")
    assert "/svc/plants.sh" in (config.script_error or "")


def test_conveyor_additions(secrets: Path) -> None:
    config = doc(fixture("conveyor_additions.yaml"), secrets_dir=secrets)
    assert config.log_level == "WARNING"  # 'warn' accepted
    c = config.conveyor
    assert c.handler.name == "deepaas"
    assert dict(c.handler.options) == {
        "model": "plants",
        "api_key": "deepaas-5ecr3t-key",
        "extra_args": ["--top-k", 3],
    }
    assert (c.timeout, c.grace_period, c.expected_duration, c.withdraw_timeout) == (120.0, 5.0, 40.5, 12.0)
    assert c.status == IOSpec(ProviderRef("local", "dev"), "status/deep-plants")
    assert (c.lambda_max_size, c.log_tail_bytes, c.log_max_bytes) == (512 * 2**20, 8192, 50 * 10**6)
    assert c.require_output is True
    assert config.provider("local.dev").root == "/tmp/conveyor-buckets"
    assert config.inputs[0].provider == ProviderRef("minio", "default")


def test_conveyor_handler_as_a_plain_name() -> None:
    assert doc("conveyor:\n  handler: darknet\n").conveyor.handler == HandlerSpec("darknet")


def test_conveyor_key_inside_a_scar_function_wins_over_top_level() -> None:
    text = """
conveyor: {timeout: 10, grace_period: 3}
functions:
  aws:
  - lambda:
      name: f
      conveyor: {timeout: 99}
"""
    c = doc(text).conveyor
    assert (c.timeout, c.grace_period) == (99.0, 3.0)


def test_unknown_keys_are_ignored() -> None:
    text = """
name: tolerant
future_key: {deep: [1, 2, {x: y}]}
container: {image: img, gpu: true, whatever: 1}
output:
- {storage_provider: s3, path: out/put, compression: zstd}
storage_providers:
  ftp: {archive: {host: ftp.example.org}}
  s3: {default: {region: eu-west-1, mystery: 7}}
batch: {vcpus: 4}
"""
    config = doc(text)
    assert (config.name, config.image, config.outputs[0].path) == ("tolerant", "img", "out/put")
    assert config.provider("s3").region == "eu-west-1"


def test_legacy_provider_section_without_ids_is_the_default_one() -> None:
    config = doc("storage_providers:\n  s3: {access_key: AK, secret_key: SK, region: us-east-2}\n")
    assert (config.provider("s3").access_key, config.provider("s3").region) == ("AK", "us-east-2")


def test_null_sections_mean_absent() -> None:
    text = "name: n\ninput:\noutput:\nbucket_list:\nbatch:\nstorage_providers:\ncontainer:\nenvironment:\n"
    config = doc(text)
    assert (config.inputs, config.outputs, config.bucket_list, config.multi_node_parallel) == ((), (), (), False)


def test_timeout_threshold_at_top_level_is_accepted() -> None:
    assert doc("timeout_threshold: 30\n").timeout_threshold == 30.0
    assert doc("timeout_threshold: 30\ncontainer: {timeout_threshold: 5}\n").timeout_threshold == 5.0


def test_environment_merges_scar_and_oscar_variables() -> None:
    text = """
container: {environment: {Variables: {A: 1, SHARED: scar, EMPTY: }}}
environment: {variables: {B: two, SHARED: oscar}, Variables: {LAMBDA_ONLY: x}}
"""
    assert dict(doc(text).environment) == {"A": "1", "SHARED": "oscar", "EMPTY": "", "B": "two"}


# --------------------------------------------------------------------------------------------
# Wrong types and missing pieces: the key path and the source are named


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("output: {storage_provider: s3, path: p}", "output"),
        ("output: [just-a-string]", "output[0]"),
        ("output: [null]", "output[0]"),
        ("output: [{storage_provider: s3}]", "output[0].path"),
        ("output: [{storage_provider: s3, path: [a, b]}]", "output[0].path"),
        ("output: [{storage_provider: s3, path: b, suffix: .png}]", "output[0].suffix"),
        ("output: [{storage_provider: s3, path: b, prefix: [a, null]}]", "output[0].prefix[1]"),
        ("input: [{path: in}]", "input[0].storage_provider"),
        ("input: [{storage_provider: ftp.x, path: in}]", "input[0].storage_provider"),
        ("input: [{storage_provider: s3.not-configured, path: in}]", "input[0].storage_provider"),
        ("file_stage_in: maybe", "file_stage_in"),
        ("file_stage_in: 1", "file_stage_in"),
        ("container: {timeout_threshold: abc}", "container.timeout_threshold"),
        ("container: {timeout_threshold: -5}", "container.timeout_threshold"),
        ("container: {timeout_threshold: .nan}", "container.timeout_threshold"),
        ("container: [image]", "container"),
        ("container: {image: {name: x}}", "container.image"),
        ("container: {environment: {Variables: {X: [1, 2]}}}", "container.environment.Variables.X"),
        ("environment: {variables: [A=1]}", "environment.variables"),
        ("name: {first: x}", "name"),
        ("log_level: LOUD", "log_level"),
        ("log_level: false", "log_level"),
        ("execution_mode: serverless", "execution_mode"),
        ("isolation_level: GROUP", "isolation_level"),
        ("bucket_list: just-one", "bucket_list"),
        ("batch: {multi_node_parallel: {enabled: sometimes}}", "batch.multi_node_parallel.enabled"),
        ("batch: {multi_node_parallel: yes-please}", "batch.multi_node_parallel"),
        ("storage_providers: [s3]", "storage_providers"),
        ("storage_providers: {s3: {x: just-a-string, y: {region: r}}}", "storage_providers.s3.x"),
        ("storage_providers: {s3: {x: {access_key: AK}}}", "storage_providers.s3.x.secret_key"),
        ("storage_providers: {minio: {x: {secret_key: SK}}}", "storage_providers.minio.x.access_key"),
        ("storage_providers: {minio: {x: {verify: maybe}}}", "storage_providers.minio.x.verify"),
        ("storage_providers: {local: {dev: {}}}", "storage_providers.local.dev.root"),
        ("storage_providers: {onedata: {od: {oneprovider_host: h, space: s}}}", "storage_providers.onedata.od.token"),
        ("storage_providers: {webdav: {dc: {login: l}}}", "storage_providers.webdav.dc.hostname"),
        ("conveyor: [handler]", "conveyor"),
        ("conveyor: {handler: [script]}", "conveyor.handler"),
        ("conveyor: {handler: {model: x}}", "conveyor.handler.name"),
        ("conveyor: {handler: ''}", "conveyor.handler"),
        ("conveyor: {timeout: -1}", "conveyor.timeout"),
        ("conveyor: {timeout: 0}", "conveyor.timeout"),
        ("conveyor: {grace_period: soon}", "conveyor.grace_period"),
        ("conveyor: {withdraw_timeout: -2}", "conveyor.withdraw_timeout"),
        ("conveyor: {lambda_max_size: big}", "conveyor.lambda_max_size"),
        ("conveyor: {log_max_bytes: 0}", "conveyor.log_max_bytes"),
        ("conveyor: {log_tail_bytes: -1}", "conveyor.log_tail_bytes"),
        ("conveyor: {require_output: maybe}", "conveyor.require_output"),
        ("conveyor: {status: {storage_provider: s3}}", "conveyor.status.path"),
        ("conveyor: {status: {storage_provider: local.nope, path: st}}", "conveyor.status.storage_provider"),
        ("functions: {}", "functions"),
        ("functions: {aws: {lambda: {name: x}}}", "functions.aws"),
        ("functions: {aws: [{batch: {vcpus: 1}}]}", "functions.aws[0].lambda"),
        (
            "functions: {aws: [{lambda: {name: f, output: [{storage_provider: s3}]}}]}",
            "functions.aws[0].lambda.output[0].path",
        ),
        ("functions: {oscar: [{c1: {name: s, file_stage_in: maybe}}]}", "functions.oscar[0].c1.file_stage_in"),
        ("functions: {scar-mrbayes: {image: grycap/mrbayes}}", "functions"),
    ],
)
def test_wrong_type_names_the_key_and_the_source(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        doc(text)
    assert err.value.context["key"] == key
    assert err.value.context["source"] == "/cfg/f.yaml"
    message = str(err.value)
    assert f"key '{key}'" in message and "/cfg/f.yaml" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "key", "words"),
    [
        ("broken_types.yaml", "output", "list"),
        ("broken_unknown_provider.yaml", "input[0].storage_provider", "ftp"),
    ],
)
def test_broken_fixtures(name: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({OSCAR_CONFIG_PATH: fixture(name)}, platform=Platform.OSCAR)
    assert err.value.context == {"key": key, "source": OSCAR_CONFIG_PATH}
    assert words in str(err.value)


# --------------------------------------------------------------------------------------------
# Environment overrides


def test_env_overrides_win_over_the_file() -> None:
    environ = {"LOG_LEVEL": "debug", "EXECUTION_MODE": "Batch", "TIMEOUT_THRESHOLD": "2.5"}
    files = {LAMBDA_CONFIG_PATH: fixture("scar_lambda_function_config.yaml"), "/var/task/yolo.sh": "x"}
    config = load(files, environ, Platform.LAMBDA)
    assert (config.log_level, config.execution_mode, config.timeout_threshold) == ("DEBUG", "batch", 2.5)


def test_env_overrides_apply_to_the_defaults_too() -> None:
    config = load(environ={"EXECUTION_MODE": "lambda-batch", "TIMEOUT_THRESHOLD": "0"})
    assert (config.execution_mode, config.timeout_threshold, config.source) == ("lambda-batch", 0.0, "<defaults>")


def test_empty_env_overrides_are_ignored() -> None:
    config = doc("log_level: ERROR\nexecution_mode: batch\n", environ={"LOG_LEVEL": "", "EXECUTION_MODE": " "})
    assert (config.log_level, config.execution_mode) == ("ERROR", "batch")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EXECUTION_MODE", "serverless"),
        ("TIMEOUT_THRESHOLD", "abc"),
        ("TIMEOUT_THRESHOLD", "-1"),
        ("TIMEOUT_THRESHOLD", "inf"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_bad_env_override_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        doc("name: n\n", environ={name: value})
    assert err.value.context == {"key": name, "source": "environment"}
    assert name in str(err.value) and value in str(err.value)


# --------------------------------------------------------------------------------------------
# ProviderRef


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("minio", ProviderRef("minio", "default")),
        ("minio.default", ProviderRef("minio", "default")),
        ("s3", ProviderRef("s3", "default")),
        ("s3.my-bucket", ProviderRef("s3", "my-bucket")),
        ("s3.my.dotted.id", ProviderRef("s3", "my.dotted.id")),  # split on the first dot
        ("MINIO.Default", ProviderRef("minio", "Default")),  # type case-insensitive, id kept
        ("  onedata.my_onedata ", ProviderRef("onedata", "my_onedata")),
        ("webdav.dcache", ProviderRef("webdav", "dcache")),
        ("local.dev", ProviderRef("local", "dev")),
    ],
)
def test_provider_ref_parse(value: str, expected: ProviderRef) -> None:
    assert ProviderRef.parse(value) == expected
    assert ProviderRef.parse(str(expected)) == expected


@pytest.mark.parametrize("value", ["", "   ", "ftp", "ftp.archive", "minio.", ".default", "default", None, 3])
def test_provider_ref_parse_refuses(value: object) -> None:
    with pytest.raises(ConfigError):
        ProviderRef.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("default", ProviderRef("minio", "default")),  # faas-supervisor 1.5.8's bare id
        ("my_minio", ProviderRef("minio", "my_minio")),
        ("s3.other", ProviderRef("s3", "other")),  # a full ref is still a full ref
        ("minio", ProviderRef("minio", "default")),
    ],
)
def test_provider_ref_parse_bare_id_with_a_default_type(value: str, expected: ProviderRef) -> None:
    assert ProviderRef.parse(value, default_type="minio") == expected


def test_provider_ref_str() -> None:
    assert str(ProviderRef("minio")) == "minio.default"


@pytest.mark.parametrize(
    ("path", "bucket", "key_prefix", "key"),
    [
        ("results", "results", "", "sub/r.json"),
        ("results/json", "results", "json", "json/sub/r.json"),
        ("/logs-bucket/a/b/", "logs-bucket", "a/b", "a/b/sub/r.json"),
        ("b//deep///out", "b", "deep/out", "deep/out/sub/r.json"),
    ],
)
def test_iospec_splits_path_into_bucket_and_key(path: str, bucket: str, key_prefix: str, key: str) -> None:
    spec = IOSpec(ProviderRef("minio"), path)
    assert (spec.bucket, spec.key_prefix) == (bucket, key_prefix)
    assert spec.destination("sub/r.json") == (bucket, key)


# --------------------------------------------------------------------------------------------
# FunctionConfig.provider


def test_s3_default_with_nothing_configured_is_the_platform_role(secrets: Path) -> None:
    provider = load(secrets_dir=secrets).provider("s3.default")
    assert provider == StorageProvider(ProviderRef("s3"))
    assert (provider.access_key, provider.secret_key, provider.endpoint) == (None, None, None)


def test_minio_default_from_secret_files(secrets: Path) -> None:
    write_minio_secrets(secrets)
    config = load(secrets_dir=secrets)  # nothing configured: the files alone define it
    provider = config.provider(ProviderRef("minio"))
    assert (provider.access_key, provider.secret_key) == ("files-access", "files-5ecr3t")  # newline stripped
    assert provider.endpoint == MINIO_DEFAULT_ENDPOINT
    assert config.provider("minio") == provider == config.provider("minio.default")


def test_minio_default_secret_files_win_over_config_keys(secrets: Path) -> None:
    write_minio_secrets(secrets)
    text = (
        "storage_providers:\n  minio:\n    default: {access_key: cfg-ak, secret_key: cfg-sk, endpoint: http://m:9000}\n"
    )
    provider = doc(text, secrets_dir=secrets).provider("minio.default")
    assert (provider.access_key, provider.secret_key, provider.endpoint) == (
        "files-access",
        "files-5ecr3t",
        "http://m:9000",
    )


def test_minio_default_config_keys_when_no_files(secrets: Path) -> None:
    text = "storage_providers:\n  minio:\n    default: {access_key: cfg-ak, secret_key: cfg-sk}\n"
    provider = doc(text, secrets_dir=secrets).provider("minio.default")
    assert (provider.access_key, provider.secret_key, provider.endpoint) == ("cfg-ak", "cfg-sk", MINIO_DEFAULT_ENDPOINT)
    assert provider.credentials_source == "/cfg/f.yaml: storage_providers.minio.default"


def test_minio_default_one_secret_file_alone_is_not_enough(secrets: Path) -> None:
    (secrets / "minio.default").mkdir()
    (secrets / "minio.default" / "accessKey").write_text("only-access")
    text = "storage_providers:\n  minio:\n    default: {access_key: cfg-ak, secret_key: cfg-sk}\n"
    assert doc(text, secrets_dir=secrets).provider("minio").access_key == "cfg-ak"
    with pytest.raises(CredentialsError):
        load(secrets_dir=secrets).provider("minio")


def test_minio_default_hidden_keys_and_no_files_is_a_credentials_error(secrets: Path) -> None:
    text = "storage_providers:\n  minio:\n    default: {access_key: hidden, secret_key: hidden}\n"
    config = doc(text, secrets_dir=secrets)
    assert (config.providers["minio.default"].access_key, config.providers["minio.default"].secret_key) == (None, None)
    with pytest.raises(CredentialsError) as err:
        config.provider("minio.default")
    message = str(err.value)
    assert "minio.default" in message and str(secrets) in message and "/cfg/f.yaml" in message
    assert err.value.context["provider"] == "minio.default"


def test_minio_default_with_nothing_at_all_is_a_credentials_error(secrets: Path) -> None:
    with pytest.raises(CredentialsError, match=re.escape("minio.default")):
        load(secrets_dir=secrets).provider("minio")


def test_minio_default_without_a_secrets_dir(secrets: Path) -> None:
    with pytest.raises(CredentialsError, match="no secrets folder"):
        load(secrets_dir=None).provider("minio")


def test_secret_files_are_read_at_load_time(secrets: Path) -> None:
    write_minio_secrets(secrets)
    config = load(secrets_dir=secrets)
    for name in ("accessKey", "secretKey"):
        (secrets / "minio.default" / name).unlink()
    assert config.provider("minio").secret_key == "files-5ecr3t"


def test_minio_default_secret_files_go_through_read_file() -> None:
    # No real files: the reader is a dict, so the secret files are read through the same seam as the rest.
    files = {
        "/run/secrets/minio.default/accessKey": "dict-access\n",
        "/run/secrets/minio.default/secretKey": "dict-5ecr3t\n",
    }
    asked: list[str] = []

    def reader(path: str) -> str | None:
        asked.append(path)
        return files.get(path)

    config = load_config({}, Platform.OSCAR, read_file=reader, secrets_dir="/run/secrets")
    provider = config.provider("minio.default")
    assert (provider.access_key, provider.secret_key) == ("dict-access", "dict-5ecr3t")
    assert provider.endpoint == MINIO_DEFAULT_ENDPOINT
    assert provider.credentials_source == "/run/secrets/minio.default"
    assert set(files) <= set(asked)


@pytest.mark.parametrize(
    "secret",
    [
        None,  # absent
        "  \n",  # empty
        "undecodable-\udcff",  # not UTF-8 (read_text_file keeps such bytes as surrogates)
        PermissionError(13, "Permission denied"),  # unreadable
    ],
)
def test_minio_default_secret_file_unusable_counts_as_absent(secret: object) -> None:
    def reader(path: str) -> str | None:
        if path == "/run/secrets/minio.default/accessKey":
            return "dict-access"
        if path != "/run/secrets/minio.default/secretKey":
            return None
        if isinstance(secret, OSError):
            raise secret
        return secret if isinstance(secret, str) else None

    config = load_config({}, Platform.OSCAR, read_file=reader, secrets_dir="/run/secrets")
    assert "minio.default" not in config.providers
    with pytest.raises(CredentialsError, match=re.escape("/run/secrets/minio.default/accessKey")):
        config.provider("minio")


def test_no_secrets_dir_reads_no_secret_files() -> None:
    asked: list[str] = []

    def reader(path: str) -> str | None:
        asked.append(path)
        return None

    load_config({}, Platform.LOCAL, read_file=reader, secrets_dir=None)
    assert asked and not [path for path in asked if "minio.default" in path]


def test_hidden_keys_for_s3_mean_the_default_credential_chain() -> None:
    provider = doc("storage_providers: {s3: {default: {access_key: hidden, secret_key: hidden}}}").provider("s3")
    assert (provider.access_key, provider.secret_key) == (None, None)


def test_a_provider_id_not_configured_is_a_config_error(secrets: Path) -> None:
    config = load(secrets_dir=secrets)
    for ref in ("s3.other", "minio.cluster2", "local.dev", "onedata.od", "webdav.dcache"):
        with pytest.raises(ConfigError) as err:
            config.provider(ref)
        assert ref in str(err.value)
        assert err.value.context["key"] == f"storage_providers.{ref}"


def test_a_minio_provider_without_keys_is_a_credentials_error() -> None:
    config = doc("storage_providers: {minio: {cluster2: {endpoint: 'https://m2'}}}")
    with pytest.raises(CredentialsError, match=re.escape("minio.cluster2")):
        config.provider("minio.cluster2")


def test_provider_refuses_an_unknown_type() -> None:
    with pytest.raises(ConfigError, match="ftp"):
        FunctionConfig().provider("ftp.archive")


# --------------------------------------------------------------------------------------------
# The user script


def test_script_env_first(secrets: Path) -> None:
    files = {OSCAR_SCRIPT_PATH: "oscar", "/cfg/f.yaml": "init_script: '#!/bin/sh\n'"}
    config = load(files, {"SCRIPT": b64("from env")}, path="/cfg/f.yaml", secrets_dir=secrets)
    assert (config.script, config.script_source) == (b"from env", "env SCRIPT")


def test_script_oscar_file_before_init_script() -> None:
    config = doc("init_script: '#!/bin/sh\necho init\n'", files={OSCAR_SCRIPT_PATH: "echo oscar\n"})
    assert (config.script, config.script_source) == (b"echo oscar\n", OSCAR_SCRIPT_PATH)


def test_script_empty_env_is_ignored() -> None:
    # SCAR's Batch job sets SCRIPT='' when the function has no init_script
    config = doc("init_script: /opt/run.sh", files={"/opt/run.sh": "run\n"}, environ={"SCRIPT": ""})
    assert (config.script, config.script_source) == (b"run\n", "init_script /opt/run.sh")


def test_script_init_script_relative_to_the_config_file() -> None:
    config = doc("init_script: scripts/run.sh", files={"/cfg/scripts/run.sh": "run\n"})
    assert config.script_source == "init_script /cfg/scripts/run.sh"


@pytest.mark.parametrize("text", ["#!/usr/bin/env python3\nprint('hi')\n", "echo one\necho two\n", "#!/bin/sh"])
def test_script_init_script_inline_text(text: str) -> None:
    config = doc(f"init_script: {json.dumps(text)}")
    assert (config.script, config.script_source) == (text.encode(), "init_script (inline)")


def test_script_init_script_missing_file_is_recorded_not_fatal() -> None:
    # a deepaas or darknet deployment needs no script, and a per-call event `script` overrides it
    config = load({LAMBDA_CONFIG_PATH: "init_script: run.sh"}, platform=Platform.LAMBDA)
    assert (config.script, config.script_source) == (None, None)
    assert config.script_error is not None
    with pytest.raises(ConfigError) as err:
        config.require_script()
    message = str(err.value)
    assert "key 'init_script'" in message and LAMBDA_CONFIG_PATH in message and "/var/task/run.sh" in message
    assert config.redacted()["script"] == {"error": config.script_error}


def test_require_script() -> None:
    assert doc('init_script: "#!/bin/sh\\n"').require_script() == b"#!/bin/sh\n"
    with pytest.raises(ConfigError, match="no user script"):
        doc("name: n").require_script()


def test_script_bad_base64_names_script() -> None:
    with pytest.raises(ConfigError) as err:
        load(environ={"SCRIPT": "%%%not-base64"})
    assert err.value.context == {"key": "SCRIPT", "source": "env SCRIPT"}


def test_script_none_anywhere() -> None:
    assert (doc("name: n").script, doc("name: n").script_source) == (None, None)


def test_script_bytes_survive_the_default_reader(tmp_path: Path) -> None:
    raw = b"#!/bin/sh\necho caf\xe9 \xff\n"  # not UTF-8
    (tmp_path / "run.sh").write_bytes(raw)
    (tmp_path / "f.yaml").write_text("init_script: run.sh\n")
    config = load_config({}, Platform.LOCAL, path=tmp_path / "f.yaml", secrets_dir=None)
    assert config.script == raw


def test_oscar_script_key_one_liner_is_text() -> None:
    assert doc("script: echo hello world").script == b"echo hello world"


# --------------------------------------------------------------------------------------------
# Redaction and immutability

SECRETS = [
    "files-5ecr3t",
    "files-access",
    "ext-s3-5ecr3t",
    "AKIAEXTERNALKEY000",
    "onedata-5ecr3t-token",
    "dcache-5ecr3t-pass",
    "deepaas-5ecr3t-key",
    "tok-5ecr3t-env",
    "fdl-minio-5ecr3t",
    "script-body-marker",
]


def everything_config(secrets: Path) -> FunctionConfig:
    write_minio_secrets(secrets)
    text = """
name: all-secrets
init_script: "#!/bin/sh\\necho script-body-marker\\n"
container: {environment: {Variables: {MODEL_API_TOKEN: tok-5ecr3t-env, PLAIN: visible}}}
storage_providers:
  s3: {external: {access_key: AKIAEXTERNALKEY000, secret_key: ext-s3-5ecr3t}}
  minio: {my_minio: {endpoint: 'https://m', access_key: fdl-minio-access, secret_key: fdl-minio-5ecr3t}}
  onedata: {od: {oneprovider_host: h, token: onedata-5ecr3t-token, space: s}}
  webdav: {dcache: {hostname: d, login: me, password: dcache-5ecr3t-pass}}
conveyor:
  handler: {name: deepaas, api_key: deepaas-5ecr3t-key, nested: {token: deepaas-5ecr3t-key}, model: m}
"""
    return doc(text, secrets_dir=secrets)


def test_redacted_holds_no_secret(secrets: Path) -> None:
    config = everything_config(secrets)
    dumped = json.dumps(config.redacted())
    for value in SECRETS:
        assert value not in dumped
    assert "***" in dumped
    red = config.redacted()
    assert red["storage_providers"]["minio.default"]["secret_key"] == "***"
    assert red["storage_providers"]["webdav.dcache"]["login"] == "me"
    assert red["environment"] == {"MODEL_API_TOKEN": "***", "PLAIN": "visible"}
    assert red["conveyor"]["handler"]["options"] == {"api_key": "***", "nested": {"token": "***"}, "model": "m"}
    assert red["script"] == {"length": len(config.script or b""), "source": "init_script (inline)"}
    assert red["init_script"].startswith("<inline script")


def test_redacted_shows_which_keys_are_set(secrets: Path) -> None:
    red = doc("storage_providers: {s3: {default: {region: r}}}", secrets_dir=secrets).redacted()
    assert "access_key" not in red["storage_providers"]["s3.default"]
    assert red["storage_providers"]["s3.default"]["credentials"] is None


@pytest.mark.parametrize(
    "name",
    ["scar_lambda_function_config.yaml", "oscar_function_config.yaml", "conveyor_additions.yaml"],
)
def test_redacted_fixtures_are_json_and_secret_free(name: str, secrets: Path) -> None:
    write_minio_secrets(secrets)
    files = {"/var/task/f.yaml": fixture(name), "/var/task/yolo.sh": "yolo\n"}
    dumped = json.dumps(load(files, path="/var/task/f.yaml", secrets_dir=secrets).redacted())
    for value in SECRETS:
        assert value not in dumped


def test_config_is_frozen(secrets: Path) -> None:
    config = everything_config(secrets)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.environment["X"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.providers["s3.x"] = StorageProvider(ProviderRef("s3", "x"))  # type: ignore[index]
    with pytest.raises(TypeError):
        config.conveyor.handler.options["x"] = 1  # type: ignore[index]
    assert isinstance(config.inputs, tuple) and isinstance(config.bucket_list, tuple)


def test_repr_holds_no_secret(secrets: Path) -> None:
    config = everything_config(secrets)
    text = repr(config)
    for value in ("files-5ecr3t", "ext-s3-5ecr3t", "onedata-5ecr3t-token", "dcache-5ecr3t-pass"):
        assert value not in text


IMAGE_DEFAULTS = "conveyor:\n  handler:\n    name: darknet\n    backend: opencv\n  timeout: 60\n"


def test_image_defaults_supply_conveyor_settings_an_unchanged_definition_lacks() -> None:
    oscar_fdl = "name: yolo\ninput:\n- storage_provider: minio.default\n  path: yolo/in\n"
    config = doc(oscar_fdl, files={"/etc/conveyor/defaults.yaml": IMAGE_DEFAULTS})
    assert config.conveyor.handler.name == "darknet"
    assert dict(config.conveyor.handler.options) == {"backend": "opencv"}
    assert config.conveyor.timeout == 60


def test_the_definition_wins_over_image_defaults() -> None:
    own = "name: yolo\nconveyor:\n  handler: script\n  timeout: 5\n"
    config = doc(own, files={"/etc/conveyor/defaults.yaml": IMAGE_DEFAULTS})
    assert config.conveyor.handler.name == "script"
    assert config.conveyor.timeout == 5


def test_image_defaults_from_another_file_and_their_errors_name_that_file() -> None:
    config = doc("name: f\n", files={"/opt/img.yaml": IMAGE_DEFAULTS}, environ={"CONVEYOR_DEFAULTS": "/opt/img.yaml"})
    assert config.conveyor.handler.name == "darknet"
    with pytest.raises(ConfigError, match=r"/opt/missing\.yaml"):
        doc("name: f\n", environ={"CONVEYOR_DEFAULTS": "/opt/missing.yaml"})
    with pytest.raises(ConfigError, match=r"/opt/bad\.yaml") as err:
        doc("name: f\n", files={"/opt/bad.yaml": "conveyor:\n  timeout: soon\n"},
            environ={"CONVEYOR_DEFAULTS": "/opt/bad.yaml"})
    assert "timeout" in str(err.value)


# --------------------------------------------------------------------------------------------
# Key case: OSCAR's API reads a service's keys whatever their case (Go's encoding/json); SCAR does not


def test_oscar_service_environment_capital_variables() -> None:
    """10 of OSCAR's example definitions write `environment: {Variables: ...}`; OSCAR reads them."""
    text = """
name: cowsay
script: "echo moo\\n"
environment:
  Variables: {INPUT_TYPE: json, SEND_SNS: false}
"""
    assert dict(doc(text).environment) == {"INPUT_TYPE": "json", "SEND_SNS": "false"}


def test_oscar_cli_definition_keys_in_any_case(secrets: Path) -> None:
    text = """
functions:
  oscar:
  - my-cluster:
      Name: cowsay
      Log_Level: critical
      Script: "echo moo\\n"
      Environment:
        Variables: {INPUT_TYPE: json, SHARED: capital}
        variables: {B: two, SHARED: lower}
      Output:
      - {Storage_Provider: minio.store, Path: results/out, Suffix: [.txt]}
storage_providers:
  minio: {store: {endpoint: 'https://m', access_key: a, secret_key: s}}
"""
    config = doc(text, secrets_dir=secrets)
    assert (config.name, config.log_level, config.script) == ("cowsay", "CRITICAL", b"echo moo\n")
    # both spellings fill one map, in document order, as Go's decoder does
    assert dict(config.environment) == {"INPUT_TYPE": "json", "SHARED": "lower", "B": "two"}
    assert config.outputs == (IOSpec(ProviderRef("minio", "store"), "results/out", suffix=(".txt",)),)


def test_oscar_service_providers_keys_in_any_case(secrets: Path) -> None:
    text = """
name: svc
Storage_Providers:
  MinIO: {store: {Endpoint: 'https://m', Access_Key: acc, Secret_Key: sec}}
Input: [{storage_provider: minio.store, path: in}]
"""
    provider = doc(text, secrets_dir=secrets).provider("minio.store")
    assert (provider.endpoint, provider.access_key, provider.secret_key) == ("https://m", "acc", "sec")


def test_exact_spelling_wins_over_another_case() -> None:
    assert doc("Name: upper\nname: lower\n").name == "lower"
    assert doc("name: lower\nName: upper\n").name == "lower"


def test_names_under_the_keys_keep_their_case() -> None:
    config = doc("name: s\nenvironment: {Variables: {Path_Prefix: a, path_prefix: b}}\n")
    assert dict(config.environment) == {"Path_Prefix": "a", "path_prefix": "b"}


def test_scar_shapes_are_read_as_spelled() -> None:
    """SCAR (and faas-supervisor) read `container.environment.Variables` exactly; the flat lambda section's
    own `environment.Variables` is the Lambda function's environment (UDOCKER_DIR ...), never the script's."""
    text = """
name: scar-fn
container: {environment: {Variables: {A: "1"}, variables: {NOT_READ: x}}}
environment: {Variables: {UDOCKER_DIR: /tmp/shared/udocker}}
"""
    assert dict(doc(text).environment) == {"A": "1"}


def test_oscar_service_token_in_the_definition_is_redacted() -> None:
    config = doc("name: s\nenvironment: {Variables: {OSCAR_SERVICE_TOKEN: tok-5ecr3t-oscar, PLAIN: v}}\n")
    assert config.environment["OSCAR_SERVICE_TOKEN"] == "tok-5ecr3t-oscar"  # the script gets it ...
    dumped = json.dumps(config.redacted())
    assert "tok-5ecr3t-oscar" not in dumped  # ... `conveyor inspect` does not show it
    assert config.redacted()["environment"] == {"OSCAR_SERVICE_TOKEN": "***", "PLAIN": "v"}


# --------------------------------------------------------------------------------------------
# conveyor.script_shell


def test_script_shell_defaults_to_sh() -> None:
    assert doc("name: s\n").conveyor.script_shell == "sh"
    assert doc("name: s\n").redacted()["conveyor"]["script_shell"] == "sh"


@pytest.mark.parametrize(("value", "expected"), [("shebang", "shebang"), ("Shebang", "shebang"), ("sh", "sh")])
def test_script_shell_values(value: str, expected: str) -> None:
    assert doc(f"name: s\nconveyor: {{script_shell: {value}}}\n").conveyor.script_shell == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [("bash", "must be one of sh, shebang"), ("/bin/bash", "must be one of sh, shebang"), ("true", "not a boolean")],
)
def test_script_shell_other_values_name_the_key(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        doc(f"name: s\nconveyor: {{script_shell: {value}}}\n")
    assert "key 'conveyor.script_shell'" in str(info.value)
    assert says in str(info.value)
