"""Upload ids and the safe names uploads are stored under.

An upload is stored as `<input path>/<user>/<upload id>/<stored name>`:

    upload id     20261203T223000123Z-1a2b3c4d: UTC time to the millisecond, then 8 random hex
                  digits; ids sort by upload time, and two uploads of dog.jpg never collide.
    stored name   the file's name with every byte outside [A-Za-z0-9._-] percent-encoded ('/',
                  '\\', NUL, control characters, spaces, '%', non-ASCII ...), so it is one plain key
                  segment; '.' and '..' are encoded too, and a name over MAX_STORED_BYTES is cut
                  (its extension kept). `shown_name` decodes it back for display, with control
                  characters written as escapes.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from datetime import UTC, datetime
from urllib.parse import quote, unquote

UPLOAD_ID = re.compile(r"^(\d{8}T\d{9}Z)-([0-9a-f]{8})$")
MAX_STORED_BYTES = 200
_SAFE = "._-"


def new_upload_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    return f"{stamp}-{secrets.token_hex(4)}"


def is_upload_id(value: str) -> bool:
    return bool(UPLOAD_ID.match(value))


def upload_time(upload_id: str) -> datetime | None:
    """When the upload happened, from its id."""
    match = UPLOAD_ID.match(upload_id)
    if not match:
        return None
    stamp = match.group(1)
    return datetime.strptime(stamp[:15], "%Y%m%dT%H%M%S").replace(
        microsecond=int(stamp[15:18]) * 1000, tzinfo=UTC
    )


def stored_name(original: str, fallback: str = "upload") -> str:
    """One safe key segment for a file name a browser or a script sent (see the module docstring)."""
    # A browser may send a path ("C:\\fakepath\\x.jpg", "dir/x.jpg"): the separators are encoded, not cut
    # at, so nothing of the name is silently lost.
    encoded = quote(original, safe=_SAFE, errors="replace") if original else fallback
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    if len(encoded) > MAX_STORED_BYTES:
        stem, dot, ext = encoded.rpartition(".")
        ext = f".{ext}" if dot and stem and len(ext) <= 16 else ""
        stem = encoded[: MAX_STORED_BYTES - len(ext)] if ext else encoded[:MAX_STORED_BYTES]
        stem = re.sub(r"%[0-9A-F]?$", "", stem)  # never cut an escape in half
        encoded = stem + ext
    return encoded


def shown_name(stored: str) -> str:
    """The name to show for a stored name: decoded, with control characters written as \\xNN escapes."""
    decoded = unquote(stored, errors="replace")
    return "".join(_escaped(ch) if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in decoded)


def _escaped(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"
