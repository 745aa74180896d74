"""The web session store: cookies name sessions by hash, idle ones end, and a flood of
sessions that never signed in can't push out the signed-in ones."""

from __future__ import annotations

from blo_vault.api.web.sessions import SessionStore
from vault.schemas import LoginResult


def tokens() -> LoginResult:
    return LoginResult(
        access_token="a",
        expires_in=900,
        receipt=1,
        refresh_token="r",
        refresh_expires_in=1800,
        session_expires_in=3600,
    )


def test_unknown_cookie_and_dropped_session_find_nothing() -> None:
    store = SessionStore(idle_seconds=60)
    cookie, session = store.new(lang="ru")
    assert store.get(cookie) is session
    assert store.get(cookie + "x") is None
    assert store.get("") is None
    store.drop(cookie)
    assert store.get(cookie) is None


def test_idle_session_ends() -> None:
    now = [1000.0]
    store = SessionStore(idle_seconds=60, clock=lambda: now[0])
    cookie, session = store.new()
    now[0] += 59
    assert store.get(cookie) is session  # seen: its idle time starts again
    now[0] += 61
    assert store.get(cookie) is None


def test_anonymous_flood_does_not_evict_signed_in_sessions() -> None:
    store = SessionStore(idle_seconds=60, max_sessions=10)
    cookie, session = store.new()
    session.hold(tokens())
    for _ in range(100):
        store.new()
    assert store.get(cookie) is session
    assert session.signed_in


def test_csrf_token_is_checked_exactly() -> None:
    _, session = SessionStore(idle_seconds=60).new()
    assert session.csrf_ok(session.csrf)
    assert not session.csrf_ok(session.csrf[:-1])
    assert not session.csrf_ok("")
