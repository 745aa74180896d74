"""Web sessions: what a browser's cookie refers to, kept in the server process.

A session holds the service session's tokens (from ``Vault.login``), never a password, and a
CSRF token. The service session underneath (the ``usersession`` table) is the authority: each
request authenticates its access token, so sign-out, a password change, a disabled user or a
changed role end the web session on the next request, exactly as they end an API client's.
A session that has not signed in yet (the sign-in page) holds only its CSRF token and the
language chosen. The cookie carries 256 random bits; only their hash is a key here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from vault.schemas import LoginResult

# Refresh the access token this long before it expires, so no request carries a dead one.
_REFRESH_MARGIN_SECONDS = 30


@dataclass
class WebSession:
    """One browser's session: tokens once signed in, a CSRF token, the reader's choices."""

    csrf: str
    lang: str | None = None
    tz: str | None = None
    access_token: str = ""
    refresh_token: str = ""
    access_expires: float = 0.0  # time.monotonic()
    last_seen: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def signed_in(self) -> bool:
        """Whether the session holds a service session's tokens."""
        return bool(self.access_token)

    def csrf_ok(self, given: str) -> bool:
        """Constant-time check of a form's CSRF token against this session's."""
        return hmac.compare_digest(given.encode(), self.csrf.encode())

    def access(self, refresh: Callable[[str], LoginResult]) -> str:
        """The current access token, renewed through ``refresh`` (``Vault.refresh``) when it
        is about to expire. Under the session's lock: two requests must not both spend the
        same refresh token, which the service takes as theft and ends the session."""
        with self.lock:
            if time.monotonic() >= self.access_expires - _REFRESH_MARGIN_SECONDS:
                self.hold(refresh(self.refresh_token))
            return self.access_token

    def hold(self, tokens: LoginResult) -> None:
        """Keep a service session's tokens."""
        self.access_token = tokens.access_token
        self.refresh_token = tokens.refresh_token
        self.access_expires = time.monotonic() + tokens.expires_in


class SessionStore:
    """The web sessions of this process, by the hash of their cookie value (bounded: beyond
    ``max_sessions`` the least recently seen that never signed in go first, then the least
    recently seen; any unused for ``idle_seconds`` is gone)."""

    def __init__(
        self,
        *,
        idle_seconds: float,
        max_sessions: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._idle = idle_seconds
        self._max = max_sessions
        self._sessions: OrderedDict[bytes, WebSession] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(cookie: str) -> bytes:
        return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).digest()

    def new(self, *, lang: str | None = None, tz: str | None = None) -> tuple[str, WebSession]:
        """A fresh session and the cookie value that refers to it."""
        cookie = secrets.token_urlsafe(32)
        session = WebSession(
            csrf=secrets.token_urlsafe(32), lang=lang, tz=tz, last_seen=self._clock()
        )
        with self._lock:
            self._sessions[self._key(cookie)] = session
            while len(self._sessions) > self._max:
                # Sessions that never signed in go first: a flood of cookie-less requests
                # must not sign officers out.
                victim = next(
                    (key for key, held in self._sessions.items() if not held.signed_in),
                    next(iter(self._sessions)),
                )
                del self._sessions[victim]
        return cookie, session

    def get(self, cookie: str | None) -> WebSession | None:
        """The live session a cookie refers to, or None."""
        if not cookie:
            return None
        key, now = self._key(cookie), self._clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if now - session.last_seen > self._idle:
                del self._sessions[key]
                return None
            session.last_seen = now
            self._sessions.move_to_end(key)
            return session

    def drop(self, cookie: str | None) -> None:
        """Forget a session (sign-out, or its service session ended)."""
        if cookie:
            with self._lock:
                self._sessions.pop(self._key(cookie), None)
