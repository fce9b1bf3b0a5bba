"""The gateway beside the loop: `conveyor local` without --once serves the web page (conveyor.gateway)
over the running model, so a person can upload files and follow them in a browser.

    port     --gateway-port: exact when given (0 = no gateway); else DEFAULT_PORT, or a free port
             when something already listens there
    login    --user NAME:PASSWORD (repeatable); else the login kept in DIR/.conveyor/gateway-login
             (mode 0600), or one made up (user `scientist`, a random password) and kept there
    catalog  one entry: the running model under its --model name, or the definition's name with
             --config, with its storage (the embedded server's buckets) and an example input

conveyor.gateway (and its web server) is imported here, when a run starts one: --once, --help and
the tests of the loop alone never load it.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigError
from conveyor.local import GATEWAY_PORT as DEFAULT_PORT

if TYPE_CHECKING:
    from conveyor.config import FunctionConfig

HOST = "127.0.0.1"
LOGIN_FILE = "gateway-login"  # in DIR/.conveyor: "name:password", reused by the next run
SECRET_FILE = "gateway-secret"  # in DIR/.conveyor: the session cookies' signing key, so a restart keeps them
GENERATED_USER = "scientist"


@dataclass(frozen=True)
class Entry:
    """What the loop knows of its model, for the catalogue."""

    name: str
    title: str
    description: str
    accepts: tuple[str, ...]
    example: Path | None


@dataclass(frozen=True)
class Login:
    """The gateway's users; `shown` is the made-up login to print (None: the person gave theirs)."""

    users: Any  # conveyor.gateway.users.Users
    shown: str | None = None  # "name:password"
    path: Path | None = None  # where the made-up login is kept


def catalogue_name(text: str) -> str:
    """A catalogue name (URL-safe: [a-z0-9-_]+) for a model or definition name."""
    name = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-")
    return name or "model"


def choose_port(requested: int | None, host: str = HOST, default: int = DEFAULT_PORT) -> int:
    """`requested` as given (0 = no gateway); None: `default` when it is free, else 0 (the server
    picks a free one)."""
    if requested is not None:
        return requested
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server binds: the connections of a previous run waiting out TIME_WAIT do not
        # count, or a restart would move the page to another port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, default))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return 0
    return default


def login(specs: Sequence[str], private: Path) -> Login:
    """The users: those of --user, else the kept login, else a made-up one (kept for next time)."""
    from conveyor.gateway.users import Users

    if specs:
        return Login(Users.from_specs(specs))  # ConfigError for a malformed one
    path = private / LOGIN_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip()
        return Login(Users.from_specs([kept]), kept, path)
    except (OSError, UnicodeDecodeError, ConfigError):  # none yet, or spoiled: make one up
        pass
    users, password = Users.generated(GENERATED_USER)
    shown = f"{GENERATED_USER}:{password}"
    write_private(path, shown + "\n")
    return Login(users, shown, path)


def session_secret(private: Path) -> bytes:
    """The key that signs session cookies, kept in DIR/.conveyor (0600): a restart keeps people logged in."""
    path = private / SECRET_FILE
    try:
        secret = bytes.fromhex(path.read_text().strip())
        if len(secret) >= 32:
            return secret
    except (OSError, ValueError):
        pass
    secret = secrets.token_bytes(32)
    write_private(path, secret.hex() + "\n")
    return secret


def start(entry: Entry, config: FunctionConfig, users: Any, *, port: int, secret: bytes,
          environ: Mapping[str, str]) -> tuple[Any, str]:
    """A started conveyor.gateway.server.Gateway with one catalogue entry, and its base URL."""
    from conveyor.gateway.catalogue import Model
    from conveyor.gateway.server import Gateway

    model = Model(name=entry.name, title=entry.title, description=entry.description, accepts=entry.accepts,
                  config=config, platform="local", example=entry.example)
    gateway = Gateway([model], users, host=HOST, port=port, secret=secret, environ=environ)
    return gateway, gateway.start()


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
