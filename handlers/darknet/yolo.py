"""darknet's YOLO maths, apart from the handler: its letterbox and resize, the decoding of OpenCV's YOLO
rows, non-maximum suppression, and the darknet CLI's printed detections (mirrors pjreddie/darknet
src/image.c and yolo_layer.c, so both backends find the same classes with the same probabilities)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

PAD_VALUE = 0.5  # darknet's letterbox fill


@dataclass(frozen=True)
class Detection:
    cls: str
    confidence: float
    box: tuple[int, int, int, int] | None = None  # x, y, w, h in pixels of the input image

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class": self.cls, "confidence": self.confidence}
        if self.box is not None:
            x, y, w, h = self.box
            out["box"] = {"x": x, "y": y, "w": w, "h": h}
        return out


@dataclass(frozen=True)
class BoxMap:
    """How network-relative box coordinates map back to the image (darknet's correct_yolo_boxes)."""

    net_w: int
    net_h: int
    new_w: int
    new_h: int


def letterbox_size(w: int, h: int, net_w: int, net_h: int) -> tuple[int, int]:
    import numpy as np

    if np.float32(net_w) / np.float32(w) < np.float32(net_h) / np.float32(h):
        return net_w, (h * net_w) // w
    return (w * net_h) // h, net_h


def letterbox_blob(image: "PILImage.Image", net_size: tuple[int, int]) -> tuple["np.ndarray", BoxMap]:
    """The NCHW float32 network input, made the way darknet's letterbox_image makes it: the image
    resized into the network's square (darknet_resize), centred on a PAD_VALUE border
    (cv2.copyMakeBorder), laid out as NCHW (cv2.dnn.blobFromImage)."""
    import cv2
    import numpy as np

    net_w, net_h = net_size
    w, h = image.size
    new_w, new_h = letterbox_size(w, h, net_w, net_h)
    new_w, new_h = max(1, new_w), max(1, new_h)
    resized = darknet_resize(np.asarray(image, dtype=np.uint8), new_w, new_h)
    top, left = (net_h - new_h) // 2, (net_w - new_w) // 2
    padded = cv2.copyMakeBorder(resized, top, net_h - new_h - top, left, net_w - new_w - left,
                                cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return cv2.dnn.blobFromImage(padded), BoxMap(net_w, net_h, new_w, new_h)


def darknet_resize(pixels: "np.ndarray", w: int, h: int) -> "np.ndarray":
    """darknet's resize_image of HxWx3 uint8 to h x w x 3 float32 in 0..1: bilinear with the corners
    aligned (the first and last pixels map onto each other), in float, equal to darknet's own to
    a rounding (2e-7), so both backends give the network the same input.

    Not cv2.resize nor cv2.warpAffine: cv2.resize maps pixel centres (every sample moves by up to
    half a source pixel), warpAffine and remap round each position to 1/32 of a pixel; on darknet's
    samples either moves confidences by up to 2 points. So: the rows needed, gathered whole
    (contiguous copies) and weighted, then the columns (np.take) and weighted, each multiply over
    rows of w*3 values: about 2 ms for a 768x576 photo (the column-by-column original took 9-12).
    """
    import numpy as np

    f32 = np.float32
    src_h, src_w = pixels.shape[:2]
    # rows: darknet takes (1 - dy) of row iy, and dy of row iy + 1 except on the last row
    h_scale = f32(src_h - 1) / f32(h - 1) if h > 1 else f32(0)
    sy = np.arange(h, dtype=f32) * h_scale
    iy = sy.astype(np.intp)
    dy = sy - iy.astype(f32)
    dy_next = np.where((np.arange(h) == h - 1) | (src_h == 1), f32(0), dy)
    iy1 = np.minimum(iy + 1, src_h - 1)
    # columns: the last column of the result is the source's last, whole
    w_scale = f32(src_w - 1) / f32(w - 1) if w > 1 else f32(0)
    sx = np.arange(w, dtype=f32) * w_scale
    ix = sx.astype(np.intp)
    last_col = (np.arange(w) == w - 1) | (src_w == 1)
    dx = np.where(last_col, f32(0), sx - ix.astype(f32))
    ix = np.where(last_col, src_w - 1, ix)
    ix1 = np.minimum(ix + 1, src_w - 1)

    rows = pixels[iy].astype(f32).reshape(h, src_w * 3)
    below = pixels[iy1].astype(f32).reshape(h, src_w * 3)
    rows *= ((f32(1) - dy) / f32(255))[:, None]  # 0..255 to darknet's 0..1 on the way
    below *= (dy_next / f32(255))[:, None]
    rows += below
    rows3 = rows.reshape(h, src_w, 3)
    out = np.take(rows3, ix, axis=1).reshape(h, w * 3)
    right = np.take(rows3, ix1, axis=1).reshape(h, w * 3)
    out *= np.repeat(f32(1) - dx, 3)
    right *= np.repeat(dx, 3)
    out += right
    return out.reshape(h, w, 3)


def decode_yolo(
    outputs: Sequence["np.ndarray"],
    box_map: BoxMap,
    image_size: tuple[int, int],
    names: Sequence[str],
    threshold: float,
    nms: float,
) -> list[Detection]:
    """OpenCV's YOLO rows [x, y, w, h, objectness, p(class)*objectness ...] -> detections, as darknet does."""
    import numpy as np

    rows = np.concatenate([np.asarray(o).reshape(-1, np.asarray(o).shape[-1]) for o in outputs])
    rows = rows[rows[:, 4] > threshold]
    if rows.size == 0:
        return []
    m = box_map
    x = (rows[:, 0] - (m.net_w - m.new_w) / 2.0 / m.net_w) / (m.new_w / m.net_w)
    y = (rows[:, 1] - (m.net_h - m.new_h) / 2.0 / m.net_h) / (m.new_h / m.net_h)
    bw = rows[:, 2] * (m.net_w / m.new_w)
    bh = rows[:, 3] * (m.net_h / m.new_h)
    probs = rows[:, 5:5 + len(names)]
    width, height = image_size
    detections = []
    above = probs > threshold
    for k in np.flatnonzero(above.any(axis=0)).tolist():  # the classes some row holds: a few of the 80
        candidates = np.flatnonzero(above[:, k])
        for i in _nms(x[candidates], y[candidates], bw[candidates], bh[candidates], probs[candidates, k], nms):
            j = candidates[i]
            left = max(0, int((x[j] - bw[j] / 2) * width))
            right = min(width - 1, int((x[j] + bw[j] / 2) * width))
            top = max(0, int((y[j] - bh[j] / 2) * height))
            bottom = min(height - 1, int((y[j] + bh[j] / 2) * height))
            detections.append(Detection(names[k], round(float(probs[j, k]), 4),
                                        (left, top, max(0, right - left), max(0, bottom - top))))
    return sort_detections(detections)


def _nms(x, y, w, h, scores, threshold: float) -> list[int]:
    """Greedy per-class NMS (darknet's do_nms_sort): indices kept, best first."""
    import numpy as np

    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    for pos, i in enumerate(order):
        if suppressed[pos]:
            continue
        kept.append(int(i))
        rest = order[pos + 1:]
        if rest.size == 0:
            break
        iw = np.minimum(x[i] + w[i] / 2, x[rest] + w[rest] / 2) - np.maximum(x[i] - w[i] / 2, x[rest] - w[rest] / 2)
        ih = np.minimum(y[i] + h[i] / 2, y[rest] + h[rest] / 2) - np.maximum(y[i] - h[i] / 2, y[rest] - h[rest] / 2)
        inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
        union = w[i] * h[i] + w[rest] * h[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        suppressed[pos + 1:] |= iou > threshold
    return kept


def sort_detections(detections: list[Detection]) -> list[Detection]:
    return sorted(detections, key=lambda d: (-d.confidence, d.cls, d.box or ()))


_DARKNET_LINE = re.compile(r"^(?P<cls>.+): (?P<pct>\d+(?:\.\d+)?)%$")


def parse_darknet_stdout(text: str, names: set[str] | None = None) -> list[Detection]:
    """darknet's `<class>: <pct>%` lines -> detections without boxes (other lines are ignored)."""
    detections = []
    for line in text.splitlines():
        match = _DARKNET_LINE.match(line.strip())
        if match is None or (names is not None and match["cls"] not in names):
            continue
        detections.append(Detection(match["cls"], round(float(match["pct"]) / 100, 4)))
    return sort_detections(detections)

