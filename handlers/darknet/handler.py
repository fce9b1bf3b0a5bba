"""DarknetHandler: its options, setup (backend, model files, network) and the two backends per record;
and the preparation of the YOLOv3-tiny files for a local run (prepare) and for `conveyor weights`."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigError, HandlerError
from conveyor.handler import Handler, HandlerResult, Invocation
from conveyor.handlers.darknet import weights
from conveyor.handlers.darknet.picture import Picture, draw_detections, load_picture, save_image
from conveyor.handlers.darknet.weights import (
    WEIGHTS_NAME,
    WeightsError,
    default_weights_dir,
    locate_cfg,
    locate_names,
    verify_weights,
)
from conveyor.handlers.darknet.yolo import Detection, decode_yolo, letterbox_blob, parse_darknet_stdout

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from conveyor.config import FunctionConfig

log = logging.getLogger(__name__)

OPTIONS_KEY = "conveyor.handler"
BACKENDS = ("auto", "opencv", "cli")
IMAGE_WEIGHTS_DIR = Path("/opt/conveyor/weights")  # where the yolo image puts the weights
OPENCV_MIN_THRESHOLD = 0.2  # OpenCV's darknet YOLO layer zeroes class scores at or below this
CLI_NMS = 0.45  # hard-coded in darknet's test_detector


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
            log.warning("darknet handler: ignoring unknown options %s", ", ".join(unknown))

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

    @classmethod
    def hosted(cls, options: Mapping[str, Any]) -> bool:
        """The OpenCV backend keeps the network in memory: a model host (conveyor.modelhost) supervises
        it; so does auto when it would choose OpenCV (cv2 installed, threshold high enough). The CLI
        backend runs darknet per record, supervised already."""
        opts = DarknetOptions.parse(options)  # as the handler reads them (load_handler built it first)
        if opts.backend != "auto":
            return opts.backend == "opencv"
        # _choose_backend's auto rule, with cv2 found rather than imported (load_handler stays light)
        return opts.threshold >= OPENCV_MIN_THRESHOLD and importlib.util.find_spec("cv2") is not None

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
                log.warning("darknet handler: the CLI backend ignores nms=%s (darknet uses %s)", opts.nms, CLI_NMS)
            if opts.input_size and cfg_size and opts.input_size != cfg_size[0]:
                log.warning("darknet handler: the CLI backend ignores input_size (it uses the cfg's %s)", cfg_size)
            found = shutil.which(opts.darknet, path=self.config.environment.get("PATH"))  # None: the worker's PATH
            if found is None:
                raise ConfigError(
                    f"the darknet binary {opts.darknet!r} is not found (apt-get install darknet, "
                    "or set the option 'darknet' to its path)",
                    key=f"{OPTIONS_KEY}.darknet",
                )
            self._darknet = found
        log.info("darknet handler ready: backend %s, cfg %s, weights %s, %d classes, threshold %s",
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
        log.info("darknet handler: backend auto chose cli (%s)",
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
        log.info("darknet handler: network loaded in %.0f ms", (time.monotonic() - started) * 1000)
        return net

    def close(self) -> None:
        self.net = None

    # -- the model's files, before a run ----------------------------------------------------------

    @classmethod
    def prepare(
        cls,
        options: Mapping[str, Any],
        *,
        environ: Mapping[str, str],
        say: Callable[[str], None],
        samples_dir: Path | None = None,
    ) -> dict[str, Any]:
        """The YOLOv3-tiny files for a local run: the weights fetched (first use) and verified where the
        handler will look; the cfg and class names from Debian's darknet package, else the copies in
        samples_dir/yolo/ (so a machine without that package runs the default model too)."""
        options = dict(options)
        if samples_dir is not None:
            for option, default in (("cfg", weights.DEFAULT_CFG), ("names", weights.DEFAULT_NAMES)):
                bundled = samples_dir / "yolo" / default.name
                if not options.get(option) and not default.is_file() and bundled.is_file():
                    options[option] = str(bundled)
        if options.get("weights") or options.get("weights_dir") or (IMAGE_WEIGHTS_DIR / WEIGHTS_NAME).exists():
            return options
        where = weights.default_weights_dir(environ)
        if not (where / WEIGHTS_NAME).exists():
            say(f"fetching the YOLOv3-tiny weights into {where} (first use, ~35 MB)")
        started = time.monotonic()
        path = weights.ensure_weights(where)
        if time.monotonic() - started > 1:
            say(f"weights ready ({path}, {time.monotonic() - started:.0f}s)")
        options["weights_dir"] = str(where)
        return options

    @classmethod
    def fetch_weights(cls, dest: Path | None, environ: Mapping[str, str]) -> Path:
        """The verified yolov3-tiny.weights in `dest` (default: default_weights_dir), fetched when absent."""
        return weights.ensure_weights(dest or weights.default_weights_dir(environ))

    # -- per record -----------------------------------------------------------------------------

    def handle(self, inv: Invocation) -> HandlerResult:
        if inv.input_path is None:
            raise HandlerError("the darknet handler needs the input file, but file_stage_in is set")
        inv.check("decoding the image")
        started = time.monotonic()
        picture = load_picture(inv.input_path, max_pixels=self.opts.max_pixels, max_side=self.opts.max_side)
        decoded = time.monotonic()
        if self.backend == "opencv":
            detections, annotated = self._detect_opencv(inv, picture), None
        else:
            detections, annotated = self._detect_cli(inv, picture)
        inferred = time.monotonic()
        inv.check("writing the outputs")

        stem = inv.input_path.stem or "image"
        json_path = inv.output_dir / f"{stem}.json"
        image_path = inv.output_dir / f"{stem}{'.jpg' if picture.format == 'JPEG' else '.png'}"
        inv.output_dir.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps([d.to_dict() for d in detections], indent=2) + "\n")
        if annotated is None:
            annotated = draw_detections(picture, detections)
        save_image(annotated, image_path)

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
        inv.check("inference")
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
        assert self._darknet is not None  # found by setup() for the cli backend
        argv = [self._darknet, "detector", "test", str(data_file), str(self.cfg), str(self.weights), str(image_in),
                "-thresh", f"{self.opts.threshold:g}", "-out", str(prefix)]
        log_start = inv.log_offset()
        # darknet writes bad.list (and predictions.jpg without -out) into its cwd
        rc = inv.run_child(argv, cwd=work, stdout_file=stdout_path, prefix="darknet")
        stderr_text = inv.log_since(log_start, limit=1024 * 1024)
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


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _cv_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
