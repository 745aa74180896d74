"""The web session store (in the vault's database): cookies name sessions by hash, idle ones
end, and a flood of sessions that never signed in can't push out the signed-in ones."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from blo_vault.api.web.sessions import SessionStore
from tests.conftest import PASSWORD, World
from vault.schemas import LoginResult
from vault.websessions import WebSessionStore

Stores = Callable[..., SessionStore]


@pytest.fixture
def stores(world: World) -> Stores:
    """Session stores over the world's database, with the options a test names."""

    def make(
        *,
        idle_seconds: float = 60,
        max_sessions: int = 20_000,
        clock: Callable[[], float] | None = None,
    ) -> SessionStore:
        rows = WebSessionStore(
            world.vault.engine,
            idle_seconds=idle_seconds,
            lifetime_seconds=3600,
            max_sessions=max_sessions,
            **({"clock": clock} if clock else {}),
        )
        return SessionStore(rows, **({"clock": clock} if clock else {}))

    return make


def tokens() -> LoginResult:
    return LoginResult(
        access_token="a",
        expires_in=900,
        receipt=1,
        refresh_token="r",
        refresh_expires_in=1800,
        session_expires_in=3600,
    )


def test_unknown_cookie_and_dropped_session_find_nothing(stores: Stores) -> None:
    store = stores(idle_seconds=60)
    cookie, session = store.new(lang="ru")
    assert store.get(cookie) == session
    assert store.get(cookie + "x") is None
    assert store.get("") is None
    store.drop(cookie)
    assert store.get(cookie) is None


def test_idle_session_ends(stores: Stores) -> None:
    now = [1000.0]
    store = stores(idle_seconds=60, clock=lambda: now[0])
    cookie, session = store.new()
    now[0] += 59
    assert store.get(cookie) == session  # seen: its idle time starts again
    now[0] += 61
    assert store.get(cookie) is None


def test_anonymous_flood_does_not_evict_signed_in_sessions(stores: Stores) -> None:
    store = stores(idle_seconds=60, max_sessions=10)
    cookie, session = store.new()
    session.hold(tokens())
    for _ in range(100):
        store.new()
    assert store.get(cookie) == session
    assert session.signed_in
    assert store.rows.count() <= 10


def test_csrf_token_is_checked_exactly(stores: Stores) -> None:
    _, session = stores(idle_seconds=60).new()
    assert session.csrf_ok(session.csrf)
    assert not session.csrf_ok(session.csrf[:-1])
    assert not session.csrf_ok("")


def test_two_workers_renew_the_tokens_once(world: World, stores: Stores) -> None:
    now = [time.time()]
    first, second = (stores(idle_seconds=7200, clock=lambda: now[0]) for _ in "12")
    cookie, session = first.new()
    session.hold(world.vault.login("uz.officer", PASSWORD))
    in_first, in_second = first.get(cookie), second.get(cookie)
    assert in_first is not None
    assert in_second is not None
    now[0] += 3600  # both hold an access token due for renewal
    renewed = in_first.access(world.vault.refresh)
    # The second loses the claim and takes the first's tokens: spending the refresh token
    # again would have ended the session (taken as theft).
    assert in_second.access(world.vault.refresh) == renewed
    assert renewed != session.access_token
    assert world.vault.authenticate(renewed).username == "uz.officer"


def _never(refresh_token: str) -> LoginResult:
    raise AssertionError("a second request spent the refresh token being renewed")


@pytest.mark.parametrize("read", ["before the claim", "after the claim"])
def test_expired_tokens_wait_for_the_renewal_under_way(
    world: World, stores: Stores, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    # A reader comes back after the access token's lifetime (within the idle time) with two
    # requests at once: the first claims the renewal; the second, whether it read the row
    # before or after that claim, must neither spend the refresh token again (the service
    # would end the session as stolen) nor go on with the expired token (sign-out).
    now = [time.time()]
    first, second = (stores(idle_seconds=7200, clock=lambda: now[0]) for _ in "12")
    cookie, session = first.new()
    session.hold(world.vault.login("uz.officer", PASSWORD))
    in_first = first.get(cookie)
    assert in_first is not None
    in_second = second.get(cookie) if read == "before the claim" else None
    now[0] += 1000  # past the access token's lifetime (900 s) by the pages' clock
    assert first.claim(in_first)
    in_second = in_second or second.get(cookie)
    assert in_second is not None
    renewed: list[str] = []

    def renewal_done_meanwhile() -> None:
        if not renewed:
            in_first.hold(world.vault.refresh(in_first.refresh_token))
            renewed.append(in_first.access_token)

    monkeypatch.setattr(second, "pause", renewal_done_meanwhile, raising=False)
    token = in_second.access(_never)
    assert renewed, "the second request did not wait for the renewal"
    assert token == renewed[0]
    assert world.vault.authenticate(token).username == "uz.officer"


def test_an_abandoned_claim_is_taken_over(world: World, stores: Stores) -> None:
    # A worker that claimed the renewal and died: after a while another request renews.
    now = [time.time()]
    first, second = (stores(idle_seconds=7200, clock=lambda: now[0]) for _ in "12")
    cookie, session = first.new()
    session.hold(world.vault.login("uz.officer", PASSWORD))
    now[0] += 1000
    in_first = first.get(cookie)
    assert in_first is not None
    assert first.claim(in_first)
    now[0] += 60
    in_second = second.get(cookie)
    assert in_second is not None
    token = in_second.access(world.vault.refresh)
    assert token != session.access_token
    assert world.vault.authenticate(token).username == "uz.officer"


def test_a_session_changed_since_it_was_read_is_not_dropped(stores: Stores) -> None:
    store = stores(idle_seconds=60)
    cookie, session = store.new()
    read = session.version
    session.remember(lang="ru")  # another request changed it meanwhile
    assert not store.drop(cookie, version=read)
    assert store.get(cookie) == session
    assert store.drop(cookie, version=session.version)
    assert store.get(cookie) is None
    assert not store.drop(cookie)
