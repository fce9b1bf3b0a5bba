"""Who is asking: a session cookie (after POST /login) or HTTP Basic (`curl -u name:password`).

The cookie holds a random session token signed with the gateway's secret (itsdangerous): HttpOnly,
SameSite=Strict, Path=/. Sessions live in memory (a restart logs everyone out; /logout ends one).
Every state-changing request made with the cookie must carry the session's CSRF token in the
X-CSRF-Token header (GET /api/session gives it). HTTP Basic needs no CSRF token: browsers never
add an Authorization header the page did not ask for, since the gateway never answers with a Basic
challenge to the page (its requests carry X-Requested-With) and refuses cross-site requests.
Passwords are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection

from conveyor.gateway.users import Users

COOKIE = "conveyor_session"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
BASIC_REMEMBERED = 60.0  # seconds a checked Basic login is remembered (scrypt costs ~50 ms per check)


class AuthError(Exception):
    """401 (who are you?) or 403 (not like this)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    created: float


@dataclass(frozen=True)
class Caller:
    user: str
    via: str  # "cookie" | "basic"
    csrf: str | None = None


class Sessions:
    def __init__(self, users: Users, secret: bytes) -> None:
        self.users = users
        self._signer = URLSafeTimedSerializer(secret, salt="conveyor-gateway-session")
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        # keyed HMAC of "name:password" -> until when it is known good: a script polling with
        # `curl -u` does not pay scrypt per request; neither the password nor a plain hash is kept
        self._basic_key = secrets.token_bytes(32)
        self._basic_ok: dict[bytes, float] = {}

    def login(self, name: str, password: str) -> tuple[str, Session] | None:
        """(cookie value, session) for good credentials, None otherwise."""
        if not self.users.verify(name, password):
            return None
        token = secrets.token_urlsafe(32)
        session = Session(name, secrets.token_urlsafe(32), time.time())
        with self._lock:
            self._sessions[token] = session
        return self._signer.dumps(token), session

    def logout(self, cookie: str | None) -> None:
        token = self._token(cookie)
        if token is not None:
            with self._lock:
                self._sessions.pop(token, None)

    def _token(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            value = self._signer.loads(cookie, max_age=SESSION_SECONDS)
        except BadSignature:
            return None
        return value if isinstance(value, str) else None

    def session(self, cookie: str | None) -> Session | None:
        token = self._token(cookie)
        if token is None:
            return None
        with self._lock:
            return self._sessions.get(token)

    def _basic_verified(self, name: str, password: str) -> bool:
        given = f"{name}:{password}".encode("utf-8", "surrogatepass")
        digest = hmac.new(self._basic_key, given, hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            if self._basic_ok.get(digest, 0.0) > now:
                return True
        if not self.users.verify(name, password):
            return False
        with self._lock:
            if len(self._basic_ok) > 1000:
                self._basic_ok = {k: v for k, v in self._basic_ok.items() if v > now}
            self._basic_ok[digest] = now + BASIC_REMEMBERED
        return True

    def caller(self, request: HTTPConnection, method: str) -> Caller:
        """The authenticated caller, or AuthError(401/403)."""
        changing = method.upper() not in SAFE_METHODS
        if changing and request.headers.get("sec-fetch-site") == "cross-site":
            raise AuthError(403, "cross-site requests are refused")
        header = request.headers.get("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                raise AuthError(401, "only HTTP Basic credentials or the session cookie are accepted")
            try:
                name, colon, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError(401, "malformed Basic credentials") from None
            if not colon or not self._basic_verified(name, password):
                raise AuthError(401, "wrong user name or password")
            return Caller(name, "basic")
        session = self.session(request.cookies.get(COOKIE))
        if session is None:
            raise AuthError(401, "log in first (POST /login), or send HTTP Basic credentials")
        if changing:
            sent = request.headers.get("x-csrf-token", "")
            if not sent or not hmac.compare_digest(sent, session.csrf):
                raise AuthError(403, "missing or wrong CSRF token: send the X-CSRF-Token header GET /api/session gives")
        return Caller(session.user, "cookie", session.csrf)
