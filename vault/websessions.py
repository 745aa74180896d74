"""The web interface's browser sessions, in the vault's database: any server worker, and a
restarted server, serves the same session.

A row is keyed by the SHA-256 of the cookie value (256 random bits, so the hash can't be
reversed or guessed). What the session holds is opaque here and sealed (AES-256-GCM, bound to
the row's key) under a second hash of the cookie: only a request bearing the cookie can open
it, so neither the database nor the vault's own keys reveal a CSRF token or a service token.
Sessions unused for ``idle_seconds`` or older than ``lifetime_seconds`` are gone; beyond
``max_sessions`` the least recently seen that never signed in go first. Pruning happens on
write, a bounded batch at a time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlmodel import col

from vault import crypto
from vault.db import read_scope, session_scope
from vault.errors import IntegrityError
from vault.models import WebSession

_SEAL_LABEL = b"blo-vault/web-session/seal/v1\x00"
# Rows deleted per write at most: a write never waits on a long purge.
_PRUNE_BATCH = 200
# A read records the visit only when the last one is older than this: not a write per page.
_SEEN_GRANULARITY_SECONDS = 5.0


def _cookie_bytes(cookie: str) -> bytes:
    return cookie.encode("utf-8", "surrogatepass")


def row_key(cookie: str) -> bytes:
    """The key a cookie's row is stored under."""
    return hashlib.sha256(_cookie_bytes(cookie)).digest()


def _seal_key(cookie: str) -> bytes:
    return hashlib.sha256(_SEAL_LABEL + _cookie_bytes(cookie)).digest()


@dataclass(frozen=True)
class Held:
    """A live session's state as stored, and the version a change must name."""

    state: bytes
    version: int


class WebSessionStore:
    """Browser sessions in the database, by the hash of their cookie value."""

    def __init__(
        self,
        engine: Engine,
        *,
        idle_seconds: float,
        lifetime_seconds: float,
        max_sessions: int = 20_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._idle = idle_seconds
        self._lifetime = lifetime_seconds
        self._max = max_sessions
        self._clock = clock  # wall clock: workers share it through the database

    def create(self, cookie: str, state: bytes, *, signed_in: bool) -> None:
        """Store a new session under ``cookie`` (fresh 256 random bits from the caller)."""
        key, now = row_key(cookie), self._clock()
        with session_scope(self._engine) as db:
            self._prune(db.connection(), now)
            db.add(
                WebSession(
                    key=key,
                    sealed=crypto.seal_bytes(_seal_key(cookie), state, context=key),
                    signed_in=signed_in,
                    version=0,
                    created=now,
                    last_seen=now,
                )
            )

    def load(self, cookie: str) -> Held | None:
        """The live session ``cookie`` refers to (its visit recorded), or None."""
        if not cookie:
            return None
        key, now = row_key(cookie), self._clock()
        with read_scope(self._engine) as connection:
            row = connection.execute(
                select(
                    col(WebSession.sealed),
                    col(WebSession.version),
                    col(WebSession.created),
                    col(WebSession.last_seen),
                ).where(col(WebSession.key) == key)
            ).first()
        if row is None:
            return None
        if now - row.last_seen > self._idle or now - row.created > self._lifetime:
            self.drop(cookie)
            return None
        try:
            state = crypto.open_bytes(_seal_key(cookie), row.sealed, context=key)
        except IntegrityError:
            return None  # not this cookie's row (a hash can't collide) or tampered with
        if now - row.last_seen >= min(_SEEN_GRANULARITY_SECONDS, self._idle / 10):
            with session_scope(self._engine) as db:
                db.execute(
                    update(WebSession)
                    .where(col(WebSession.key) == key, col(WebSession.last_seen) < now)
                    .values(last_seen=now)
                )
        return Held(state=state, version=row.version)

    def save(self, cookie: str, state: bytes, *, signed_in: bool, version: int) -> bool:
        """Replace the state of the session at ``version``; False if another request changed
        it first (nothing written then)."""
        key = row_key(cookie)
        sealed = crypto.seal_bytes(_seal_key(cookie), state, context=key)
        return self._bump(key, version, sealed=sealed, signed_in=signed_in)

    def _bump(self, key: bytes, version: int, **values: object) -> bool:
        """Move the session at ``version`` on to the next, writing ``values`` with it."""
        with session_scope(self._engine) as db:
            done = db.connection().execute(
                update(WebSession)
                .where(col(WebSession.key) == key, col(WebSession.version) == version)
                .values(version=version + 1, **values)
            )
            return done.rowcount == 1

    def drop(self, cookie: str, *, version: int | None = None) -> bool:
        """Forget a session (sign-out, or its service session ended); with ``version``, only
        if it is still at that version: a request must not delete a session that another
        changed since it read it (renewed its tokens, say). Whether a row was deleted."""
        if not cookie:
            return False
        query = delete(WebSession).where(col(WebSession.key) == row_key(cookie))
        if version is not None:
            query = query.where(col(WebSession.version) == version)
        with session_scope(self._engine) as db:
            done = db.connection().execute(query)
            return done.rowcount == 1

    def _prune(self, connection: Connection, now: float) -> None:
        """Delete a bounded batch of ended sessions, then of the excess over ``max_sessions``
        (those that never signed in first: a flood of cookie-less requests must not sign
        officers out)."""
        ended = (
            select(col(WebSession.key))
            .where(
                (col(WebSession.last_seen) < now - self._idle)
                | (col(WebSession.created) < now - self._lifetime)
            )
            .limit(_PRUNE_BATCH)
        )
        keys = list(connection.execute(ended).scalars())
        if keys:
            connection.execute(delete(WebSession).where(col(WebSession.key).in_(keys)))
        count = connection.execute(select(func.count()).select_from(WebSession)).scalar_one()
        excess = min(count + 1 - self._max, _PRUNE_BATCH)
        if excess > 0:
            victims = (
                select(col(WebSession.key))
                .order_by(col(WebSession.signed_in), col(WebSession.last_seen))
                .limit(excess)
            )
            keys = list(connection.execute(victims).scalars())
            connection.execute(delete(WebSession).where(col(WebSession.key).in_(keys)))

    def count(self) -> int:
        """How many sessions are stored (live or not yet pruned)."""
        with read_scope(self._engine) as connection:
            return int(
                connection.execute(select(func.count()).select_from(WebSession)).scalar_one()
            )
