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
# A request that finds another renewing tokens that have already expired re-reads the row
# this many times at most, this far apart, for the new ones: long enough for a renewal (a
# database transaction), bounded so that a worker that died mid-renewal costs a sign-in
# page, never a hung request. The wait is in the database, so it works across workers.
_RENEWAL_CHECKS = 30
_RENEWAL_PAUSE_SECONDS = 0.1
# A claim to renew older than this was abandoned (its worker died or failed): another request
# may claim the session again. Well beyond the wait above, so a live renewal is never doubled.
_CLAIM_SECONDS = 10.0


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
    renewing: float = 0.0  # when a request claimed the renewal of the tokens, 0 if none is
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
        row renews; the other goes on with the token it has, valid for the margin still, or,
        if that has expired already (the reader came back after the token's lifetime), waits
        for the renewing request's tokens."""
        assert self.store is not None
        now = self.store.clock()
        if now < self.access_expires - _REFRESH_MARGIN_SECONDS:
            return self.access_token
        # A claim stands in the row until the new tokens replace it: a request that read the
        # row after another claimed it must not claim (and spend the refresh token) again.
        if now - self.renewing >= _CLAIM_SECONDS and self.store.claim(self):
            self.hold(refresh(self.refresh_token))
        else:
            self._await_renewal()
        return self.access_token

    def _await_renewal(self) -> None:
        """Take the tokens another request is renewing: those stored now if they are still
        valid, else the new ones once stored (bounded: see _RENEWAL_CHECKS)."""
        assert self.store is not None
        for check in range(_RENEWAL_CHECKS):
            if check:
                self.store.pause()
            latest = self.store.get(self.cookie)
            if latest is None or not latest.signed_in:
                return  # ended meanwhile (signed out): what this request holds fails, rightly
            self.adopt(latest)
            if self.store.clock() < self.access_expires:
                return

    def adopt(self, other: WebSession) -> None:
        """Take the tokens another request stored."""
        self.access_token = other.access_token
        self.refresh_token = other.refresh_token
        self.access_expires = other.access_expires
        self.renewing = other.renewing
        self.version = other.version

    def hold(self, tokens: LoginResult) -> None:
        """Keep a service session's tokens (ending a claim to renew them)."""
        assert self.store is not None
        self.access_token = tokens.access_token
        self.refresh_token = tokens.refresh_token
        self.access_expires = self.store.clock() + tokens.expires_in
        self.renewing = 0.0
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
                "renewing": self.renewing,
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
                # Absent from sessions stored before claims were kept in the row.
                renewing=float(state.get("renewing", 0.0)),
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
        """Take the right to renew a session's tokens (see WebSession.access): marked in the
        stored state, so that a request reading it meanwhile waits instead of claiming."""
        unclaimed = session.renewing
        session.renewing = self.clock()
        if self.rows.save(
            session.cookie, session.state(), signed_in=session.signed_in, version=session.version
        ):
            session.version += 1
            return True
        session.renewing = unclaimed
        return False

    def pause(self) -> None:
        """Wait a little before reading again a session another request is renewing."""
        time.sleep(_RENEWAL_PAUSE_SECONDS)

    def drop(self, cookie: str | None, *, version: int | None = None) -> bool:
        """Forget a session (sign-out, or its service session ended); with ``version``, only
        if no other request changed it since (see WebSessionStore.drop). Whether it was."""
        if not cookie:
            return False
        return self.rows.drop(cookie, version=version)
