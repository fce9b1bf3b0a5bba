"""The Onedata store, through the Oneprovider's CDMI 1.1.1 interface (what faas-supervisor uses).

    storage_providers: {onedata: {egi: {oneprovider_host: op.example.org, token: <access token>, space: plants}}}
    output: [{storage_provider: onedata.egi, path: results/run1}]   # -> /cdmi/plants/results/run1/<file>

As faas-supervisor does it: object bucket/key is `https://<oneprovider_host>/cdmi/<space>/<bucket>/<key>`
(https unless the host carries a scheme), every request carries the header `X-Auth-Token: <token>`,
and file content moves as plain (non-CDMI) GET and PUT bodies, streamed. Unlike it, missing folders
are created (CDMI containers: PUT `<folder>/` with `Content-Type: application/cdmi-container` and
`X-CDMI-Specification-Version`), and errors are raised, not logged. Tests and listings use CDMI
reads: `?objectType` to tell a file from a folder, `?children:<from>-<to>` to list a folder a page at
a time. Redirects are not followed, so the token never travels to another host.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from conveyor.config import StorageProvider
from conveyor.errors import ConfigError
from conveyor.storage.base import TransferOptions
from conveyor.storage.http import HttpStore, http_base_url

CDMI_VERSION = "1.1.1"
CDMI_OBJECT = "application/cdmi-object"
CDMI_CONTAINER = "application/cdmi-container"
LIST_PAGE = 1000  # children asked for per listing request


class OnedataStore(HttpStore):
    """A Onedata space; buckets are its top folders, created on first upload."""

    list_page = LIST_PAGE
    missing_parent = frozenset({404})  # Onedata answers a PUT into a missing folder with 404 (ENOENT)
    allow_redirects = False

    def __init__(self, provider: StorageProvider, options: TransferOptions) -> None:
        prefix = f"storage_providers.onedata.{provider.ref.id}"
        for field, name in (("host", "oneprovider_host"), ("token", "token"), ("space", "space")):
            if not getattr(provider, field):
                raise ConfigError(f"the Onedata provider '{provider.ref}' needs '{name}'", key=f"{prefix}.{name}")
        assert provider.host and provider.token and provider.space
        base = http_base_url(provider.host, f"{prefix}.oneprovider_host")
        super().__init__(provider, options, f"{base}/cdmi/{quote(provider.space, safe='')}")
        self.session.headers["X-Auth-Token"] = provider.token

    def _error_detail(self, response: Any) -> str:
        """Onedata explains errors as {"error": {"id": ..., "description": ...}}."""
        if "json" not in response.headers.get("Content-Type", ""):
            return super()._error_detail(response)
        try:
            error = json.loads(next(response.iter_content(4096), b"") or b"{}").get("error")
        except (ValueError, AttributeError):
            return ""
        if isinstance(error, dict):
            error = error.get("description") or error.get("id")
        return " ".join(str(error).split())[:200] if error else ""

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        """A CDMI answer's JSON object ({} when the body is anything else)."""
        try:
            value = response.json()
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def _cdmi_get(self, url: str, accept: str) -> Any:
        return self._send("GET", url, headers={"X-CDMI-Specification-Version": CDMI_VERSION, "Accept": accept})

    # -- folders ---------------------------------------------------------------------------------
    def _folder_exists(self, operation: str, bucket: str, key: str | None, folder: tuple[str, ...]) -> bool:
        url = self._url(folder, folder=True)
        with self._cdmi_get(f"{url}?objectType", CDMI_CONTAINER) as response:
            if response.status_code == 404:
                return False
            if response.status_code != 200:
                self._fail(response, operation, bucket, key, "folder")
            kind = self._json(response).get("objectType")
        if kind != CDMI_CONTAINER:
            self._raise(operation, bucket, key, f"'{'/'.join(folder)}' is a {kind or 'file'}, not a folder")
        return True

    def _make_folder(self, operation: str, bucket: str, key: str | None, folder: tuple[str, ...]) -> None:
        headers = {
            "X-CDMI-Specification-Version": CDMI_VERSION,
            "Content-Type": CDMI_CONTAINER,
            "Accept": CDMI_CONTAINER,
        }
        with self._send("PUT", self._url(folder, folder=True), headers=headers) as response:
            if not 200 <= response.status_code < 300 and response.status_code != 409:  # 409: made meanwhile
                self._fail(response, operation, bucket, key, "parent folder")

    # -- queries ---------------------------------------------------------------------------------
    def exists(self, bucket: str, key: str) -> bool:
        url = self._url(self._segments("stat", bucket, key))
        with self._errors("stat", bucket, key), self._cdmi_get(f"{url}?objectType", CDMI_OBJECT) as response:
            if response.status_code == 404 or 300 <= response.status_code < 400:  # 3xx: a folder, per CDMI
                return False
            if response.status_code != 200:
                self._fail(response, "stat", bucket, key)
            return self._json(response).get("objectType") == CDMI_OBJECT

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        where = prefix or None
        self._segments("list", bucket, None)
        start = self._start_folder(bucket, prefix)
        keys: list[str] = []
        with self._errors("list", bucket, where):
            pending = [start]
            while pending:
                folder = pending.pop()
                for child in self._children(folder, bucket, where, is_start=folder == start):
                    if child.endswith("/"):
                        pending.append((*folder, child.rstrip("/")))
                        continue
                    key = "/".join((*folder[1:], child))
                    if key.startswith(prefix):
                        keys.append(key)
        return sorted(keys)

    def _children(self, folder: tuple[str, ...], bucket: str, where: str | None, is_start: bool) -> list[str]:
        """The names in a folder ('/'-terminated for folders), a page at a time. A missing bucket
        is an error, a missing folder inside it an empty listing."""
        url = self._url(folder, folder=True)
        children: list[str] = []
        while True:
            page = f"{url}?children:{len(children)}-{len(children) + self.list_page - 1}"
            with self._cdmi_get(page, CDMI_CONTAINER) as response:
                if response.status_code == 404 and is_start and len(folder) > 1:
                    return []
                if response.status_code != 200:
                    self._fail(response, "list", bucket, where, "bucket folder" if len(folder) == 1 else "folder")
                batch = self._json(response).get("children") or []
            children.extend(str(name) for name in batch)
            if len(batch) < self.list_page:
                return children
