"""Web sessions: what a browser's cookie refers to, kept in the vault's database (see
vault/websessions.py) so that every server worker, and a restarted server, serves it.

A session holds the service session's tokens (from ``Vault.login``), never a password, and a
CSRF token. The service session underneath (the ``usersession`` table) is the authority: each
request authenticates its access token, so sign-out, a password change, a disabled user or a
changed role end the web session on the next request, exactly as they end an API client's.
A session that has not signed in yet (the sign-in page) holds only its CSRF token and the
language chosen. The cookie carries 256 random bits; the database holds only their hash and
the session's state sealed under a key only the cookie gives.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vault.schemas import LoginResult
from vault.websessions import Held, WebSessionStore

# Refresh the access token this long before it expires, so no request carries a dead one.
_REFRESH_MARGIN_SECONDS = 30


@dataclass
class WebSession:
    """One browser's session: tokens once signed in, a CSRF token, the reader's choices.
    Changes are written through to the store at once."""

    csrf: str
    lang: str | None = None
    tz: str | None = None
    access_token: str = ""
    refresh_token: str = ""
    access_expires: float = 0.0  # seconds since the epoch
    store: SessionStore | None = field(default=None, repr=False, compare=False)
    cookie: str = field(default="", repr=False, compare=False)
    version: int = field(default=0, repr=False, compare=False)

    @property
    def signed_in(self) -> bool:
        """Whether the session holds a service session's tokens."""
        return bool(self.access_token)

    def csrf_ok(self, given: str) -> bool:
        """Constant-time check of a form's CSRF token against this session's."""
        return hmac.compare_digest(given.encode(), self.csrf.encode())

    def access(self, refresh: Callable[[str], LoginResult]) -> str:
        """The current access token, renewed through ``refresh`` (``Vault.refresh``) when it
        is about to expire. Two requests (in any worker) must not both spend the same refresh
        token, which the service takes as theft and ends the session: the one that claims the
        row renews; the other goes on with the token it has, valid for the margin still."""
        assert self.store is not None
        if self.store.clock() < self.access_expires - _REFRESH_MARGIN_SECONDS:
            return self.access_token
        if self.store.claim(self):
            self.hold(refresh(self.refresh_token))
        else:
            latest = self.store.get(self.cookie)
            if latest is not None and latest.signed_in:
                self.adopt(latest)
        return self.access_token

    def adopt(self, other: WebSession) -> None:
        """Take the tokens another request stored."""
        self.access_token = other.access_token
        self.refresh_token = other.refresh_token
        self.access_expires = other.access_expires
        self.version = other.version

    def hold(self, tokens: LoginResult) -> None:
        """Keep a service session's tokens."""
        assert self.store is not None
        self.access_token = tokens.access_token
        self.refresh_token = tokens.refresh_token
        self.access_expires = self.store.clock() + tokens.expires_in
        self.store.save(self)

    def remember(self, *, lang: str | None = None, tz: str | None = None) -> None:
        """Keep the reader's language and zone (those given)."""
        assert self.store is not None
        self.lang = lang or self.lang
        self.tz = tz or self.tz
        self.store.save(self)

    def state(self) -> bytes:
        """What the store keeps (sealed) of this session."""
        return json.dumps(
            {
                "csrf": self.csrf,
                "lang": self.lang,
                "tz": self.tz,
                "access": self.access_token,
                "refresh": self.refresh_token,
                "expires": self.access_expires,
            }
        ).encode()


class SessionStore:
    """The web sessions, by the hash of their cookie value: any unused for ``idle_seconds``
    or older than ``lifetime_seconds`` is gone; beyond ``max_sessions`` the least recently
    seen that never signed in go first, then the least recently seen."""

    def __init__(
        self,
        rows: WebSessionStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rows = rows
        self.clock = clock

    def new(self, *, lang: str | None = None, tz: str | None = None) -> tuple[str, WebSession]:
        """A fresh session and the cookie value that refers to it."""
        cookie = secrets.token_urlsafe(32)
        session = WebSession(
            csrf=secrets.token_urlsafe(32), lang=lang, tz=tz, store=self, cookie=cookie
        )
        self.rows.create(cookie, session.state(), signed_in=False)
        return cookie, session

    def get(self, cookie: str | None) -> WebSession | None:
        """The live session a cookie refers to, or None."""
        held = self.rows.load(cookie or "")
        return None if held is None else self._session(cookie or "", held)

    def _session(self, cookie: str, held: Held) -> WebSession | None:
        try:
            state = json.loads(held.state)
            return WebSession(
                csrf=str(state["csrf"]),
                lang=state["lang"],
                tz=state["tz"],
                access_token=str(state["access"]),
                refresh_token=str(state["refresh"]),
                access_expires=float(state["expires"]),
                store=self,
                cookie=cookie,
                version=held.version,
            )
        except (ValueError, KeyError, TypeError):
            return None  # written by another release of this code: start afresh

    def save(self, session: WebSession) -> None:
        """Write a session's state; on success its version moves on. A request that lost the
        race keeps what it has for this answer; the next request reads the winner's state."""
        if self.rows.save(
            session.cookie, session.state(), signed_in=session.signed_in, version=session.version
        ):
            session.version += 1

    def claim(self, session: WebSession) -> bool:
        """Take the right to renew a session's tokens (see WebSession.access)."""
        if self.rows.claim(session.cookie, session.version):
            session.version += 1
            return True
        return False

    def drop(self, cookie: str | None) -> None:
        """Forget a session (sign-out, or its service session ended)."""
        if cookie:
            self.rows.drop(cookie)
