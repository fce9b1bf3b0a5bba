"""The WebDAV store: dCache, ownCloud/Nextcloud, Apache mod_dav, SeaweedFS, WsgiDAV ...

    storage_providers: {webdav: {dcache: {hostname: dcache.example.org:2880/pnfs/data, login: u, password: p}}}
    output: [{storage_provider: webdav.dcache, path: results/run1}]   # -> .../pnfs/data/results/run1/<file>

As faas-supervisor does it (webdavclient3 with `https://` + hostname): object bucket/key is the URL
`<hostname>/<bucket>/<key>`, https unless the hostname carries a scheme. Unlike it, every missing
folder of the path is created (MKCOL, top-down), not only the last one, and errors are raised, not
logged. Requests: GET (streamed into a staging file), PUT (streamed from the file, with a
Content-Type, which most servers ignore and derive from the name), MKCOL, PROPFIND (Depth 0 to
test a path; Depth infinity to list, then Depth 1 folder by folder where the answer shows a folder
with nothing below it, since SabreDAV answers infinity as Depth 1; Depth 1 only, from then on,
once a server refuses infinity, as RFC 4918 allows and Apache does by default). Basic
authentication when a login is given; TLS checked unless `verify: false`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urljoin, urlsplit
from xml.etree import ElementTree

from conveyor.config import StorageProvider
from conveyor.errors import ConfigError
from conveyor.storage.base import TransferOptions
from conveyor.storage.http import HttpStore, http_base_url

DAV = "{DAV:}"
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/></D:prop></D:propfind>'
)


class WebDavStore(HttpStore):
    """A WebDAV server; buckets are the top folders under `hostname`, created on first upload."""

    missing_parent = frozenset({409})  # RFC 4918: PUT into a missing collection is 409 Conflict

    def __init__(self, provider: StorageProvider, options: TransferOptions) -> None:
        key = f"storage_providers.webdav.{provider.ref.id}.hostname"
        if not provider.host:
            raise ConfigError(f"the WebDAV provider '{provider.ref}' needs a hostname", key=key)
        super().__init__(provider, options, http_base_url(provider.host, key))
        if provider.login:
            self.session.auth = (provider.login, provider.password or "")
        self.depth_infinity = True  # turned off for good when the server refuses a Depth: infinity PROPFIND

    # -- PROPFIND --------------------------------------------------------------------------------
    def _propfind(self, url: str, depth: str) -> Any:
        headers = {"Depth": depth, "Content-Type": "application/xml; charset=utf-8"}
        return self._send("PROPFIND", url, data=PROPFIND_BODY, headers=headers)

    def _entries(self, response: Any, operation: str, bucket: str, key: str | None) -> list[tuple[str, str, bool]]:
        """(href, decoded path without trailing '/', is_collection) per resource of a 207 answer."""
        try:
            root = ElementTree.fromstring(response.content)
        except ElementTree.ParseError as exc:
            self._raise(operation, bucket, key, f"unreadable PROPFIND answer: {exc}", cause="ParseError")
        found = []
        for item in root.iter(f"{DAV}response"):
            href = (item.findtext(f"{DAV}href") or "").strip()
            status = item.findtext(f"{DAV}status")  # a response-level status: the resource is gone, or refused
            if not href or (status and " 200 " not in f"{status} "):
                continue
            collection = item.find(f".//{DAV}resourcetype/{DAV}collection") is not None
            found.append((href, unquote(urlsplit(href).path).rstrip("/"), collection))
        return found

    # -- folders ---------------------------------------------------------------------------------
    def _folder_exists(self, operation: str, bucket: str, key: str | None, folder: tuple[str, ...]) -> bool:
        with self._propfind(self._url(folder, folder=True), "0") as response:
            if response.status_code == 404:
                return False
            if response.status_code != 207:
                self._fail(response, operation, bucket, key, "folder")
            entries = self._entries(response, operation, bucket, key)
        if entries and not entries[0][2]:
            self._raise(operation, bucket, key, f"'{'/'.join(folder)}' is a file, not a folder")
        return True

    def _make_folder(self, operation: str, bucket: str, key: str | None, folder: tuple[str, ...]) -> None:
        with self._send("MKCOL", self._url(folder, folder=True)) as response:
            # 405: it exists already (another writer was quicker)
            if response.status_code not in (200, 201, 204, 405):
                self._fail(response, operation, bucket, key, "parent folder")

    # -- queries ---------------------------------------------------------------------------------
    def exists(self, bucket: str, key: str) -> bool:
        url = self._url(self._segments("stat", bucket, key))
        with self._errors("stat", bucket, key), self._propfind(url, "0") as response:
            if response.status_code == 404:
                return False
            if response.status_code != 207:
                self._fail(response, "stat", bucket, key)
            entries = self._entries(response, "stat", bucket, key)
            return bool(entries) and not entries[0][2]  # a folder is not an object

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        where = prefix or None
        bucket_folder = self._segments("list", bucket, None)
        start = self._start_folder(bucket, prefix)
        base = unquote(urlsplit(self._url(bucket_folder, folder=True)).path)
        with self._errors("list", bucket, where):
            keys = []
            for _, path, collection in self._walk(self._url(start, folder=True), bucket, where, len(start) == 1):
                if not collection and path.startswith(base):
                    key = path[len(base) :]
                    if key.startswith(prefix):
                        keys.append(key)
            return sorted(keys)

    def _walk(self, url: str, bucket: str, where: str | None, is_bucket: bool) -> list[tuple[str, str, bool]]:
        """Every resource below the folder `url` (itself excluded). A missing bucket is an error,
        a missing folder inside it an empty listing."""
        top = unquote(urlsplit(url).path).rstrip("/")
        found: list[tuple[str, str, bool]] = []
        pending, seen = [url], {top}
        if self.depth_infinity:
            with self._propfind(url, "infinity") as response:
                if response.status_code in (401, 404):
                    return self._missing(response, bucket, where, is_bucket)
                if response.status_code == 207:
                    found = [entry for entry in self._entries(response, "list", bucket, where) if entry[1] != top]
                else:  # 403 propfind-finite-depth (Apache's default), 400, 501 ...: one folder at a time
                    self.depth_infinity = False
            if self.depth_infinity:
                # SabreDAV (ownCloud, Nextcloud) answers infinity as Depth 1 unless told otherwise: a
                # folder shown with nothing below it is walked one level at a time, to be sure.
                parents = {path.rsplit("/", 1)[0] for _, path, _ in found}
                seen.update(path for _, path, _ in found)
                pending = [urljoin(url, href) for href, path, collection in found if collection and path not in parents]
        while pending:
            folder_url = pending.pop()
            with self._propfind(folder_url, "1") as response:
                if response.status_code != 207:
                    if folder_url == url:
                        return self._missing(response, bucket, where, is_bucket)
                    self._fail(response, "list", bucket, where, "folder")
                entries = self._entries(response, "list", bucket, where)
            for href, path, collection in entries:
                if path in seen:  # the folder itself, or one already listed
                    continue
                seen.add(path)
                found.append((href, path, collection))
                if collection:
                    pending.append(urljoin(folder_url, href))
        return found

    def _missing(self, response: Any, bucket: str, where: str | None, is_bucket: bool) -> list[tuple[str, str, bool]]:
        if response.status_code == 404 and not is_bucket:
            return []
        self._fail(response, "list", bucket, where, "bucket folder" if is_bucket else "folder")
