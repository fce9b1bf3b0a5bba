"""conveyor.handlers.script with real processes and scripts written the way SCAR/OSCAR users write them."""

from __future__ import annotations

import base64
import logging
import os
import sys
import threading
import uuid
from pathlib import Path

import pytest

from conveyor.config import ConveyorSettings, FunctionConfig, HandlerSpec
from conveyor.deadline import Deadline
from conveyor.errors import ConfigError, HandlerError, HandlerTimeout
from conveyor.events import Event, ObjectRef
from conveyor.handler import Invocation, handler_class, load_handler
from conveyor.handlers.script import ScriptHandler, _shebang, _shell_name

SCRIPTS = Path(__file__).parent / "scripts"
LOGGER = "test.script"
# The venv's bin first, so `#!/usr/bin/env python3` finds this interpreter.
PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])


def script(name: str) -> bytes:
    return (SCRIPTS / name).read_bytes()


def config(
    script_bytes: bytes | None = None, source: str | None = None, script_shell: str = "sh", **options
) -> FunctionConfig:
    return FunctionConfig(
        script=script_bytes,
        script_source=source if source or script_bytes is None else "env SCRIPT",
        conveyor=ConveyorSettings(handler=HandlerSpec(name="script", options=options), script_shell=script_shell),
    )


def handler(script_bytes: bytes | None = None, script_shell: str = "sh", **options) -> ScriptHandler:
    h = ScriptHandler(config(script_bytes, script_shell=script_shell), options)
    h.ensure_setup()
    return h


@pytest.fixture
def invocation(tmp_path):
    """Builds one record's Invocation the way the pipeline does: fresh dirs and a fresh env."""

    def _make(*, event=None, extra_env=None, key="in/photo.jpg", data=b"hello model\n", deadline=10.0):
        root = tmp_path / uuid.uuid4().hex[:8]
        input_dir, output_dir, work_dir = root / "input", root / "output", root / "work"
        for d in (input_dir, output_dir, work_dir):
            d.mkdir(parents=True)
        input_path = input_dir / Path(key).name
        input_path.write_bytes(data)
        env = {
            "PATH": PATH,
            "INPUT_FILE_PATH": str(input_path),
            "TMP_INPUT_DIR": str(input_dir),
            "TMP_OUTPUT_DIR": str(output_dir),
            "STORAGE_OBJECT_KEY": key,
            "EVENT": "{}",
            **(extra_env or {}),
        }
        return Invocation(
            input=ObjectRef(bucket="bucket", key=key),
            input_path=input_path,
            input_dir=input_dir,
            output_dir=output_dir,
            work_dir=work_dir,
            env=env,
            deadline=Deadline.after(deadline),
            log=logging.getLogger(LOGGER),
            log_file=root / "model.log",
            shutdown=threading.Event(),
            event=event,
            request_id="req-1",
            grace_period=0.5,
        )

    return _make


def scar_event(script_bytes: bytes | None = None, cmd_args: tuple[str, ...] | None = None) -> Event:
    return Event(inputs=(), raw={}, kind="storage", script=script_bytes, cmd_args=cmd_args)


def outputs(inv: Invocation) -> dict[str, str]:
    return {p.name: p.read_text() for p in inv.output_dir.rglob("*") if p.is_file()}


def test_registered_as_the_script_handler():
    assert handler_class("script") is ScriptHandler
    assert isinstance(load_handler(config()), ScriptHandler)


def test_scar_style_script_copies_the_input(invocation, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    inv = invocation()
    result = handler(script("scar_copy.sh")).handle(inv)
    assert result.exit_code == 0
    assert outputs(inv) == {"photo.jpg": "hello model\n"}
    assert result.stdout_path is not None and result.stdout_path.read_text() == "done\n"
    assert result.stdout_path.parent == inv.work_dir
    assert "in/photo.jpg" in inv.log_file.read_text()  # stderr went to the log file ...
    assert any(r.getMessage().startswith("model: SCRIPT: Invoked") for r in caplog.records)  # ... and the log
    assert result.details["script_source"] == "env SCRIPT"
    # its #!/bin/bash line: run as faas-supervisor runs it, by /bin/sh
    assert any(r.getMessage().startswith("running script.sh (env SCRIPT) with /bin/sh (its #! names bash;")
               for r in caplog.records)


def test_script_file_is_private_to_the_record(invocation):
    inv = invocation()
    handler(script("scar_copy.sh")).handle(inv)
    written = inv.work_dir / "script.sh"
    assert written.read_bytes() == script("scar_copy.sh")
    assert written.stat().st_mode & 0o777 == 0o700
    assert "script.sh" not in os.listdir(inv.input_dir)  # scripts listing TMP_INPUT_DIR see only the input


def test_python_shebang_script(invocation):
    inv = invocation(data=b"shout\n", key="docs/note.txt")
    result = handler(script("upper.py")).handle(inv)
    assert outputs(inv) == {"note.upper.txt": "SHOUT\n"}
    assert result.stdout_path.read_text() == "no-args\n"


def test_script_without_shebang_runs_under_bin_sh(invocation):
    inv = invocation()
    result = handler(script("no_shebang.sh")).handle(inv)
    assert outputs(inv)["shell.txt"].strip() == os.path.realpath("/bin/sh")
    assert result.stdout_path.read_text() == "args: \n"


def test_darknet_style_script_resolves_relative_paths_in_the_workers_directory(invocation, tmp_path, monkeypatch):
    image_workdir = tmp_path / "opt" / "darknet"
    (image_workdir / "cfg").mkdir(parents=True)
    (image_workdir / "cfg" / "yolo.cfg").write_text("[net]\n")
    darknet = image_workdir / "darknet"
    darknet.write_text(
        '#!/bin/sh\n# fake darknet: detect CFG WEIGHTS IMAGE -out NAME\n'
        'test -f "$2" || { echo "no $2" >&2; exit 1; }\n'
        'cp "$4" "$6.jpg"; echo "dog: 99%"\n'
    )
    darknet.chmod(0o755)
    monkeypatch.chdir(image_workdir)  # the image's WORKDIR, inherited as under faas-supervisor
    inv = invocation(key="images/dog.jpg", data=b"JPEG")
    handler(script("darknet_style.sh")).handle(inv)
    assert outputs(inv) == {"dog.jpg": "JPEG", "dog.out": "dog: 99%\n"}


def test_cwd_option(invocation, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    inv = invocation()
    result = handler(b"#!/bin/sh\npwd -P\n", cwd=str(target)).handle(inv)
    assert result.stdout_path.read_text().strip() == str(target.resolve())


def test_event_script_overrides_the_configured_script(invocation):
    inv = invocation(event=scar_event(b"#!/bin/sh\necho from-event\n"))
    result = handler(b"#!/bin/sh\necho from-config\n").handle(inv)
    assert result.stdout_path.read_text() == "from-event\n"
    assert result.details["script_source"] == "event script"


def test_cmd_args_are_the_scripts_arguments(invocation):
    inv = invocation(event=scar_event(script("upper.py"), cmd_args=("--threshold", "0.5", "two words")))
    result = handler().handle(inv)
    assert result.stdout_path.read_text() == "--threshold 0.5 two words\n"


def test_cmd_args_are_passed_to_the_configured_script_too(invocation):
    inv = invocation(event=scar_event(cmd_args=("a", "b")))
    result = handler(script("no_shebang.sh")).handle(inv)
    assert result.stdout_path.read_text() == "args: a b\n"


def test_cmd_args_without_a_script_are_the_command(invocation):
    inv = invocation(event=scar_event(cmd_args=("/bin/sh", "-c", 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/copy.bin"')))
    result = handler().handle(inv)
    assert outputs(inv) == {"copy.bin": "hello model\n"}
    assert result.details["script_source"] == "event cmd_args"


def test_command_option_as_a_list(invocation):
    inv = invocation(event=scar_event(cmd_args=("extra",)))
    result = handler(b"#!/bin/sh\necho config-script\n", command=["/bin/echo", "fixed"]).handle(inv)
    assert result.stdout_path.read_text() == "fixed extra\n"


def test_command_option_as_a_shell_string(invocation):
    inv = invocation(event=scar_event(cmd_args=("x", "y")))
    result = handler(command='echo "key=$STORAGE_OBJECT_KEY args=$*"').handle(inv)
    assert result.stdout_path.read_text() == "key=in/photo.jpg args=x y\n"


@pytest.mark.parametrize("bad", [[], "", ["ok", {"no": 1}], 42])
def test_bad_command_option_fails_at_start_up(bad):
    with pytest.raises(ConfigError, match=r"conveyor\.handler\.options\.command"):
        ScriptHandler(config(), {"command": bad})


def test_no_script_anywhere_is_a_config_error(invocation):
    with pytest.raises(ConfigError) as info:
        handler().handle(invocation(event=scar_event()))
    for source in ("'script'", "env SCRIPT", "/oscar/config/script.sh", "init_script", "cmd_args"):
        assert source in info.value.message


def test_exit_code_3_is_a_handler_error_with_the_code(invocation):
    inv = invocation()
    with pytest.raises(HandlerError) as info:
        handler(script("exit3.sh")).handle(inv)
    err = info.value
    assert type(err) is HandlerError
    assert err.message == "script exited with code 3"
    assert err.context["exit_code"] == 3
    assert err.to_dict()["exit_code"] == 3
    assert "model failed on purpose" in inv.log_file.read_text()


def test_signal_death_is_explained(invocation):
    with pytest.raises(HandlerError, match=r"code 137 \(killed by SIGKILL\)"):
        handler(b"#!/bin/sh\nkill -9 $$\n").handle(invocation())


def test_hanging_script_times_out(invocation):
    inv = invocation(deadline=1.0)
    with pytest.raises(HandlerTimeout):
        handler(b"#!/bin/sh\nsleep 300\n").handle(inv)


def test_missing_interpreter_is_named(invocation):
    with pytest.raises(HandlerError, match=r"interpreter '/no/such/python'"):
        handler(b"#!/no/such/python\nprint(1)\n").handle(invocation())


def test_windows_line_endings_are_diagnosed(invocation):
    with pytest.raises(HandlerError, match="CRLF"):
        handler(b"#!/bin/sh\r\necho hi\r\n").handle(invocation())


def test_warm_invocations_do_not_share_environment(invocation):
    h = handler(script("env_probe.sh"))
    first = invocation(extra_env={"FOO": "1", "BAR": "first"}, key="a/one.txt")
    second = invocation(key="b/two.txt")
    assert h.handle(first).stdout_path.read_text() == "FOO=1 BAR=first KEY=a/one.txt\n"
    assert h.handle(second).stdout_path.read_text() == "FOO=unset BAR=unset KEY=b/two.txt\n"
    assert "FOO" not in os.environ and "FOO" not in second.env


def test_warm_invocations_do_not_share_the_event_script(invocation):
    h = handler(b"#!/bin/sh\necho configured\n")
    with_script = invocation(event=scar_event(b"#!/bin/sh\necho per-call\n"))
    without = invocation(event=scar_event())
    assert h.handle(with_script).stdout_path.read_text() == "per-call\n"
    assert h.handle(without).stdout_path.read_text() == "configured\n"


def test_base64_script_round_trip_from_env_script(invocation):
    """What the config loader hands over from env SCRIPT is the decoded script bytes."""
    encoded = base64.b64encode(script("scar_copy.sh")).decode()
    inv = invocation()
    handler(base64.b64decode(encoded)).handle(inv)
    assert "photo.jpg" in outputs(inv)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"#!/bin/bash\n", ["/bin/bash"]),
        (b"#! /usr/bin/env python3\n", ["/usr/bin/env", "python3"]),
        (b"#!/usr/bin/env -S python3 -u\n", ["/usr/bin/env", "-S python3 -u"]),
        (b"#!/bin/sh\r\n", ["/bin/sh\r"]),
        (b"echo no shebang\n", None),
    ],
)
def test_shebang_is_split_like_linux(line, expected):
    assert _shebang(line) == expected


# --------------------------------------------------------------------------------------------
# Which program runs the script: /bin/sh for a shell #! (as faas-supervisor), its #! for anything else

SHELL_PROBE = b'readlink /proc/$$/exe > "$TMP_OUTPUT_DIR/shell.txt"\necho "\\nAnalysis:"\n'
BIN_SH = os.path.realpath("/bin/sh")
BASH = os.path.realpath("/bin/bash")


def ran_with(inv: Invocation) -> str:
    return (inv.output_dir / "shell.txt").read_text().strip()


def interpreter_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("running ")]


@pytest.mark.parametrize("line", [b"#!/bin/bash\n", b"#!/usr/bin/env bash\n", b"#! /bin/bash -e\n", b"#!/bin/dash\n"])
def test_a_shell_shebang_runs_under_bin_sh_by_default(invocation, caplog, line):
    caplog.set_level(logging.INFO, logger=LOGGER)
    inv = invocation()
    result = handler(line + SHELL_PROBE).handle(inv)
    assert ran_with(inv) == BIN_SH
    # dash's echo turns \n into a newline; bash's would print it as is
    expected = b"\nAnalysis:\n" if BIN_SH.endswith("dash") else b"\\nAnalysis:\n"
    assert result.stdout_path.read_bytes() == expected
    [message] = interpreter_lines(caplog)
    assert message.startswith("running script.sh (env SCRIPT) with /bin/sh (its #! names ")
    assert "faas-supervisor runs scripts with /bin/sh; set conveyor.script_shell: shebang to use" in message


def test_bash_shebang_message_says_how_to_get_bash(invocation, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    handler(b"#!/bin/bash\n" + SHELL_PROBE).handle(invocation())
    assert interpreter_lines(caplog) == [
        "running script.sh (env SCRIPT) with /bin/sh (its #! names bash; faas-supervisor runs scripts with"
        " /bin/sh; set conveyor.script_shell: shebang to use /bin/bash)"
    ]


def test_sh_shebang_message_has_no_hint(invocation, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    handler(b"#!/bin/sh\n" + SHELL_PROBE).handle(invocation())
    assert interpreter_lines(caplog) == [
        "running script.sh (env SCRIPT) with /bin/sh (its #! names sh; faas-supervisor runs scripts with /bin/sh)"
    ]


@pytest.mark.parametrize("line", [b"#!/bin/bash\n", b"#!/usr/bin/env bash\n"])
def test_script_shell_shebang_honours_a_shell_shebang(invocation, caplog, line):
    caplog.set_level(logging.INFO, logger=LOGGER)
    inv = invocation()
    result = handler(line + SHELL_PROBE, script_shell="shebang").handle(inv)
    assert ran_with(inv) == BASH
    assert result.stdout_path.read_bytes() == b"\\nAnalysis:\n"
    [message] = interpreter_lines(caplog)
    assert message.endswith("(its #! line, as conveyor.script_shell: shebang asks)")


def test_a_bash_only_script_works_with_script_shell_shebang(invocation):
    bash_only = b'#!/bin/bash\nif [[ "$STORAGE_OBJECT_KEY" == in/* ]]; then echo matched; fi\n'
    assert handler(bash_only, script_shell="shebang").handle(invocation()).stdout_path.read_text() == "matched\n"
    if BIN_SH.endswith("dash"):  # by default, as under faas-supervisor: dash has no [[, the test is false
        inv = invocation()
        assert handler(bash_only).handle(inv).stdout_path.read_text() == ""
        assert "[[: not found" in inv.log_file.read_text()


@pytest.mark.parametrize("script_shell", ["sh", "shebang"])
def test_another_interpreter_runs_its_script_either_way(invocation, caplog, script_shell):
    caplog.set_level(logging.INFO, logger=LOGGER)
    inv = invocation(data=b"shout\n", key="docs/note.txt")
    result = handler(script("upper.py"), script_shell=script_shell).handle(inv)
    assert outputs(inv) == {"note.upper.txt": "SHOUT\n"}
    assert result.stdout_path.read_text() == "no-args\n"
    assert interpreter_lines(caplog) == [
        "running script.sh (env SCRIPT) with /usr/bin/env python3 (its #! line names python3, not a shell)"
    ]


def test_no_shebang_is_logged(invocation, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    inv = invocation()
    handler(script("no_shebang.sh"), script_shell="shebang").handle(inv)
    assert outputs(inv)["shell.txt"].strip() == BIN_SH
    assert interpreter_lines(caplog) == ["running script.sh (env SCRIPT) with /bin/sh (it has no #! line)"]


@pytest.mark.parametrize(
    ("interpreter", "shell"),
    [
        (["/bin/sh"], "sh"),
        (["/bin/bash"], "bash"),
        (["/usr/bin/dash"], "dash"),
        (["/bin/ash"], "ash"),
        (["/usr/bin/env", "bash"], "bash"),
        (["/usr/bin/env", "-S bash -e"], "bash"),
        (["/usr/bin/env", "-S LC_ALL=C sh"], "sh"),
        (["/usr/bin/env", "-S -u bash python3"], None),
        (["/usr/bin/env", "-S -C /tmp bash"], "bash"),
        (["/bin/bash", "-e"], "bash"),
        (["/usr/bin/env", "python3"], None),
        (["/usr/bin/Rscript"], None),
        (["/usr/bin/perl", "-w"], None),
        (["/bin/zsh"], None),
        (["/bin/sh\r"], None),  # a CRLF script: exec'd, and its missing interpreter diagnosed
    ],
)
def test_which_shebangs_name_a_posix_shell(interpreter, shell):
    assert _shell_name(interpreter) == shell
