"""Two page requests of one browser at once after its access token has expired (the reader
comes back after the token's lifetime but within the session's idle time, with two tabs, or a
page and a download), on a real server: one request renews the tokens; the other neither
spends the refresh token again (the service would end the session as stolen) nor goes on with
the expired token and deletes the session the first is renewing. The browser stays signed in.

The interleaving is forced with events, not sleeps: the first request is held inside the
service's refresh until the second has read the session and is waiting (or, when it may not
wait, is about to delete the session), and released only then.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from blo_vault.api.web import sessions
from blo_vault.api.web.sessions import SessionStore, WebSession
from tests.conftest import PASSWORD, World, running_server
from tests.ui.conftest import CSRF

# A safety net for a broken interleaving (the test then fails on the answers), never a timing
# the test relies on.
STUCK_SECONDS = 30


@dataclass
class Race:
    """The two requests' progress, as the wrapped session code reports it."""

    armed: bool = False
    first: int | None = None  # thread of the request that claims the renewal
    claiming: threading.Event = field(default_factory=threading.Event)
    claimed: threading.Event = field(default_factory=threading.Event)
    second_read: threading.Event = field(default_factory=threading.Event)
    renewing: threading.Event = field(default_factory=threading.Event)
    go_on: threading.Event = field(default_factory=threading.Event)
    renewed: threading.Event = field(default_factory=threading.Event)
    hold_claim: bool = False  # the first waits, claiming, until the second has read the row

    def is_second(self) -> bool:
        return self.armed and self.first not in (None, threading.get_ident())


def _wrap(
    monkeypatch: pytest.MonkeyPatch,
    owner: Any,
    name: str,
    around: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any],
) -> None:
    real: Any = getattr(owner, name, None)  # None: not in this version of the code: unused

    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return around(real, args, kwargs)

    monkeypatch.setattr(owner, name, wrapper, raising=False)


def _instrument(world: World, monkeypatch: pytest.MonkeyPatch, race: Race) -> None:
    """Wrap the real session code (calling through) to report to and be held by ``race``."""

    def claim(real: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        if race.armed and race.first is None:
            race.first = threading.get_ident()
            if race.hold_claim:
                race.claiming.set()
                race.second_read.wait(STUCK_SECONDS)
            done = real(*args, **kw)
            race.claimed.set()
            return done
        if race.is_second():
            race.claimed.wait(STUCK_SECONDS)  # the first claims first
        return real(*args, **kw)

    def get(real: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        found = real(*args, **kw)
        if race.is_second():
            race.second_read.set()
        return found

    def refresh(real: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        if race.armed and threading.get_ident() == race.first:
            race.renewing.set()
            race.go_on.wait(STUCK_SECONDS)
        return real(*args, **kw)

    def hold(real: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        done = real(*args, **kw)
        if race.armed and threading.get_ident() == race.first:
            race.renewed.set()
        return done

    def second_waits(real: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        # The second is waiting for the new tokens, or about to delete the session: only now
        # may the first go on and store them.
        if race.is_second():
            race.go_on.set()
            race.renewed.wait(STUCK_SECONDS)
        return real(*args, **kw)

    _wrap(monkeypatch, SessionStore, "claim", claim)
    _wrap(monkeypatch, SessionStore, "get", get)
    _wrap(monkeypatch, SessionStore, "pause", second_waits)
    _wrap(monkeypatch, SessionStore, "drop", second_waits)
    _wrap(monkeypatch, WebSession, "hold", hold)
    _wrap(monkeypatch, world.vault, "refresh", refresh)


def _expire_access_token(world: World, cookie: str) -> None:
    """Give the browser's session the state it has once its access token's lifetime is over:
    the same service session, its access token expired (by the service's clock too), its
    refresh token still good."""
    store = SessionStore(world.vault.web_sessions())
    session = store.get(cookie)
    assert session is not None
    assert session.signed_in
    claims = world.vault.tokens.verify(session.access_token)
    session.access_token = world.vault.tokens.issue(
        claims.subject, session_id=claims.session_id, now=int(time.time()) - 3600
    )
    session.access_expires = time.time() - 60
    store.save(session)


@pytest.fixture
def signed_in(world: World) -> Iterator[tuple[str, dict[str, str]]]:
    """A server, and the cookies of a browser signed in there as uz.officer."""
    with running_server(world.vault) as url, httpx.Client(base_url=url) as client:
        form = CSRF.search(client.get("/ui/signin").text)
        assert form
        answer = client.post(
            "/ui/signin",
            data={"csrf": form.group(1), "username": "uz.officer", "password": PASSWORD},
        )
        assert answer.status_code == 303
        yield url, dict(client.cookies)


@pytest.mark.parametrize("read", ["before the claim", "after the claim"])
@pytest.mark.parametrize("waits", [True, False], ids=["waits", "cannot-wait"])
def test_two_requests_after_the_token_expired_keep_the_browser_signed_in(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    signed_in: tuple[str, dict[str, str]],
    read: str,
    waits: bool,
) -> None:
    url, cookies = signed_in
    _expire_access_token(world, next(iter(cookies.values())))
    if not waits:
        # The second request gives up waiting at once (as if the renewal took longer than it
        # may wait): it must still not delete the session the first is renewing.
        monkeypatch.setattr(sessions, "_RENEWAL_CHECKS", 1, raising=False)
    race = Race(hold_claim=read == "before the claim")
    _instrument(world, monkeypatch, race)
    answers: dict[str, httpx.Response] = {}

    def request(name: str) -> None:
        try:
            with httpx.Client(base_url=url, cookies=cookies) as client:
                answers[name] = client.get("/ui/packages", follow_redirects=False)
        finally:
            race.go_on.set()  # never leave the first held, whatever the second did

    size = world.vault.ledger_size()
    race.armed = True
    first = threading.Thread(target=request, args=("first",))
    first.start()
    assert (race.claiming if race.hold_claim else race.renewing).wait(STUCK_SECONDS)
    second = threading.Thread(target=request, args=("second",))
    second.start()
    first.join(STUCK_SECONDS * 2)
    second.join(STUCK_SECONDS * 2)
    race.armed = False

    assert {name: answer.status_code for name, answer in answers.items()} == {
        "first": 200,
        "second": 200,
    }
    assert all("set-cookie" not in answer.headers for answer in answers.values())
    after = httpx.get(url + "/ui/packages", cookies=cookies, follow_redirects=False)
    assert after.status_code == 200, "the browser was signed out"
    refused = [
        (entry.action, entry.reason)
        for entry in world.vault.unscoped_entries(size, world.vault.ledger_size())
        if entry.decision == "deny"
    ]
    assert ("refresh", "refresh_reused") not in refused
    if waits:
        assert refused == []  # no spurious refusal of the expired token
