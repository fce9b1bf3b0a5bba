"""The gateway's accounts: names and scrypt-hashed, salted passwords, held in memory.

    users = Users.from_specs(["alice:s3cret", "bob:hunter22"])   # `--user NAME:PASSWORD`, repeatable
    users, password = Users.generated()                          # one user "scientist", random password
    users.verify("alice", "s3cret")                               # True

A name is what the user's folder is called in every bucket (`<input path>/<name>/...`), so it is
limited to letters, digits, '.', '_' and '-' (not starting with '.'). Passwords are never logged nor
kept: only a random salt and the scrypt hash, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from conveyor.errors import ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
# scrypt's cost (RFC 7914 interactive parameters): about 50 ms and 16 MiB per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class _Account:
    salt: bytes
    digest: bytes


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)


class Users:
    """name -> salted scrypt hash. Build with from_specs or generated."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}
        self._dummy = _Account(secrets.token_bytes(16), b"\0" * 32)  # an unknown name costs as much

    def add(self, name: str, password: str) -> None:
        if not NAME_PATTERN.match(name):
            raise ConfigError(
                f"user name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-' "
                "(it names the user's folder in the buckets)",
                key="--user",
            )
        if not password:
            raise ConfigError(f"user {name!r} has an empty password", key="--user")
        if name in self._accounts:
            raise ConfigError(f"user {name!r} is given twice", key="--user")
        salt = secrets.token_bytes(16)
        self._accounts[name] = _Account(salt, _hash(password, salt))

    @classmethod
    def from_specs(cls, specs: Iterable[str]) -> Users:
        """Users from "name:password" strings (the password may hold ':')."""
        users = cls()
        for spec in specs:
            name, colon, password = spec.partition(":")
            if not colon:
                raise ConfigError("a user is given as NAME:PASSWORD (the password is missing)", key="--user")
            users.add(name, password)
        return users

    @classmethod
    def generated(cls, name: str = "scientist") -> tuple[Users, str]:
        """One user with a random password, returned so the caller can print it once."""
        password = secrets.token_urlsafe(12)
        users = cls()
        users.add(name, password)
        return users, password

    def verify(self, name: str, password: str) -> bool:
        account = self._accounts.get(name)
        candidate = _hash(password, (account or self._dummy).salt)
        return account is not None and hmac.compare_digest(candidate, account.digest)

    def __contains__(self, name: object) -> bool:
        return name in self._accounts

    @property
    def names(self) -> list[str]:
        return sorted(self._accounts)

    def __len__(self) -> int:
        return len(self._accounts)

    def __repr__(self) -> str:
        return f"Users({self.names})"
