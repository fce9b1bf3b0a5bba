"""What a file is: from its first bytes (magic numbers) as (extension, media type), and the file
extension for a media type. The one place Conveyor knows formats."""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mimetypes

HEAD_BYTES = 32  # the most sniff() looks at
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


def sniff(head: bytes) -> tuple[str, str] | None:
    """(".png", "image/png") and the like for the formats known by their first bytes, else None.

    Only binary formats with a signature: text (JSON, CSV, plain) is the caller's to judge.
    """
    head = head[:HEAD_BYTES]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png", "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg", "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif", "image/gif"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tiff", "image/tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp", "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return ".wav", "audio/wav"
    if head[:4] == b"fLaC":
        return ".flac", "audio/flac"
    if head[:4] == b"OggS":
        return ".ogg", "audio/ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] in (0xFB, 0xFA, 0xF3, 0xF2)):
        return ".mp3", "audio/mpeg"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1"):
            return ".heic", "image/heic"
        if brand in (b"avif", b"avis"):
            return ".avif", "image/avif"
        return ".mp4", "video/mp4"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return ".zip", "application/zip"
    if head[:2] == b"\x1f\x8b":
        return ".gz", "application/gzip"
    if head[:5] == b"%PDF-":
        return ".pdf", "application/pdf"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return ".bmp", "image/bmp"
    return None


# mimetypes knows most, but not all, of what models and clients send; these win over it.
_TYPE_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/png": ".png",
    "image/tiff": ".tiff",
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/flac": ".flac",
    "audio/ogg": ".ogg",
    "video/mp4": ".mp4",
    "application/zip": ".zip",
    "application/x-zip-compressed": ".zip",
    "application/gzip": ".gz",
    "application/x-gzip": ".gz",
    "application/pdf": ".pdf",
    "application/json": ".json",
    "text/plain": ".txt",
    "text/csv": ".csv",
    "text/yaml": ".yaml",
    "application/x-yaml": ".yaml",
}
_EXTENSION = re.compile(r"\.[a-z0-9]{1,10}")


@cache
def _mime() -> mimetypes.MimeTypes:
    """The built-in table only (no /etc/mime.types), so names do not depend on the machine. Built on
    first use: 2 ms that an event without a Content-Type to name never pays."""
    import mimetypes

    return mimetypes.MimeTypes()


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type value, lower case, without parameters ("" for None)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def extension_for(content_type: str | None) -> str | None:
    """The file extension for a Content-Type (".jpg" for "image/jpeg; q=1"), or None when unknown."""
    kind = media_type(content_type)
    if not kind:
        return None
    ext = _TYPE_EXTENSIONS.get(kind) or _mime().guess_extension(kind, strict=False)
    return ext if ext and _EXTENSION.fullmatch(ext) else None
