"""The budget of entries for refusals of callers not authenticated (vault.service.refusals).

Within the budget every such refusal has its own entry, as before; beyond it the caller gets
the same answer, and the refusal is counted into a summary entry ("suppressed:N"), so the
ledger still accounts for every one of them while a client looping on a junk token can no
longer grow it at will. Refusals of authenticated callers are never summarised.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST_ARGON2, PASSWORD, World, seed
from vault.config import load_settings
from vault.errors import AuthenticationFailed, NotFound, RateLimited
from vault.ledger.entry import Entry
from vault.ledger.log import Actor
from vault.schemas import NewPackage
from vault.service import IncomingFile, Vault, local_operator
from vault.service.refusals import MAX_SUMMARIES, RefusalBudget, Suppressed, client_key

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


def test_summaries_by_actor_action_and_reason() -> None:
    written: list[tuple[Actor, str, str, str]] = []
    suppressed = Suppressed(lambda *entry: written.append(entry), interval=3600)
    someone = Actor(user="uz.officer", agency="UZ-CUSTOMS", country="UZ")
    for _ in range(3):
        suppressed.count(Actor(user=""), "authenticate", "bad_token")
    suppressed.count(someone, "authenticate", "session_revoked")
    suppressed.count(someone, "authenticate", "session_revoked")
    assert suppressed.pending() == 5
    suppressed.close()
    assert sorted(written, key=lambda e: e[2]) == [
        (Actor(user=""), "authenticate", "bad_token", "suppressed:3"),
        (someone, "authenticate", "session_revoked", "suppressed:2"),
    ]
    assert suppressed.pending() == 0
    assert suppressed.total == 5


def test_distinct_summaries_are_bounded() -> None:
    written: list[tuple[Actor, str, str, str]] = []
    suppressed = Suppressed(lambda *entry: written.append(entry), interval=3600)
    for n in range(MAX_SUMMARIES + 10):
        suppressed.count(Actor(user=f"unknown:{n}"), "login", "bad_credentials")
    suppressed.close()
    assert len(written) == MAX_SUMMARIES + 1
    assert (Actor(user=""), "login", "bad_credentials", "suppressed:10") in written
    assert sum(int(e[3].split(":")[1]) for e in written) == MAX_SUMMARIES + 10


def test_a_summary_that_could_not_be_written_is_kept() -> None:
    written: list[tuple[Actor, str, str, str]] = []
    down = True

    def write(*entry: object) -> None:
        if down:
            raise OSError("database down")
        written.append(entry)  # type: ignore[arg-type]

    suppressed = Suppressed(write, interval=3600)
    suppressed.count(Actor(user=""), "refresh", "bad_refresh_token")
    suppressed.flush()
    assert written == []
    assert suppressed.pending() == 1
    suppressed.count(Actor(user=""), "refresh", "bad_refresh_token")
    down = False
    suppressed.close()
    assert written == [(Actor(user=""), "refresh", "bad_refresh_token", "suppressed:2")]


def test_the_summary_is_written_on_a_timer() -> None:
    done = threading.Event()
    written: list[tuple[Actor, str, str, str]] = []

    def write(*entry: object) -> None:
        written.append(entry)  # type: ignore[arg-type]
        done.set()

    suppressed = Suppressed(write, interval=0.05)
    suppressed.count(Actor(user=""), "authenticate", "bad_token")
    assert done.wait(10), "no summary written"
    assert written == [(Actor(user=""), "authenticate", "bad_token", "suppressed:1")]
    suppressed.close()
    assert len(written) == 1  # nothing left for close to write


def test_close_waits_for_a_summary_being_written() -> None:
    """The vault closes its ledger right after: a summary the timer is writing must be done."""
    started, release = threading.Event(), threading.Event()
    written: list[object] = []

    def write(*entry: object) -> None:
        started.set()
        release.wait(10)
        written.append(entry)

    suppressed = Suppressed(write, interval=0.01)
    suppressed.count(Actor(user=""), "authenticate", "bad_token")
    assert started.wait(10), "no summary started"
    closer = threading.Thread(target=suppressed.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close returned while the summary was being written"
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert len(written) == 1


# --- through the service, on a real vault ---------------------------------------------------


@pytest.fixture
def small(tmp_path: Path, database_url: str | None) -> Iterator[World]:
    """A seeded vault whose budget is 4 entries a minute per address; summaries on close."""
    settings = load_settings(
        data_dir=tmp_path / "vault-data",
        database_url=database_url,
        refusal_entries_per_address=4,
        refusal_summary_seconds=3600,
        lockout_base_seconds=3600,
        **FAST_ARGON2,
    )
    vault = Vault.open(settings)
    try:
        yield World(vault=vault, settings=settings, users=seed(vault))
    finally:
        vault.close()


def _new_entries(vault: Vault, since: int) -> list[Entry]:
    return vault.unscoped_entries(since)


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
    entries = _new_entries(vault, start)
    assert [(e.action, e.reason, e.subject) for e in entries] == [
        ("authenticate", "bad_token", "")
    ] * 5
    vault.core.refusals.close()  # what vault.close() does first
    summary = _new_entries(vault, start + 5)
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
    entries = _new_entries(vault, start)
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
    assert [(e.action, e.subject) for e in _new_entries(vault, start)][-1] == (
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
