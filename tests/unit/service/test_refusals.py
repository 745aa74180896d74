"""The budget of entries for refusals of callers not authenticated (vault.service.refusals).

Within the budget every such refusal has its own entry, as before; beyond it the caller gets
the same answer, and the refusal is counted into a summary entry ("suppressed:N"), so the
ledger still accounts for every one of them while a client looping on a junk token can no
longer grow it at will. Refusals of authenticated callers are never summarised.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST_ARGON2, PASSWORD, World, seed
from vault.config import load_settings
from vault.errors import AuthenticationFailed, NotFound, RateLimited, StorageUnavailable
from vault.ledger.log import Actor
from vault.schemas import NewPackage
from vault.service import IncomingFile, Vault, local_operator
from vault.service.refusals import MAX_SUMMARIES, RefusalBudget, Suppressed, client_key
from vault.tokens import session_reference

ATTACKER = "192.0.2.7"
OTHER = "198.51.100.4"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("client", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("testclient", "testclient"),
        ("", ""),
        ("x" * 100, "x" * 64),
    ],
    ids=["v4", "v4-mapped", "v6", "v6-same-64", "v6-next-64", "name", "unknown", "long"],
)
def test_client_key(client: str, key: str) -> None:
    assert client_key(client) == key


def test_an_address_gets_its_budget_then_one_a_refill() -> None:
    clock = Clock()
    budget = RefusalBudget(per_address=3, total=100, clock=clock)
    assert [budget.admit(ATTACKER) for _ in range(5)] == [True, True, True, False, False]
    assert budget.admit(OTHER)  # another address has its own bucket
    clock.now += 19.0  # 3 a minute: one every 20 s
    assert not budget.admit(ATTACKER)
    clock.now += 1.0
    assert budget.admit(ATTACKER)
    assert not budget.admit(ATTACKER)
    clock.now += 3600  # refills up to the budget, not beyond
    assert [budget.admit(ATTACKER) for _ in range(4)] == [True, True, True, False]


def test_the_process_budget_caps_many_addresses() -> None:
    clock = Clock()
    budget = RefusalBudget(per_address=2, total=4, clock=clock)
    admitted = [budget.admit(f"192.0.2.{n}") for n in range(1, 7)]
    assert admitted == [True, True, True, True, False, False]
    # A refusal the process's bucket turned down did not spend its address's token.
    clock.now += 30.0  # the process's bucket: 4 a minute, so 2 tokens back
    assert budget.admit("192.0.2.5")
    assert budget.admit("192.0.2.5")
    assert not budget.admit("192.0.2.5")  # that address has now spent its own 2


def test_addresses_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from vault.service import refusals

    monkeypatch.setattr(refusals, "MAX_ADDRESSES", 3)
    clock = Clock()
    budget = RefusalBudget(per_address=1, total=1000, clock=clock)
    for n in range(10):
        assert budget.admit(f"192.0.2.{n}")
    assert len(budget._addresses) == 3
    assert not budget.admit("192.0.2.9")  # still remembered: over its budget


class Queue:
    """What Suppressed submits to: group commit's queue, reduced to the futures it hands out.
    Each future is done at once (``ok``), failed (``down``) or left for the test to settle."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.submitted: list[tuple[Actor, str, str, str]] = []
        self.futures: list[Future[int]] = []

    def __call__(self, actor: Actor, action: str, reason: str, subject: str) -> Future[int]:
        self.submitted.append((actor, action, reason, subject))
        future: Future[int] = Future()
        self.futures.append(future)
        if self.mode == "ok":
            future.set_result(len(self.submitted))
        elif self.mode == "down":
            future.set_exception(StorageUnavailable("the database is unavailable"))
        return future


SOMEONE = Actor(user="uz.officer", agency="UZ-CUSTOMS", country="UZ")


def test_summaries_by_actor_action_reason_and_session() -> None:
    queue = Queue()
    suppressed = Suppressed(queue, interval=3600)
    for _ in range(3):
        suppressed.count(Actor(user=""), "authenticate", "bad_token")
    suppressed.count(SOMEONE, "authenticate", "session_revoked", "session:aa")
    suppressed.count(SOMEONE, "authenticate", "session_revoked", "session:aa")
    suppressed.count(SOMEONE, "authenticate", "session_revoked", "session:bb")
    # A session id no account has is the caller's invention: not kept.
    suppressed.count(Actor(user=""), "refresh", "session_unknown", "session:made-up")
    assert suppressed.pending() == 7
    suppressed.close()
    assert sorted(queue.submitted, key=str) == sorted(
        [
            (Actor(user=""), "authenticate", "bad_token", "suppressed:3"),
            (SOMEONE, "authenticate", "session_revoked", "suppressed:2 session:aa"),
            (SOMEONE, "authenticate", "session_revoked", "suppressed:1 session:bb"),
            (Actor(user=""), "refresh", "session_unknown", "suppressed:1"),
        ],
        key=str,
    )
    assert suppressed.pending() == 0
    assert suppressed.total == 7


def test_only_invented_actors_are_capped() -> None:
    queue = Queue()
    suppressed = Suppressed(queue, interval=3600)
    for n in range(MAX_SUMMARIES + 10):
        suppressed.count(Actor(user=f"unknown:{n}"), "login", "bad_credentials")
    for n in range(MAX_SUMMARIES + 10):  # accounts of the vault: never lumped together
        suppressed.count(Actor(user=f"user{n}", agency="UZ-CUSTOMS"), "login", "rate_limited")
    suppressed.close()
    invented = [e for e in queue.submitted if e[2] == "bad_credentials"]
    named = [e for e in queue.submitted if e[2] == "rate_limited"]
    assert len(invented) == MAX_SUMMARIES + 1
    assert (Actor(user=""), "login", "bad_credentials", "suppressed:10") in invented
    assert sum(int(e[3].split(":")[1]) for e in invented) == MAX_SUMMARIES + 10
    assert len(named) == MAX_SUMMARIES + 10
    assert {e[0].user for e in named} == {f"user{n}" for n in range(MAX_SUMMARIES + 10)}


def test_a_summary_that_failed_is_counted_again() -> None:
    queue = Queue("down")
    suppressed = Suppressed(queue, interval=3600)
    suppressed.count(Actor(user=""), "refresh", "bad_refresh_token")
    suppressed.flush()
    assert suppressed.pending() == 1  # the future failed: counted again
    suppressed.count(Actor(user=""), "refresh", "bad_refresh_token")
    queue.mode = "ok"
    suppressed.close()
    assert queue.submitted[-1] == (Actor(user=""), "refresh", "bad_refresh_token", "suppressed:2")


def test_a_summary_that_commits_late_is_not_counted_twice() -> None:
    queue = Queue("pending")
    suppressed = Suppressed(queue, interval=3600)
    for _ in range(5):
        suppressed.count(Actor(user=""), "authenticate", "bad_token")
    suppressed.flush()
    assert suppressed.pending() == 0  # queued, not yet committed: not counted again
    queue.futures[0].set_result(42)  # committed, however late
    assert suppressed.pending() == 0
    suppressed.count(Actor(user=""), "authenticate", "bad_token")
    suppressed.flush()
    queue.futures[1].set_exception(StorageUnavailable("down"))  # this one failed
    assert suppressed.pending() == 1
    queue.mode = "ok"
    suppressed.close()
    assert queue.submitted[-1][3] == "suppressed:1"


def test_what_could_not_be_written_by_the_close_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = Queue("pending")
    suppressed = Suppressed(queue, interval=3600)
    for _ in range(4):
        suppressed.count(SOMEONE, "login", "rate_limited")
    suppressed.close(timeout=0.01)  # the database does not answer
    queue.futures[0].set_exception(StorageUnavailable("the database is unavailable"))
    assert suppressed.pending() == 0
    suppressed.count(SOMEONE, "login", "bad_credentials")  # after the close: logged at once
    assert suppressed.pending() == 0
    lost = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lost) == 2
    assert "4 refused login requests (rate_limited, actor 'uz.officer')" in lost[0]
    assert "1 refused login requests (bad_credentials, actor 'uz.officer')" in lost[1]


def test_the_summary_is_written_on_a_timer() -> None:
    done = threading.Event()
    queue = Queue()

    def submit(*entry: Any) -> Future[int]:
        future = queue(*entry)
        done.set()
        return future

    suppressed = Suppressed(submit, interval=0.05)
    suppressed.count(Actor(user=""), "authenticate", "bad_token")
    assert done.wait(10), "no summary written"
    assert queue.submitted == [(Actor(user=""), "authenticate", "bad_token", "suppressed:1")]
    suppressed.close()
    assert len(queue.submitted) == 1  # nothing left for close to write


def test_close_waits_for_a_summary_being_queued() -> None:
    """The vault closes its ledger right after: a summary the timer is queueing must be in."""
    started, release = threading.Event(), threading.Event()
    queue = Queue()

    def submit(*entry: Any) -> Future[int]:
        started.set()
        release.wait(10)
        return queue(*entry)

    suppressed = Suppressed(submit, interval=0.01)
    suppressed.count(Actor(user=""), "authenticate", "bad_token")
    assert started.wait(10), "no summary started"
    closer = threading.Thread(target=suppressed.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close returned while the summary was being queued"
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert len(queue.submitted) == 1


# --- through the service, on a real vault ---------------------------------------------------


@contextlib.contextmanager
def seeded(tmp_path: Path, database_url: str | None, **budget: Any) -> Iterator[World]:
    """A seeded vault with ``budget`` settings; summaries only on close."""
    settings = load_settings(
        data_dir=tmp_path / "vault-data",
        database_url=database_url,
        refusal_summary_seconds=3600,
        **budget,
        **FAST_ARGON2,
    )
    vault = Vault.open(settings)
    try:
        yield World(vault=vault, settings=settings, users=seed(vault))
    finally:
        vault.close()


@pytest.fixture
def small(tmp_path: Path, database_url: str | None) -> Iterator[World]:
    """A seeded vault whose budget is 4 entries a minute per address."""
    with seeded(
        tmp_path, database_url, refusal_entries_per_address=4, lockout_base_seconds=3600
    ) as world:
        yield world


def test_junk_tokens_over_budget_are_summarised(small: World) -> None:
    vault = small.vault
    start = vault.ledger_size()
    receipts = []
    for _ in range(10):
        with pytest.raises(AuthenticationFailed) as raised:
            vault.authenticate("junk", client=ATTACKER)
        receipts.append(raised.value.receipt)
    assert all(isinstance(r, int) for r in receipts[:4])
    assert receipts[4:] == [None] * 6
    # Another address is not held back by the first one's flood.
    with pytest.raises(AuthenticationFailed) as raised:
        vault.authenticate("junk", client=OTHER)
    assert isinstance(raised.value.receipt, int)
    entries = vault.unscoped_entries(start)
    assert [(e.action, e.reason, e.subject) for e in entries] == [
        ("authenticate", "bad_token", "")
    ] * 5
    vault.core.refusals.close()  # what vault.close() does first
    summary = vault.unscoped_entries(start + 5)
    assert [(e.action, e.decision, e.reason, e.subject, e.actor_user) for e in summary] == [
        ("authenticate", "deny", "bad_token", "suppressed:6", "")
    ]
    assert vault.verify_ledger(local_operator()).ok


def test_failed_logins_over_budget_still_lock_out(small: World) -> None:
    vault = small.vault
    start = vault.ledger_size()
    outcomes = []
    for _ in range(8):
        with pytest.raises(AuthenticationFailed) as raised:
            vault.login("uz.officer", "wrong password", client=ATTACKER)
        outcomes.append((type(raised.value), raised.value.receipt is not None))
    # The lockout (5 failures a user) is the throttle's, the budget only the ledger's.
    assert [kind for kind, _ in outcomes] == [AuthenticationFailed] * 5 + [RateLimited] * 3
    assert [recorded for _, recorded in outcomes] == [True] * 4 + [False] * 4
    with pytest.raises(RateLimited):
        vault.login("uz.officer", PASSWORD, client=OTHER)  # the right password: still locked
    vault.core.refusals.close()
    entries = vault.unscoped_entries(start)
    summaries = {(e.reason, e.subject) for e in entries if e.subject.startswith("suppressed:")}
    assert summaries == {("bad_credentials", "suppressed:1"), ("rate_limited", "suppressed:3")}
    assert all(e.actor_user == "uz.officer" for e in entries)


def test_refresh_refusals_share_the_address_budget(small: World) -> None:
    vault = small.vault
    start = vault.ledger_size()
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            vault.authenticate("junk", client=ATTACKER)
    receipts = []
    for _ in range(3):
        with pytest.raises(AuthenticationFailed) as raised:
            vault.refresh("not-a-refresh-token", client=ATTACKER)
        receipts.append(raised.value.receipt)
    assert [r is not None for r in receipts] == [True, False, False]
    vault.core.refusals.close()
    assert [(e.action, e.subject) for e in vault.unscoped_entries(start)][-1] == (
        "refresh",
        "suppressed:2",
    )


def test_refusals_of_authenticated_callers_are_never_summarised(small: World) -> None:
    vault = small.vault
    officer = small["tj.officer"]
    package = vault.upload(
        small["uz.officer"],
        NewPackage(title="not for TJ"),
        [IncomingFile(name="a.txt", reader=io.BytesIO(b"x"))],
    ).package.id
    for _ in range(6):  # exhaust "" (the in-process caller's address) too
        with pytest.raises(AuthenticationFailed):
            vault.authenticate("junk")
    for _ in range(10):
        with pytest.raises(NotFound) as raised:
            vault.get_package(officer, package)
        assert isinstance(raised.value.receipt, int)


def test_a_drained_budget_does_not_hide_which_account_was_attacked(
    tmp_path: Path, database_url: str | None
) -> None:
    """Others can drain the process's budget and fill the summaries of invented names; a
    guess at a real account, or an ended session's token, is then counted without an entry
    of its own, but its summary still names the account and the session."""
    with seeded(tmp_path, database_url, refusal_entries_total=3) as world:
        vault = world.vault
        tokens = vault.login("uz.supervisor", PASSWORD)
        vault.logout(vault.authenticate(tokens.access_token))
        start = vault.ledger_size()
        for n in range(3):  # the process's budget, spent from three addresses
            with pytest.raises(AuthenticationFailed):
                vault.authenticate("junk", client=f"192.0.2.{n}")
        for n in range(MAX_SUMMARIES):  # every summary of an invented name taken
            with pytest.raises(AuthenticationFailed):
                vault.login(f"invented{n}", "guess", client=ATTACKER)
        with pytest.raises(AuthenticationFailed) as guess:
            vault.login("uz.officer", "guess", client="203.0.113.9")
        with pytest.raises(AuthenticationFailed) as ended:
            vault.authenticate(tokens.access_token, client="203.0.113.10")
        assert guess.value.receipt is None
        assert ended.value.receipt is None
        vault.core.refusals.close()
        summaries = {
            (e.actor_user, e.action, e.reason, e.subject)
            for e in vault.unscoped_entries(start)
            if e.subject.startswith("suppressed:")
        }
        assert ("uz.officer", "login", "bad_credentials", "suppressed:1") in summaries
        session = session_reference(vault.tokens.verify(tokens.access_token).session_id)
        assert (
            "uz.supervisor",
            "authenticate",
            "session_revoked",
            f"suppressed:1 {session}",
        ) in summaries
