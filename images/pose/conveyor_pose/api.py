"""conveyor-pose: human body pose estimation with MediaPipe Pose, as a DEEPaaS v2 model.

The network is BlazePose (GHUM) "full", i.e. MediaPipe's `model_complexity=1`, and its person
detector: both .tflite files ship inside the `mediapipe==0.10.21` wheel, so nothing is fetched
at run time. (model_complexity 0 and 2 would download pose_landmark_lite/heavy.tflite on first
use, and mediapipe 0.10.30 and later no longer ship these files nor the `solutions` API.)

As the DEEP Open Catalog's posenet, the default answer is a ZIP of the keypoints as JSON and the
image with the skeleton drawn on it (PNG, the input's size); `accept` asks for either alone:

    application/zip (default)  <stem>.json + <stem>.png
    application/json           the keypoints
    image/png                  the annotated image

The keypoints, one pose (MediaPipe Pose finds the most prominent person):

    {"status": "OK", "model": "...", "image": {"title": "runner.jpg", "width": 640, "height": 424},
     "predictions": [{"score": 0.93, "keypoints": [
         {"id": 0, "part": "nose", "score": 0.999, "position": {"x": 239.4, "y": 128.3},
          "normalized": {"x": 0.374, "y": 0.303, "z": -0.41}, "visibility": 0.999, "presence": 0.998},
         ...33 parts]}]}

`score` of a keypoint is MediaPipe's visibility (how likely it is in view, not occluded); a pose's
score is the mean over its keypoints. No person found: "predictions" is empty and the PNG is the
plain image. DEEPaaS v2 interface: get_metadata(), warm(), get_predict_args(), get_train_args(),
predict(**kw); predict_data() for deepaas-predict 2.6.0. The graph is built by warm(), or by the
first predict() when nobody called warm() (deepaas-cli).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import threading
import zipfile

from webargs import fields, validate

MODEL_COMPLEXITY = 1  # the only one whose weights are in the wheel
MEDIA_TYPES = ("application/zip", "application/json", "image/png")
MODEL_LABEL = "MediaPipe Pose 0.10.21 (BlazePose GHUM full, model_complexity=1)"

_lock = threading.Lock()
_graphs: dict[float, object] = {}  # min_detection_confidence -> mediapipe Pose


def get_metadata():
    return {
        "name": "conveyor-pose",
        "description": "Human body pose (33 keypoints) with MediaPipe Pose: keypoints as JSON and the "
                       "annotated image, in a ZIP.",
        "author": "Conveyor",
        "license": "Apache-2.0 (code and models: mediapipe)",
        "version": "0.1.0",
        "model": MODEL_LABEL,
    }


def get_predict_args():
    return {
        # A plain fields.Field: deepaas-cli only recognises a file argument of exactly that type.
        "image": fields.Field(
            required=True,
            metadata={"type": "file", "location": "form", "description": "An image with a person in it."},
        ),
        "min_detection_confidence": fields.Float(
            load_default=0.5,
            validate=validate.Range(min=0.0, max=1.0),
            metadata={"description": "Person detector threshold: below it, no pose is reported."},
        ),
        "accept": fields.Str(
            load_default="application/zip",
            validate=validate.OneOf(list(MEDIA_TYPES)),
            metadata={"location": "headers", "description": "Media type of the result."},
        ),
    }


def get_train_args():
    return {}  # deepaas-cli 2.6.0 calls this on every start, even to predict


def warm():
    import numpy as np

    _estimate(np.zeros((64, 64, 3), np.uint8), 0.5)  # builds the graph and runs the detector once


def predict(**kwargs):
    upload = kwargs["image"]
    accept = kwargs.get("accept") or "application/zip"
    threshold = float(kwargs.get("min_detection_confidence", 0.5))
    name = os.path.basename(getattr(upload, "original_filename", None) or upload.filename)
    stem = os.path.splitext(name)[0] or "image"
    import cv2

    image = cv2.imread(upload.filename, cv2.IMREAD_COLOR)  # BGR; EXIF orientation applied
    if image is None:
        raise ValueError(f"{name} is not an image OpenCV can read")
    keypoints, landmarks = _estimate(image, threshold)
    height, width = image.shape[:2]
    result = {
        "status": "OK",
        "model": MODEL_LABEL,
        "image": {"title": name, "width": width, "height": height},
        "predictions": [keypoints] if keypoints else [],
    }
    if accept == "application/json":
        return result
    png = _annotated_png(image, landmarks)
    if accept == "image/png":
        return io.BytesIO(png)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{stem}.json", json.dumps(result, indent=2))
        zf.writestr(f"{stem}.png", png)
    buf.seek(0)
    return buf


def predict_data(data):
    """deepaas-predict 2.6.0 calls this with {"files": [UploadedFile], "accept": TYPE}.

    It copies a returned file by its name (it cannot take a BytesIO), so a file result is handed
    back as an open temporary file.
    """
    result = predict(image=data["files"][0], accept=data.get("accept") or "application/zip")
    if not isinstance(result, io.BytesIO):
        return result
    suffix = ".png" if data.get("accept") == "image/png" else ".zip"
    fd, path = tempfile.mkstemp(prefix="conveyor-pose-", suffix=suffix)
    with os.fdopen(fd, "wb") as out:
        out.write(result.getbuffer())
    return open(path, "rb")


def predict_url(data):
    raise NotImplementedError("conveyor-pose takes files, not URLs")


# --- internals ------------------------------------------------------------------------------------


def _graph(threshold):
    """One MediaPipe Pose graph per detector threshold, built once (static images: no tracking)."""
    key = round(threshold, 3)
    with _lock:
        graph = _graphs.get(key)
        if graph is None:
            # mediapipe's import and graph set-up print nothing to stdout today, but its
            # download helper print()s: keep stdout clean (in-process, it is Conveyor's response).
            with contextlib.redirect_stdout(sys.stderr):
                import mediapipe as mp

                graph = mp.solutions.pose.Pose(
                    static_image_mode=True,
                    model_complexity=MODEL_COMPLEXITY,
                    enable_segmentation=False,
                    min_detection_confidence=key,
                )
            _graphs[key] = graph
        return graph


def _estimate(image_bgr, threshold):
    import cv2
    import mediapipe as mp

    graph = _graph(threshold)
    with _lock:  # a graph processes one image at a time
        found = graph.process(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
    landmarks = found.pose_landmarks
    if landmarks is None:
        return None, None
    height, width = image_bgr.shape[:2]
    parts = [p.name.lower() for p in mp.solutions.pose.PoseLandmark]
    keypoints = []
    for index, lm in enumerate(landmarks.landmark):
        point = {
            "id": index,
            "part": parts[index],
            "score": round(lm.visibility, 4),
            "position": {"x": round(lm.x * width, 1), "y": round(lm.y * height, 1)},
            "normalized": {"x": round(lm.x, 4), "y": round(lm.y, 4), "z": round(lm.z, 4)},
            "visibility": round(lm.visibility, 4),
        }
        if lm.HasField("presence"):
            point["presence"] = round(lm.presence, 4)
        keypoints.append(point)
    score = sum(k["score"] for k in keypoints) / len(keypoints)
    return {"score": round(score, 4), "keypoints": keypoints}, landmarks


def _annotated_png(image_bgr, landmarks):
    import cv2

    canvas = image_bgr.copy()
    if landmarks is not None:
        import mediapipe as mp

        drawing = mp.solutions.drawing_utils
        size = max(2, round(max(canvas.shape[:2]) / 250))
        drawing.draw_landmarks(
            canvas,
            landmarks,
            mp.solutions.pose.POSE_CONNECTIONS,
            landmark_drawing_spec=drawing.DrawingSpec(color=(0, 0, 255), thickness=size, circle_radius=size),
            connection_drawing_spec=drawing.DrawingSpec(color=(255, 255, 255), thickness=size),
        )
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        raise RuntimeError("OpenCV could not encode the annotated image as PNG")
    return png.tobytes()
