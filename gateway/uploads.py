"""Reading a multipart upload as it streams in: each `file` part goes to a temporary file, and the
request is refused as soon as one file passes the size limit (nothing of it reaches a store).

    parts = UploadReader(boundary, folder, max_bytes)
    for chunk in body: parts.write(chunk)   # TooLarge / BadUpload as soon as it is known
    parts.finish() -> [(file name as sent, path of its bytes), ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FILES = 100
MAX_HEADER_BYTES = 16 * 1024  # a part's header: the file name of a 1 KiB name percent-encoded fits


class BadUpload(Exception):
    """400: not a multipart form, or one without a `file` part."""


class TooLarge(Exception):
    """413: a file passed the limit."""


class UploadReader:
    def __init__(self, content_type: str, folder: Path, max_bytes: int, field: str = "file") -> None:
        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise BadUpload("send the files as multipart/form-data, each in a field named `file`")
        self.folder = folder
        self.max_bytes = max_bytes
        self.field = field
        self.files: list[tuple[str, Path]] = []
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._current: IO[bytes] | None = None
        self._size = 0
        self._error: Exception | None = None
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self._add("_header_name", data[start:end]),
                "on_header_value": lambda data, start, end: self._add("_header_value", data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_size=MAX_HEADER_BYTES,
        )

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name", b"").decode("latin-1") != self.field or b"filename" not in params:
            self._current = None  # another field: ignored
            return
        if len(self.files) >= MAX_FILES:
            self._error = BadUpload(f"at most {MAX_FILES} files per request")
            return
        path = self.folder / f"part-{len(self.files)}"
        name = params[b"filename"].decode("utf-8", errors="surrogateescape")
        self.files.append((name, path))
        self._current = path.open("wb")
        self._size = 0

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is None or self._error is not None:
            return
        self._size += end - start
        if self._size > self.max_bytes:
            self._error = TooLarge(
                f"{self.files[-1][0]!r} is over the upload limit of {self.max_bytes} bytes: nothing was stored"
            )
            return
        self._current.write(data[start:end])

    def _part_end(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def _end(self) -> None:
        self._ended = True

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except Exception as exc:  # python_multipart's MultipartParseError, or a header over the limit
            if self._error is None:
                self._error = BadUpload(f"malformed multipart body: {exc}")
        if self._error is not None:
            self.close()
            raise self._error

    def finish(self) -> list[tuple[str, Path]]:
        self._parser.finalize()
        self.close()
        if self._error is not None:
            raise self._error
        if not self._ended:
            raise BadUpload("the multipart body ended early")
        if not self.files:
            raise BadUpload("no file: send each file in a multipart field named `file`")
        return self.files

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
