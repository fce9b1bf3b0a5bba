"""The image in and out: the input decoded by Pillow into an upright RGB working picture, and the
picture drawn with its detections and saved."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import HandlerError
from conveyor.handlers.darknet.yolo import Detection

if TYPE_CHECKING:
    from PIL import Image as PILImage

JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 3  # zlib's default 6 takes twice as long for 3% less on a 4096x4096 image
_TRANSPOSE = {  # EXIF orientation -> the PIL.Image.Transpose that makes the image upright (as exif_transpose)
    2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
    6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90",
}


@dataclass
class Picture:
    """A decoded input: `image` is RGB, at most max_side on its longer side; `size` the input's own."""

    image: "PILImage.Image"
    size: tuple[int, int]
    format: str | None

    @property
    def scaled(self) -> bool:
        return self.image.size != self.size


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


def save_image(image: "PILImage.Image", path: Path) -> None:
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)

