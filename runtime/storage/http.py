"""What the HTTP stores (WebDAV, Onedata CDMI) share: HttpStore, one requests session with
bounded retries, folder creation on demand and streamed GET/PUT; and http_base_url."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, BinaryIO, NoReturn
from urllib.parse import quote, urlsplit

from conveyor.config import StorageProvider
from conveyor.errors import ConfigError, StorageError
from conveyor.storage.base import (
    PRECONDITION_FAILED,
    BaseStore,
    TransferOptions,
    Written,
    file_size,
    guess_content_type,
    one_line,
    staging_file,
)

HTTP_CHUNK = 256 * 1024  # bytes moved between a socket and a file at a time
RETRY_STATUSES = (500, 502, 503, 504)
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PROPFIND", "MKCOL"})


def http_base_url(host: str, key: str) -> str:
    """A host as SCAR and OSCAR write it (`host[:port][/path]`, https unless a scheme is given;
    `http://...` for plain HTTP) as a base URL without a trailing slash. `key` names the setting."""
    text = host.strip()
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"'{host}' is not a host name nor an http(s) URL", key=key)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _http_reason(exc: BaseException) -> str:
    """The useful part of a requests/urllib3 error ("[Errno 111] Connection refused", not the repr soup)."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    reason = getattr(inner, "reason", None) or inner
    return re.sub(r"^(<[^>]*>|\w*Connection\([^)]*\)): ", "", str(reason))


class HttpStore(BaseStore):
    """What the WebDAV and Onedata stores share.

    One requests Session per store: keep-alive connections, TLS checked unless the provider says
    `verify: false`, and urllib3 retries (connect errors, 5xx) with backoff, `max_attempts` in all.
    The bucket is the first folder under the base URL and the key the path below it, one URL-encoded
    segment per '/'. Folders are created on demand, top-down, and remembered; a PUT whose parent has
    vanished meanwhile (`missing_parent`) re-creates them and is sent once more. Transfers stream:
    the open file is the PUT body (urllib3 sends it in small blocks, and rewinds it for a retry), and
    a GET goes into the staging file HTTP_CHUNK bytes at a time. One PUT per object: the multipart
    options do not apply. Subclasses say how a folder is probed and made, and how keys are listed
    and tested.
    """

    missing_parent: frozenset[int] = frozenset({409})  # PUT statuses meaning "no such parent folder"
    allow_redirects = True

    def __init__(self, provider: StorageProvider, options: TransferOptions, base_url: str) -> None:
        super().__init__(provider, options)
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.base_url = base_url
        self.timeout = (options.connect_timeout, options.read_timeout)
        retry = Retry(
            total=max(0, options.max_attempts - 1),
            backoff_factor=options.backoff_factor,
            backoff_max=options.backoff_max,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=_IDEMPOTENT_METHODS,
            raise_on_status=False,  # the last 5xx comes back as a response, mapped by _fail
            respect_retry_after_header=False,  # bounded: a "Retry-After: 3600" must not stall the job
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=max(10, options.max_concurrency * 2))
        self.session = requests.Session()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.verify = provider.verify  # True: certifi, or REQUESTS_CA_BUNDLE when set
        self._folders: set[tuple[str, ...]] = set()  # folders known to exist: (bucket, *segments)
        self._folders_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.provider.ref}, url={self.base_url})"

    # -- addressing ------------------------------------------------------------------------------
    def _segments(self, operation: str, bucket: str, key: str | None) -> tuple[str, ...]:
        """(bucket, *key segments), refusing names that would not map to a path inside the bucket."""
        if not bucket or bucket in (".", "..") or any(ch in bucket for ch in "/\\\0"):
            self._raise(operation, bucket, key, "invalid bucket name for a folder")
        if key is None:
            return (bucket,)
        parts = key.split("/")
        if not key or "\0" in key or any(part in ("", ".", "..") for part in parts):
            self._raise(operation, bucket, key, "key refused: it would not map to a path inside the bucket folder")
        return (bucket, *parts)

    def _url(self, segments: tuple[str, ...], folder: bool = False) -> str:
        path = "/".join(quote(segment, safe="") for segment in segments)
        return f"{self.base_url}/{path}/" if folder else f"{self.base_url}/{path}"

    # -- requests and their errors ---------------------------------------------------------------
    def _send(self, method: str, url: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("allow_redirects", self.allow_redirects)
        if not self.provider.verify:  # per request: a session's verify=False loses to REQUESTS_CA_BUNDLE
            kwargs["verify"] = False
        return self.session.request(method, url, **kwargs)

    @contextmanager
    def _errors(self, operation: str, bucket: str, key: str | None = None) -> Iterator[None]:
        import requests

        attempts = f"after {self.options.max_attempts} attempts"
        try:
            yield
        except StorageError:
            raise
        except requests.exceptions.SSLError as exc:
            reason = f"TLS failure with {self.base_url}: {_http_reason(exc)}"
            self._raise(operation, bucket, key, reason, cause="SSLError")
        except requests.exceptions.ConnectionError as exc:  # refused, unresolvable, reset, connect timeout
            reason = f"cannot reach {self.base_url}: {_http_reason(exc)} ({attempts})"
            self._raise(operation, bucket, key, reason, cause=type(exc).__name__)
        except requests.exceptions.Timeout as exc:
            reason = f"no answer from {self.base_url} within {self.options.read_timeout:g} s ({attempts})"
            self._raise(operation, bucket, key, reason, cause=type(exc).__name__)
        except requests.exceptions.RequestException as exc:  # before OSError: requests' errors are IOErrors
            self._raise(operation, bucket, key, f"HTTP transfer failed: {_http_reason(exc)}", cause=type(exc).__name__)
        except OSError as exc:
            self._raise(operation, bucket, key, f"local file error: {exc}", cause=type(exc).__name__)

    def _error_detail(self, response: Any) -> str:
        """A short explanation from an error response's body ('' when it has none worth quoting)."""
        if not response.headers.get("Content-Type", "").startswith("text/plain"):
            return ""
        head = next(response.iter_content(300), b"")
        return one_line(head.decode("utf-8", "replace"))[:200]

    def _fail(self, response: Any, operation: str, bucket: str, key: str | None, what: str = "object") -> NoReturn:
        status = response.status_code
        detail = self._error_detail(response)
        reason = response.reason or ""
        label = f"HTTP {status} {reason}".rstrip()
        if detail and detail.lower() != reason.lower():
            label += f": {detail}"
        if status in (401, 403):
            self._raise(operation, bucket, key, f"credentials refused ({label})", credentials=True, cause=str(status))
        if status == 404:
            self._raise(operation, bucket, key, f"{what} not found ({label})", cause="404")
        if 300 <= status < 400:
            reason = f"unexpected redirect ({label}) to {response.headers.get('Location')}"
            self._raise(operation, bucket, key, reason, cause=str(status))
        self._raise(operation, bucket, key, label, cause=str(status))

    # -- folders ---------------------------------------------------------------------------------
    def _folder_exists(self, operation: str, bucket: str, key: str | None, folder: tuple[str, ...]) -> bool:
        raise NotImplementedError

    def _make_folder(self, operation: str, bucket: str, key: str | None, folder: tuple[str, ...]) -> None:
        raise NotImplementedError

    def _ensure_folder(self, operation: str, bucket: str, key: str | None, folder: tuple[str, ...]) -> None:
        """Make `folder` (bucket first) exist: one probe when it does, top-down creation when not."""
        with self._folders_lock:
            if folder in self._folders:
                return
        if not self._folder_exists(operation, bucket, key, folder):
            for depth in range(1, len(folder)):
                level = folder[:depth]
                with self._folders_lock:
                    known = level in self._folders
                if not known and not self._folder_exists(operation, bucket, key, level):
                    self._make_folder(operation, bucket, key, level)
                with self._folders_lock:
                    self._folders.add(level)
            self._make_folder(operation, bucket, key, folder)
        with self._folders_lock:
            self._folders.update(folder[:depth] for depth in range(1, len(folder) + 1))

    def _put(self, operation: str, bucket: str, key: str, open_body: Any, content_type: str) -> None:
        segments = self._segments(operation, bucket, key)
        url = self._url(segments)
        for attempt in (1, 2):
            self._ensure_folder(operation, bucket, key, segments[:-1])
            with open_body() as body:
                response = self._send("PUT", url, data=body, headers={"Content-Type": content_type})
            with response:
                if response.status_code in self.missing_parent and attempt == 1:
                    with self._folders_lock:  # deleted behind our back: probe and create again
                        self._folders.clear()
                    continue
                if not 200 <= response.status_code < 300:
                    self._fail(response, operation, bucket, key, "folder" if response.status_code == 404 else "object")
                return

    # -- the ObjectStore protocol ----------------------------------------------------------------
    def download(self, bucket: str, key: str, dest: Path) -> int:
        url = self._url(self._segments("download", bucket, key))
        with self._errors("download", bucket, key), staging_file(Path(dest)) as tmp:
            with self._send("GET", url, stream=True, headers={"Accept-Encoding": "identity"}) as response:
                if response.status_code != 200:
                    self._fail(response, "download", bucket, key)
                with open(tmp, "wb") as target:
                    for chunk in response.iter_content(HTTP_CHUNK):
                        target.write(chunk)
            return tmp.stat().st_size

    def upload(self, src: Path, bucket: str, key: str, content_type: str | None = None) -> int:
        with self._errors("upload", bucket, key), open(src, "rb") as file:
            return self.put_file(file, bucket, key, content_type).size

    def put_file(
        self, file: BinaryIO, bucket: str, key: str, content_type: str | None = None, *, create_only: bool = False
    ) -> Written:
        """No conditional PUT here: `create_only` is checked with `exists` just before."""
        with self._errors("upload", bucket, key):
            if create_only and self.exists(bucket, key):
                self._raise("upload", bucket, key, "an object already has this key (create-only write)",
                            cause=PRECONDITION_FAILED, status=412)
            size = file_size(file)

            def open_body() -> Any:  # from the start for every PUT; b"" for an empty file (no chunked encoding)
                file.seek(0)
                return nullcontext(file if size else b"")

            self._put("upload", bucket, key, open_body, content_type or guess_content_type(key))
            return Written(size, None)

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/json") -> None:
        with self._errors("put", bucket, key):
            self._put("put", bucket, key, lambda: nullcontext(data), content_type)

    def delete(self, bucket: str, key: str, if_match: str | None = None) -> bool:
        """`if_match` cannot be checked here (`version` is only "present"): the object is removed."""
        url = self._url(self._segments("delete", bucket, key))
        with self._errors("delete", bucket, key):
            response = self._send("DELETE", url)
            with response:
                if response.status_code != 404 and not 200 <= response.status_code < 300:
                    self._fail(response, "delete", bucket, key, "object")
        return True

    def exists(self, bucket: str, key: str) -> bool:
        raise NotImplementedError

    def version(self, bucket: str, key: str) -> str | None:
        """Only whether the object is there ("-"): these stores give no version token we rely on."""
        return "-" if self.exists(bucket, key) else None

    def ensure_bucket(self, bucket: str) -> None:
        folder = self._segments("create bucket", bucket, None)
        with self._errors("create bucket", bucket):
            self._ensure_folder("create bucket", bucket, None, folder)

    def _start_folder(self, bucket: str, prefix: str) -> tuple[str, ...]:
        """The deepest folder a listing prefix names ("a/b/c" -> (bucket, "a", "b")), else the bucket."""
        parts = prefix.split("/")[:-1]
        if any(part in ("", ".", "..") for part in parts):
            return (bucket,)
        return (bucket, *parts)
