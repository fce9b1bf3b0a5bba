"""`storage_providers`: each configured provider's location and credentials, as StorageProvider.

Understands `<type>: {<id>: {...}}`, the early SCAR shape without the id level, and OSCAR's
`hidden` keys. minio.default's keys come from the secret files OSCAR mounts
(<secrets dir>/minio.default/accessKey and secretKey, read through `read_file`) when both are there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from conveyor.config.model import (
    HIDDEN,
    MINIO_DEFAULT,
    MINIO_DEFAULT_ENDPOINT,
    MINIO_SECRET_FILES,
    PROVIDER_TYPES,
    S3_DEFAULT,
    ProviderRef,
    ReadFile,
    StorageProvider,
)
from conveyor.config.values import Section, Values, join

log = logging.getLogger(__name__)

_PROVIDER_FIELDS = {
    "access_key",
    "secret_key",
    "region",
    "endpoint",
    "verify",
    "oneprovider_host",
    "token",
    "space",
    "hostname",
    "login",
    "password",
    "root",
}


def parse_providers(
    values: Values, sections: list[Section], read_file: ReadFile, secrets_dir: str | None
) -> dict[str, StorageProvider]:
    """"minio.default" -> StorageProvider for every provider the sections configure (later sections win)."""
    raw: dict[ProviderRef, tuple[Mapping[Any, Any], str]] = {}
    for section, key in sections:
        for type_name, ids in values.mapping(section, key).items():
            type_key = join(key, str(type_name))
            if str(type_name).lower() not in PROVIDER_TYPES:
                log.debug("ignoring storage provider type %r (%s)", type_name, type_key)
                continue
            ids = values.mapping(ids, type_key)
            if _legacy_provider(ids):  # early SCAR: one unnamed provider per type
                ids = {"default": ids}
            for id_, entry in ids.items():
                entry_key = join(type_key, str(id_))
                raw[ProviderRef(str(type_name).lower(), str(id_))] = (values.mapping(entry, entry_key), entry_key)
    out: dict[str, StorageProvider] = {}
    for ref, (entry, key) in raw.items():
        out[str(ref)] = _provider(values, ref, entry, key)
    files = read_minio_secret_files(read_file, secrets_dir)
    if files is not None:
        base = out.get(str(MINIO_DEFAULT)) or StorageProvider(MINIO_DEFAULT, endpoint=MINIO_DEFAULT_ENDPOINT)
        out[str(MINIO_DEFAULT)] = replace(
            base, access_key=files[0], secret_key=files[1], credentials_source=f"{secrets_dir}/minio.default"
        )
    return out


def read_minio_secret_files(read_file: ReadFile, secrets_dir: str | None) -> tuple[str, str] | None:
    """(access key, secret key) from <secrets_dir>/minio.default/{accessKey,secretKey}, stripped.

    None unless both are there and non-empty: a file absent, unreadable or not UTF-8 counts as absent.
    """
    if secrets_dir is None:
        return None
    folder = Path(secrets_dir) / "minio.default"
    keys: list[str] = []
    for name in MINIO_SECRET_FILES:
        try:
            text = read_file(str(folder / name))
            if text is None:
                return None
            text.encode("utf-8")  # read_text_file keeps undecodable bytes as surrogates: not a key
        except (OSError, UnicodeError):
            return None
        keys.append(text.strip())
    if not all(keys):
        return None
    return keys[0], keys[1]


def check_configured(values: Values, ref: ProviderRef, providers: Mapping[str, StorageProvider], key: str) -> None:
    """ConfigError naming `key` when an entry names a provider that is not configured (the defaults always are)."""
    if str(ref) in providers or ref in (S3_DEFAULT, MINIO_DEFAULT):
        return
    raise values.fail(key, f"names storage provider '{ref}', which is not configured under storage_providers")


def _provider(values: Values, ref: ProviderRef, entry: Mapping[Any, Any], key: str) -> StorageProvider:
    def text(name: str) -> str | None:
        value = values.string(entry.get(name), join(key, name))
        return value if value is not None and value.strip() else None

    def secret(name: str) -> str | None:
        value = text(name)
        return None if value is None or value.strip() == HIDDEN else value

    def required(name: str) -> str:
        value = text(name)
        if value is None:
            raise values.fail(join(key, name), f"is required for a {ref.type} provider")
        return value

    verify = values.boolean(entry.get("verify"), join(key, "verify"), True)
    if ref.type in ("s3", "minio"):
        access, secret_key = secret("access_key"), secret("secret_key")
        if (access is None) != (secret_key is None) and ref != MINIO_DEFAULT:
            missing = "secret_key" if secret_key is None else "access_key"
            raise values.fail(join(key, missing), "is missing (access_key and secret_key go together)")
        endpoint = text("endpoint")
        if endpoint is not None:
            check_endpoint(values, ref, endpoint, join(key, "endpoint"))
        if endpoint is None and ref == MINIO_DEFAULT:
            endpoint = MINIO_DEFAULT_ENDPOINT
        return StorageProvider(
            ref,
            access_key=access,
            secret_key=secret_key,
            region=text("region"),
            endpoint=endpoint,
            verify=bool(verify),
            credentials_source=f"{values.source}: {key}" if access and secret_key else None,
        )
    if ref.type == "onedata":
        return StorageProvider(
            ref,
            host=required("oneprovider_host"),
            token=required("token"),
            space=required("space"),
            credentials_source=f"{values.source}: {key}",
        )
    if ref.type == "webdav":
        return StorageProvider(
            ref,
            host=required("hostname"),
            login=text("login"),
            password=text("password"),
            verify=bool(verify),
            credentials_source=f"{values.source}: {key}" if text("login") else None,
        )
    if ref.type == "rucio":  # parsed so the definition loads; this build has no Rucio store (open_store says so)
        source = f"{values.source}: {key}"
        return StorageProvider(ref, host=text("host"), login=text("account"), credentials_source=source)
    return StorageProvider(ref, root=required("root"))  # local


def check_endpoint(values: Values, ref: ProviderRef, endpoint: str, key: str) -> None:
    """ConfigError naming `key` unless `endpoint` is http(s)://host[:port] (a trailing / allowed).

    Credentials in the URL (user:password@) are refused without echoing them: keys belong in
    access_key/secret_key, where inspect masks them and the logs never show them. A MinIO endpoint may
    leave out the scheme (https then, as the minio SDK reads it); boto3 (s3) needs one.
    """
    has_scheme = "://" in endpoint
    try:
        parts = urlsplit(endpoint if has_scheme else f"https://{endpoint}")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise values.fail(key, "must not hold credentials (user:password@): use access_key and secret_key")
        hostname, _ = parts.hostname, parts.port  # port: ValueError when not a number in range
    except ValueError:
        raise values.fail(key, "is not a URL (expected http(s)://host[:port])") from None
    shown = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "the endpoint"
    if not has_scheme and ref.type == "s3":
        raise values.fail(key, "needs a scheme (expected http(s)://host[:port])")
    if parts.scheme not in ("http", "https"):
        raise values.fail(key, f"must be an http or https URL, not {parts.scheme or 'schemeless'}://")
    if not hostname:
        raise values.fail(key, "has no host (expected http(s)://host[:port])")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise values.fail(key, f"must be {shown} with no path, query or fragment")


def _legacy_provider(ids: Mapping[Any, Any]) -> bool:
    """`s3: {access_key: .., secret_key: ..}` (no id level), as faas-supervisor < 1.0 read it."""
    return bool(ids) and all(k in _PROVIDER_FIELDS and not isinstance(v, Mapping) for k, v in ids.items())
