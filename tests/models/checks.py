"""What the example models' outputs must hold, shared by their venv tests (test_examples.py) and
their image tests (tests/images/test_platform_runs.py); and the inputs made here.

    DATA/astronaut.jpg   scikit-image's `astronaut()`, a NASA photo in the public domain
    song(seconds)        a synthetic bird-like song, WAV bytes
"""

from __future__ import annotations

import io
import json
import struct
import wave
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
PNG = b"\x89PNG\r\n\x1a\n"
DOGS = range(151, 269)  # ImageNet-1k: the dog breeds
BIRDS = {*range(7, 25), *range(80, 101), *range(127, 147)}  # ImageNet-1k: the birds


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


# --- pose ----------------------------------------------------------------------------------------


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


# --- classify ------------------------------------------------------------------------------------


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


# --- birds ---------------------------------------------------------------------------------------


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
