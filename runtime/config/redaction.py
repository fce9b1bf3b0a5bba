"""What counts as a secret in a function definition, and how it is masked for `conveyor inspect`.

The package's leaf: it imports nothing of conveyor.config (model.py uses it to draw its redacted views).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"

# Environment variables and handler options whose names look like secrets are redacted. The rule is
# broad on purpose (DB_PASS, MY_KEY, SIGNING_KEY, AUTH_HEADER, DB_PWD, SESSION_ID ...): masking a
# harmless value in `inspect` costs little, showing a password costs a lot.
SECRET_NAME = re.compile(
    r"secret|token|pass|pwd|key|sign|auth|cred|private|session|cookie|salt|dsn",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """A name that looks like it holds a secret (`AWS_SECRET_ACCESS_KEY`, `api_key`, `db_password` ...)."""
    return SECRET_NAME.search(name) is not None


def redact_by_name(values: Mapping[str, str]) -> dict[str, str]:
    """A flat mapping (environment variables) with the values of secret-looking names masked."""
    return {k: REDACTED if is_secret_name(k) else v for k, v in values.items()}


def redact_options(value: Any) -> Any:
    """A nested YAML value (handler options) made JSON-ready, secret-looking keys masked at any depth."""
    if isinstance(value, Mapping):
        return {str(k): REDACTED if is_secret_name(str(k)) else redact_options(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_options(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # dates and other YAML scalars


def mask_fields(obj: Any, names: tuple[str, ...]) -> dict[str, str]:
    """The named attributes of `obj` that are set, each shown as '***'."""
    return {name: REDACTED for name in names if getattr(obj, name) is not None}


# A secret-named variable's value this long or longer is masked where the model's own output is kept
# (the record's log tail); shorter values ("true", "1") would mask ordinary words.
MIN_MASKED_LENGTH = 8


def secret_values(*environments: Mapping[str, str]) -> list[str]:
    """The values of secret-looking variables (`OSCAR_SERVICE_TOKEN`, `AWS_SECRET_ACCESS_KEY` ...), longest first."""
    found = {
        value
        for env in environments
        for name, value in env.items()
        if is_secret_name(name) and len(value) >= MIN_MASKED_LENGTH
    }
    return sorted(found, key=len, reverse=True)


# Credentials by where they stand in a log line, whatever their value: botocore's DEBUG lines show
# request headers ({'X-Amz-Security-Token': b'...', 'Authorization': b'AWS4-HMAC-SHA256 ...
# Signature=...'}), canonical requests (x-amz-security-token:...) and presigned URLs
# (X-Amz-Security-Token=...&X-Amz-Signature=...); Onedata sends X-Auth-Token, WebDAV Basic auth.
SECRET_FIELD = re.compile(
    r"""(?P<name>x-amz-security-token|x-auth-token|x-amz-signature|signature|authorization|aws_session_token
            |aws_secret_access_key|secret_?key|password)
        (?P<sep>['"]?\s*[:=]\s*(?:b?['"])?)
        (?P<scheme>(?:basic|bearer|token)\s+)?
        (?P<value>[^\s'",&;)}\]]+)""",
    re.IGNORECASE | re.VERBOSE,
)


def mask_fields_in_text(text: str) -> str:
    """`text` with the value of every credential-bearing header, parameter or field replaced by '***'."""
    return SECRET_FIELD.sub(lambda m: f"{m['name']}{m['sep']}{m['scheme'] or ''}{REDACTED}", text)


def mask_values(text: str, values: list[str]) -> str:
    """`text` with every occurrence of each value replaced by '***'."""
    for value in values:
        text = text.replace(value, REDACTED)
    return text
