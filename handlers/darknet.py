"""The darknet handler: YOLO object detection on one image per record, in-process or with the darknet CLI.

    conveyor:
      handler:
        name: darknet
        backend: auto        # opencv | cli | auto (opencv when cv2 has readNetFromDarknet, else cli)
        threshold: 0.25      # report a class when its probability is above this
        nms: 0.45            # IoU above which a weaker box of the same class is dropped (opencv)
        cfg: ...             # default /usr/share/darknet/cfg/yolov3-tiny.cfg (Debian's darknet package)
        weights: ...         # a weights file; default <weights_dir>/yolov3-tiny.weights
        weights_dir: ...     # default /opt/conveyor/weights, then ~/.cache/conveyor/weights
        names: ...           # class names, one a line; default /usr/share/darknet/data/coco.names
        input_size: 416      # network input side (opencv); the CLI uses the cfg's width/height
        max_pixels: 100000000  # larger images are refused before they are decoded
        max_side: 4096       # larger images are scaled down (aspect kept) before inference and drawing
        darknet: darknet     # the CLI binary (a path, or a name looked up on the record's PATH)

Per input `<stem>.<ext>` it writes two files to the output dir, whatever the backend:
  <stem>.json  [{"class": "dog", "confidence": 0.56, "box": {"x": 131, "y": 223, "w": 178, "h": 316}}, ...]
               one entry per (box, class) above the threshold, highest confidence first; boxes in
               pixels of the input image (top-left corner, width, height). The CLI prints no boxes,
               so its entries have class and confidence only (confidence to the percent it prints).
  <stem>.jpg   the image annotated with boxes and labels: .jpg when the input is a JPEG, else .png,
  <stem>.png   of the input's size (of the scaled-down image when the input exceeds max_side).

Backends
  opencv  cv2.dnn.readNetFromDarknet (opencv-python-headless < 5: OpenCV 5 removed the darknet
          importer). The network is loaded once, in setup(), and kept for every record. The
          image is prepared exactly as darknet does it (letterbox, darknet's own bilinear
          resize, grey 0.5 padding), so both backends find the same classes with the same
          probabilities. OpenCV's YOLO layer zeroes class scores <= 0.2, so this backend needs
          threshold >= 0.2 (auto picks cli below that). The deadline and the shutdown event are
          checked before decoding and before inference; one inference is not interruptible
          (about 60 ms for yolov3-tiny, the first one about 0.5 s).
  cli     `darknet detector test DATA CFG WEIGHTS IMAGE -thresh T -out PREFIX` through
          conveyor.child.run_child (deadline, SIGTERM/SIGKILL of the process group, log capture),
          with a DATA file written to the work dir naming the `names` file (the plain `detect`
          command hard-codes Debian's coco.data). Its `<class>: <pct>%` lines are parsed; the
          annotated image is darknet's own drawing. darknet's nms is fixed at 0.45.

Inputs are always decoded by Pillow first, so every backend sees the same pixels and a bad
input is a HandlerError with a clear message, never a silent empty result: the darknet binary
exits 0 on an unreadable image (it runs on a blank 10x10 picture instead) and appends the
file name to `bad.list` through system(), which a crafted name turns into a shell command.
The CLI therefore only ever gets a PNG that this handler wrote into the work dir (also its
cwd). The EXIF orientation is applied, alpha is flattened onto white, other modes become RGB.
JPEGs larger than max_side are decoded at a reduced scale (libjpeg's DCT scaling: a 10000x10000
JPEG decodes at 5000x5000 in ~0.7 s); other formats are decoded in full (4 bytes a pixel: ~400 MB
and ~4 s for a 100-megapixel PNG) and scaled down at once.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import shutil
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigError, HandlerError, HandlerTimeout, Interrupted
from conveyor.handler import Handler, HandlerResult, Invocation
from conveyor.handlers.darknet_weights import (
    WEIGHTS_NAME,
    WeightsError,
    default_weights_dir,
    locate_cfg,
    locate_names,
    verify_weights,
)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

    from conveyor.config import FunctionConfig

logger = logging.getLogger(__name__)

OPTIONS_KEY = "conveyor.handler"
BACKENDS = ("auto", "opencv", "cli")
IMAGE_WEIGHTS_DIR = Path("/opt/conveyor/weights")  # where the yolo image puts the weights
OPENCV_MIN_THRESHOLD = 0.2  # OpenCV's darknet YOLO layer zeroes class scores at or below this
CLI_NMS = 0.45  # hard-coded in darknet's test_detector
PAD_VALUE = 0.5  # darknet's letterbox fill
JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 3  # zlib's default 6 takes twice as long for 3% less on a 4096x4096 image
_TRANSPOSE = {  # EXIF orientation -> the PIL.Image.Transpose that makes the image upright (as exif_transpose)
    2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
    6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90",
}


@dataclass(frozen=True)
class DarknetOptions:
    backend: str = "auto"
    threshold: float = 0.25
    nms: float = 0.45
    cfg: str | None = None
    weights: str | None = None
    weights_dir: str | None = None
    names: str | None = None
    input_size: int | None = None  # None: the cfg's width
    max_pixels: int = 100_000_000
    max_side: int = 4096
    darknet: str = "darknet"

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> "DarknetOptions":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            logger.warning("darknet handler: ignoring unknown options %s", ", ".join(unknown))

        def key(name: str) -> str:
            return f"{OPTIONS_KEY}.{name}"

        def number(name: str, default: float, low: float, high: float) -> float:
            value = options.get(name, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"must be a number, got {value!r}", key=key(name))
            if not low <= value <= high:
                raise ConfigError(f"must be between {low} and {high}, got {value}", key=key(name))
            return float(value)

        def integer(name: str, default: int | None, low: int) -> int | None:
            value = options.get(name, default)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"must be a whole number >= {low}, got {value!r}", key=key(name))
            return value

        def path(name: str) -> str | None:
            value = options.get(name)
            if value is None:
                return None
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"must be a file path, got {value!r}", key=key(name))
            return value

        backend = options.get("backend", "auto")
        if backend not in BACKENDS:
            raise ConfigError(f"must be one of {', '.join(BACKENDS)}, got {backend!r}", key=key("backend"))
        input_size = integer("input_size", None, 32)
        if input_size is not None and input_size % 32:
            raise ConfigError(f"must be a multiple of 32, got {input_size}", key=key("input_size"))
        return cls(
            backend=backend,
            threshold=number("threshold", cls.threshold, 0.0, 1.0),
            nms=number("nms", cls.nms, 0.0, 1.0),
            cfg=path("cfg"),
            weights=path("weights"),
            weights_dir=path("weights_dir"),
            names=path("names"),
            input_size=input_size,
            max_pixels=integer("max_pixels", cls.max_pixels, 1) or cls.max_pixels,
            max_side=integer("max_side", cls.max_side, 32) or cls.max_side,
            darknet=path("darknet") or cls.darknet,
        )


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


@dataclass
class Picture:
    """A decoded input: `image` is RGB, at most max_side on its longer side; `size` the input's own."""

    image: "PILImage.Image"
    size: tuple[int, int]
    format: str | None

    @property
    def scaled(self) -> bool:
        return self.image.size != self.size


class DarknetHandler(Handler):
    name = "darknet"

    def __init__(self, config: "FunctionConfig", options: Mapping[str, Any]) -> None:
        super().__init__(config, options)
        self.opts = DarknetOptions.parse(self.options)
        self.backend: str | None = None  # "opencv" | "cli", decided in setup()
        self.cfg: Path | None = None
        self.weights: Path | None = None
        self.names: list[str] = []
        self.net_size: tuple[int, int] = (416, 416)
        self.net: Any = None  # the OpenCV network, loaded once
        self.loads = 0  # how many times a network was loaded (1 after setup with opencv)
        self._darknet: str | None = None
        self._names_path: Path | None = None
        self._out_names: list[str] = []
        self._net_lock = threading.Lock()  # cv2.dnn.Net is not safe to share between threads

    # -- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        opts = self.opts
        self.backend = self._choose_backend()
        self.cfg = _located(locate_cfg, opts.cfg, "cfg")
        names_path = _located(locate_names, opts.names, "names")
        self.weights = self._find_weights()
        self.names = _read_names(names_path)
        cfg_size, classes = _read_cfg(self.cfg)
        if classes is not None and classes != len(self.names):
            raise ConfigError(
                f"{names_path} has {len(self.names)} class names but {self.cfg} predicts {classes} classes",
                key=f"{OPTIONS_KEY}.names",
            )
        self._names_path = names_path
        side = opts.input_size or (cfg_size[0] if cfg_size and cfg_size[0] == cfg_size[1] else 416)
        self.net_size = (side, side)
        if self.backend == "opencv":
            self.net = self._load_net()
        else:
            if any(c.isspace() for c in str(names_path)):
                raise ConfigError(f"the CLI backend cannot use {names_path}: darknet drops every blank from the "
                                  "paths in its .data file; use a path without spaces", key=f"{OPTIONS_KEY}.names")
            if opts.nms != CLI_NMS:
                logger.warning("darknet handler: the CLI backend ignores nms=%s (darknet uses %s)", opts.nms, CLI_NMS)
            if opts.input_size and cfg_size and opts.input_size != cfg_size[0]:
                logger.warning("darknet handler: the CLI backend ignores input_size (it uses the cfg's %s)", cfg_size)
            found = shutil.which(opts.darknet, path=self.config.environment.get("PATH"))  # None: the worker's PATH
            if found is None:
                raise ConfigError(
                    f"the darknet binary {opts.darknet!r} is not found (apt-get install darknet, "
                    "or set the option 'darknet' to its path)",
                    key=f"{OPTIONS_KEY}.darknet",
                )
            self._darknet = found
        logger.info("darknet handler ready: backend %s, cfg %s, weights %s, %d classes, threshold %s",
                    self.backend, self.cfg, self.weights, len(self.names), opts.threshold)

    def _choose_backend(self) -> str:
        opts = self.opts
        if opts.backend == "cli":
            return "cli"
        available, why = opencv_available()
        if opts.backend == "opencv":
            if not available:
                raise ConfigError(f"backend opencv is not usable: {why}", key=f"{OPTIONS_KEY}.backend")
            if opts.threshold < OPENCV_MIN_THRESHOLD:
                raise ConfigError(
                    f"backend opencv cannot report probabilities at or below {OPENCV_MIN_THRESHOLD} (OpenCV's "
                    f"YOLO layer drops them): use threshold >= {OPENCV_MIN_THRESHOLD} or backend cli",
                    key=f"{OPTIONS_KEY}.threshold",
                )
            return "opencv"
        if available and opts.threshold >= OPENCV_MIN_THRESHOLD:
            return "opencv"
        logger.info("darknet handler: backend auto chose cli (%s)",
                    why if not available else f"threshold below {OPENCV_MIN_THRESHOLD}")
        return "cli"

    def _find_weights(self) -> Path:
        opts = self.opts
        if opts.weights is not None:
            path = Path(opts.weights)
            if not path.is_file():
                raise ConfigError(f"weights file {path} does not exist", key=f"{OPTIONS_KEY}.weights")
            return path  # the user's own model: not checked against the yolov3-tiny hash
        if opts.weights_dir is not None:
            candidates = [Path(opts.weights_dir) / WEIGHTS_NAME]
        else:
            candidates = [IMAGE_WEIGHTS_DIR / WEIGHTS_NAME, default_weights_dir(self.config.environment) / WEIGHTS_NAME]
        for path in candidates:
            if path.exists():
                try:
                    verify_weights(path)
                except WeightsError as exc:
                    raise ConfigError(exc.message, key=f"{OPTIONS_KEY}.weights") from exc
                return path
        raise ConfigError(
            f"no weights: looked for {' and '.join(map(str, candidates))}; fetch them with "
            f"`conveyor weights --dir {candidates[-1].parent}` or set the option 'weights'",
            key=f"{OPTIONS_KEY}.weights",
        )

    def _load_net(self) -> Any:
        import cv2

        started = time.monotonic()
        try:
            net = cv2.dnn.readNetFromDarknet(str(self.cfg), str(self.weights))
        except cv2.error as exc:
            raise ConfigError(f"OpenCV cannot load {self.cfg} with {self.weights}: {_cv_message(exc)}",
                              key=f"{OPTIONS_KEY}.weights") from exc
        if net.empty():
            raise ConfigError(f"OpenCV loaded an empty network from {self.cfg}", key=f"{OPTIONS_KEY}.cfg")
        self._out_names = list(net.getUnconnectedOutLayersNames())
        self.loads += 1
        logger.info("darknet handler: network loaded in %.0f ms", (time.monotonic() - started) * 1000)
        return net

    def close(self) -> None:
        self.net = None

    # -- per record -----------------------------------------------------------------------------

    def handle(self, inv: Invocation) -> HandlerResult:
        if inv.input_path is None:
            raise HandlerError("the darknet handler needs the input file, but file_stage_in is set")
        _check(inv, "decoding the image")
        started = time.monotonic()
        picture = load_picture(inv.input_path, max_pixels=self.opts.max_pixels, max_side=self.opts.max_side)
        decoded = time.monotonic()
        if self.backend == "opencv":
            detections, annotated = self._detect_opencv(inv, picture), None
        else:
            detections, annotated = self._detect_cli(inv, picture)
        inferred = time.monotonic()
        _check(inv, "writing the outputs")

        stem = inv.input_path.stem or "image"
        json_path = inv.output_dir / f"{stem}.json"
        image_path = inv.output_dir / f"{stem}{'.jpg' if picture.format == 'JPEG' else '.png'}"
        inv.output_dir.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps([d.to_dict() for d in detections], indent=2) + "\n")
        if annotated is None:
            annotated = draw_detections(picture, detections)
        _save_image(annotated, image_path)

        classes = sorted({d.cls for d in detections})
        inv.log.info("darknet (%s): %d detection(s) in %s (%dx%d): %s; decode %.0f ms, inference %.0f ms",
                     self.backend, len(detections), inv.input_path.name, *picture.size,
                     ", ".join(f"{d.cls} {d.confidence:.2f}" for d in detections) or "nothing",
                     (decoded - started) * 1000, (inferred - decoded) * 1000)
        return HandlerResult(
            exit_code=0,
            details={
                "backend": self.backend,
                "detections": len(detections),
                "classes": classes,
                "image_size": list(picture.size),
                "scaled_to": list(picture.image.size) if picture.scaled else None,
                "inference_seconds": round(inferred - decoded, 3),
                "outputs": [json_path.name, image_path.name],
            },
        )

    # -- opencv ---------------------------------------------------------------------------------

    def _detect_opencv(self, inv: Invocation, picture: Picture) -> list[Detection]:
        import cv2

        blob, box_map = letterbox_blob(picture.image, self.net_size)
        _check(inv, "inference")
        with self._net_lock:
            try:
                self.net.setInput(blob)
                outputs = self.net.forward(self._out_names)
            except cv2.error as exc:
                raise HandlerError(f"OpenCV inference failed: {_cv_message(exc)}") from exc
        return decode_yolo(outputs, box_map, picture.size, self.names, self.opts.threshold, self.opts.nms)

    # -- cli ------------------------------------------------------------------------------------

    def _detect_cli(self, inv: Invocation, picture: Picture) -> tuple[list[Detection], "PILImage.Image"]:
        from PIL import Image


        work = inv.work_dir
        work.mkdir(parents=True, exist_ok=True)
        image_in = work / "darknet-input.png"
        picture.image.save(image_in, format="PNG", compress_level=1)
        data_file = work / "darknet.data"
        data_file.write_text(f"classes = {len(self.names)}\nnames = {self._names_path}\n")
        prefix = work / "darknet-predictions"
        stdout_path = work / "darknet.stdout"
        argv = [self._darknet, "detector", "test", str(data_file), str(self.cfg), str(self.weights), str(image_in),
                "-thresh", f"{self.opts.threshold:g}", "-out", str(prefix)]
        log_start = inv.log_file.stat().st_size if inv.log_file.exists() else 0
        # darknet writes bad.list (and predictions.jpg without -out) into its cwd
        rc = inv.run_child(argv, cwd=work, stdout_file=stdout_path, prefix="darknet")
        stderr_text = _read_from(inv.log_file, log_start)
        if rc != 0:
            raise HandlerError(f"darknet exited with code {rc}: {_last_line(stderr_text)}", exit_code=rc)
        for sign in ("Cannot load image", "Couldn't open file"):  # darknet exits 0 after both
            if sign in stderr_text:
                line = next(line for line in stderr_text.splitlines() if sign in line)
                raise HandlerError(f"darknet failed although it exited 0: {line.strip()[:300]}")
        drawn = prefix.with_suffix(".jpg")
        if not drawn.is_file():
            raise HandlerError(f"darknet exited 0 but wrote no {drawn.name}")
        detections = parse_darknet_stdout(stdout_path.read_text(errors="replace"), set(self.names))
        with Image.open(drawn) as im:
            annotated = im.convert("RGB")
        return detections, annotated


# ---------------------------------------------------------------------------------------------
# Decoding the input


def load_picture(path: Path, *, max_pixels: int, max_side: int) -> Picture:
    """Decode `path` with Pillow into an RGB working image; HandlerError for anything unusable."""
    from PIL import Image

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise HandlerError(f"cannot read the input {path.name}: {exc.strerror}") from exc
    if size == 0:
        raise HandlerError(f"the input {path.name} is empty (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise HandlerError(f"the input {path.name} is too large to decode: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise HandlerError(f"the input {path.name} is not an image Pillow can read ({size:,} bytes)") from exc
    except Exception as exc:  # Pillow's plugins raise many kinds on malformed headers
        raise HandlerError(f"the input {path.name} is not a readable image: {type(exc).__name__}: {exc}") from exc
    image = None
    try:
        fmt = im.format
        width, height = im.size
        if width < 1 or height < 1:
            raise HandlerError(f"the input {path.name} has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise HandlerError(
                f"the input {path.name} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the "
                f"limit of {max_pixels:,} pixels (handler option max_pixels)",
                width=width,
                height=height,
            )
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block is not worth failing the image for
            orientation = 1
        try:
            if fmt == "JPEG" and max(width, height) > max_side:
                factor = max_side / max(width, height)
                im.draft("RGB", (max(1, int(width * factor)), max(1, int(height * factor))))
            im.load()
            image = _to_rgb(im)
            if image is im and getattr(im, "fp", None) is not None:  # multi-frame files keep their file open
                image = im.copy()
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=1.0)
            if orientation in _TRANSPOSE:
                image = image.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
        except MemoryError as exc:
            raise HandlerError(f"not enough memory to decode {path.name} ({width}x{height})") from exc
        except Exception as exc:  # truncated data, bad chunks, decoder errors of every plugin
            raise HandlerError(f"cannot decode {path.name} ({fmt or 'unknown format'} {width}x{height}): "
                               f"{type(exc).__name__}: {exc}") from exc
    finally:
        if image is not im:
            im.close()
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return Picture(image=image, size=(width, height), format=fmt)


def _to_rgb(im: "PILImage.Image") -> "PILImage.Image":
    """RGB: alpha flattened onto white, 16-bit greyscale scaled to 8 bits, everything else converted."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode.startswith("I"):  # 16-bit greyscale PNG/TIFF: 0..65535 down to 0..255
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return im.convert("RGB")


# ---------------------------------------------------------------------------------------------
# darknet's preprocessing and YOLO decoding (mirrors pjreddie/darknet src/image.c, yolo_layer.c)


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
    """The NCHW float32 network input, made the way darknet's letterbox_image makes it."""
    import numpy as np

    net_w, net_h = net_size
    w, h = image.size
    new_w, new_h = letterbox_size(w, h, net_w, net_h)
    pixels = np.asarray(image, dtype=np.uint8)
    resized = darknet_resize(pixels, max(1, new_w), max(1, new_h))
    canvas = np.full((net_h, net_w, 3), PAD_VALUE, dtype=np.float32)
    top, left = (net_h - new_h) // 2, (net_w - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[np.newaxis])
    return blob, BoxMap(net_w, net_h, new_w, new_h)


def darknet_resize(pixels: "np.ndarray", w: int, h: int) -> "np.ndarray":
    """darknet's resize_image (corner-aligned bilinear, columns first) of HxWx3 uint8, to h x w x 3 float32 in 0..1.

    Only the source rows the result needs are converted to float, so a large image costs little.
    """
    import numpy as np

    src_h, src_w = pixels.shape[:2]
    f32 = np.float32
    w_scale = f32(src_w - 1) / f32(w - 1) if w > 1 else f32(0)
    h_scale = f32(src_h - 1) / f32(h - 1) if h > 1 else f32(0)

    sy = np.arange(h, dtype=f32) * h_scale
    iy = sy.astype(np.int64)
    dy = (sy - iy.astype(f32))[:, None, None]
    last_row = (np.arange(h) == h - 1) | (src_h == 1)
    iy1 = np.minimum(iy + 1, src_h - 1)
    rows_needed = np.unique(np.concatenate([iy, iy1]))  # at most 2h of the src_h rows
    src = pixels[rows_needed].astype(f32) / f32(255)
    sx = np.arange(w, dtype=f32) * w_scale
    ix = sx.astype(np.int64)
    dx = sx - ix.astype(f32)
    last_col = (np.arange(w) == w - 1) | (src_w == 1)
    ix = np.where(last_col, src_w - 1, ix)
    dx = np.where(last_col, f32(0), dx)[None, :, None]
    ix1 = np.minimum(ix + 1, src_w - 1)
    part = (f32(1) - dx) * src[:, ix, :] + dx * src[:, ix1, :]

    top = part[np.searchsorted(rows_needed, iy)]
    bottom = part[np.searchsorted(rows_needed, iy1)]
    out = (f32(1) - dy) * top
    out += np.where(last_row[:, None, None], f32(0), dy) * bottom
    return out.astype(f32, copy=False)


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
    for k in range(probs.shape[1]):
        candidates = np.flatnonzero(probs[:, k] > threshold)
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


# ---------------------------------------------------------------------------------------------
# Drawing


_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
            (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180)]


def draw_detections(picture: Picture, detections: Sequence[Detection]) -> "PILImage.Image":
    """A copy of the working image with a box and a label per detected box (classes of one box joined)."""
    from PIL import ImageDraw, ImageFont

    image = picture.image.copy()
    if not detections:
        return image
    draw = ImageDraw.Draw(image)
    longest = max(image.size)
    line = max(2, round(longest / 300))
    try:
        font: Any = ImageFont.load_default(size=max(12, round(longest / 45)))
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    boxes: dict[tuple[int, int, int, int], list[Detection]] = {}
    for det in detections:
        if det.box is not None:
            boxes.setdefault(det.box, []).append(det)
    sx, sy = image.width / picture.size[0], image.height / picture.size[1]
    for box, dets in sorted(boxes.items(), key=lambda item: max(d.confidence for d in item[1])):
        x, y, w, h = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
        color = _PALETTE[sum(map(ord, dets[0].cls)) % len(_PALETTE)]
        draw.rectangle((x, y, x + w, y + h), outline=color, width=line)
        label = ", ".join(f"{d.cls} {d.confidence:.0%}" for d in dets)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left, bottom - top
        ty = y - th - 2 * line if y - th - 2 * line >= 0 else y
        draw.rectangle((x, ty, x + tw + 2 * line, ty + th + 2 * line), fill=color)
        text_color = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        draw.text((x + line - left, ty + line - top), label, fill=text_color, font=font)
    return image


def _save_image(image: "PILImage.Image", path: Path) -> None:
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


# ---------------------------------------------------------------------------------------------
# Small helpers


def opencv_available() -> tuple[bool, str]:
    """(True, "") when cv2 can be imported and still has the darknet importer, else (False, why)."""
    try:
        cv2 = importlib.import_module("cv2")
    except ImportError as exc:
        return False, f"cv2 cannot be imported ({exc}); pip install 'opencv-python-headless<5'"
    dnn = getattr(cv2, "dnn", None)
    if dnn is None or not hasattr(dnn, "readNetFromDarknet"):
        return False, (f"OpenCV {getattr(cv2, '__version__', '?')} has no cv2.dnn.readNetFromDarknet "
                       "(removed in OpenCV 5); pip install 'opencv-python-headless<5'")
    return True, ""


def _check(inv: Invocation, step: str) -> None:
    if inv.shutdown.is_set():
        raise Interrupted(f"shutdown requested before {step}")
    if inv.deadline.expired():
        raise HandlerTimeout(f"the deadline passed before {step}")


def _located(locate: Any, override: str | None, option: str) -> Path:
    try:
        return locate(override)
    except WeightsError as exc:
        raise ConfigError(exc.message, key=f"{OPTIONS_KEY}.{option}") from exc


def _read_names(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=f"{OPTIONS_KEY}.names") from exc
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ConfigError(f"{path} lists no class names", key=f"{OPTIONS_KEY}.names")
    return names


def _read_cfg(path: Path) -> tuple[tuple[int, int] | None, int | None]:
    """(net width, height) from [net] and the `classes` of the [yolo] sections, when present."""
    size: dict[str, int] = {}
    classes: set[int] = set()
    section = ""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=f"{OPTIONS_KEY}.cfg") from exc
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        try:
            if section in ("net", "network") and key in ("width", "height"):
                size[key] = int(value)
            elif section in ("yolo", "region") and key == "classes":
                classes.add(int(value))
        except ValueError:
            continue
    dims = (size["width"], size["height"]) if "width" in size and "height" in size else None
    return dims, (classes.pop() if len(classes) == 1 else None)


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(1024 * 1024).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _cv_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
