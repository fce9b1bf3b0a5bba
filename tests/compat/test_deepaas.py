"""Issue 15, item 6: a DEEPaaS model that takes several files (the ai4os demo app's shape: required
image, audio and video file arguments, an int with a range), run through `conveyor run` as OSCAR runs
a service: the event on stdin, the definition through --config. The record's input goes to `image`,
the definition's `args` name the audio and video files the image ships with (absolute paths, as in an
image). Warm mode (in-process) and cli mode (deepaas-cli) give the same bytes; an argument the model's
schema refuses is the same configuration error (exit 78) in both, before the model runs.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.support.pipeline import body, keys, oscar_event, records

pytest.importorskip("deepaas", reason="the deepaas extra is not installed")
pytestmark = [
    pytest.mark.filterwarnings("ignore:`Field` should not be instantiated"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:webargs"),
]

IMAGE = b"\x89PNG\r\n\x1a\n" + b"pixels" * 50
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 60


@pytest.fixture
def media(tmp_path):
    folder = tmp_path / "opt" / "media"
    folder.mkdir(parents=True)
    (folder / "song.wav").write_bytes(WAV)
    (folder / "clip.mp4").write_bytes(MP4)
    return {"audio": str(folder / "song.wav"), "video": str(folder / "clip.mp4")}


def facts(name: str, data: bytes, content_type: str) -> dict:
    return {"file_name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "content_type": content_type}


def handler(mode: str, **args) -> dict:
    return {"name": "deepaas", "mode": mode, "model": "conveyor-triple", "file_arg": "image", "args": args}


def test_three_files_same_bytes_in_warm_and_cli(deploy, s3_client, bucket, media):
    d = deploy(None)
    s3_client.put_object(Bucket=bucket, Key="in/holiday.png", Body=IMAGE)
    outputs = []
    for mode in ("warm", "cli"):
        d.definition["conveyor"]["handler"] = handler(mode, intensity=80, **media)
        proc = d.run(oscar_event(bucket, "in/holiday.png"))
        assert proc.returncode == 0, proc.stderr.decode()
        [record] = records(proc.stderr)
        assert record["status"] == "SUCCEEDED" and record["extra"]["deepaas"]["mode"] == mode
        assert keys(s3_client, bucket, "out/") == ["out/holiday.json"]
        outputs.append(body(s3_client, bucket, "out/holiday.json"))
        s3_client.delete_object(Bucket=bucket, Key="out/holiday.json")
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0]) == {
        "model": "conveyor-triple", "intensity": 80, "flavour": "plain",
        "image": facts("holiday.png", IMAGE, "image/png"),
        "audio": facts("song.wav", WAV, "audio/x-wav"),
        "video": facts("clip.mp4", MP4, "video/mp4"),
    }


@pytest.mark.parametrize(
    ("args", "key", "said"),
    [
        ({"intensity": 500}, "intensity", "Must be greater than or equal to 1 and less than or equal to 100."),
        ({"video": "/no/such/clip.mp4"}, "video", "file argument 'video' does not exist: /no/such/clip.mp4"),
    ],
)
def test_refused_args_are_the_same_config_error_in_warm_and_cli(deploy, s3_client, bucket, media, args, key, said):
    d = deploy(None)
    s3_client.put_object(Bucket=bucket, Key="in/holiday.png", Body=IMAGE)
    errors = []
    for mode in ("warm", "cli"):
        d.definition["conveyor"]["handler"] = handler(mode, **{**media, **args})
        proc = d.run(oscar_event(bucket, "in/holiday.png"))
        assert proc.returncode == 78, proc.stderr.decode()
        [record] = records(proc.stderr)
        assert record["status"] == "FAILED" and record["error"]["kind"] == "config"
        assert f"conveyor.handler.args.{key}" in record["error"]["message"]
        assert said in record["error"]["message"]
        assert said in proc.stderr.decode()  # the one-line error a user reads in the job's log
        errors.append(record["error"]["message"])
        assert keys(s3_client, bucket, "out/") == []
    assert errors[0] == errors[1]
