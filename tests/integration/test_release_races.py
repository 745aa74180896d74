"""Two decisions on one release at once, and two acknowledgements, on PostgreSQL.

Under READ COMMITTED, two transactions that read a release before either writes it both see
it as it was: a supervisor's approval committed after the originator's revocation put the
release back in force, and the ledger then said "revoked" before "approved". The release row
is now locked from its read to the commit. SQLite's writers are serial, so only PostgreSQL is
tested here.
"""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest

from tests.conftest import World, requires_postgres
from vault.errors import Conflict, NotFound
from vault.models import Classification, Handling, ReleaseStatus
from vault.schemas import NewPackage
from vault.service import IncomingFile
from vault.service.access import Access
from vault.service.releases import ReleaseService

pytestmark = requires_postgres

# How long the revocation holds its transaction open after reading the release: long enough
# for the approval to read the release too, had nothing locked it.
HOLD_SECONDS = 0.5


def test_an_approval_racing_a_revocation_never_puts_the_release_back(
    pg_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault, officer = pg_world.vault, pg_world["uz.officer"]
    package = vault.upload(
        officer,
        NewPackage(title="seizure report", classification=Classification.CONFIDENTIAL),
        [IncomingFile("report.txt", io.BytesIO(b"report"))],
    ).package.id
    release = vault.release(officer, package, country="KZ").release
    assert release.status == ReleaseStatus.PENDING  # four-eyes: a supervisor must approve

    revocation_read = threading.Event()
    load = ReleaseService._load_release_for

    def revoker_holds(self: ReleaseService, *args: Any, **kwargs: Any) -> Any:
        found = load(self, *args, **kwargs)
        if args[1].username == "uz.officer":
            revocation_read.set()
            time.sleep(HOLD_SECONDS)  # the revocation's transaction stays open
        return found

    monkeypatch.setattr(ReleaseService, "_load_release_for", revoker_holds)
    outcome: dict[str, object] = {}

    def revoke() -> None:
        outcome["revoke"] = vault.revoke_release(officer, package, release.id).release.status

    def approve() -> None:
        assert revocation_read.wait(10)
        try:
            decided = vault.decide_release(pg_world["uz.supervisor"], release.id, approve=True)
            outcome["approve"] = decided.release.status
        except Conflict as exc:
            outcome["approve"] = exc

    threads = [threading.Thread(target=revoke), threading.Thread(target=approve)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    monkeypatch.undo()

    assert outcome["revoke"] == ReleaseStatus.REVOKED
    # The approval waited for the revocation's commit, then found nothing pending.
    assert isinstance(outcome["approve"], Conflict), outcome
    detail, _ = vault.get_package(officer, package)
    assert [(r.status, r.in_force) for r in detail.releases] == [(ReleaseStatus.REVOKED, False)]
    with pytest.raises(NotFound):
        vault.get_package(pg_world["kz.officer"], package)
    decisions = [
        (e.action, e.decision)
        for e in vault.unscoped_entries()
        if e.release == release.id and e.action in ("revoke", "approve")
    ]
    assert decisions == [("revoke", "allow"), ("approve", "deny")]


def test_two_acknowledgements_at_once_are_one_and_both_recorded(
    pg_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A double click: both requests find no acknowledgement before either stores one. The
    second used to fail on the primary key (a 500, unrecorded); now it is "already"."""
    vault, officer, reader = pg_world.vault, pg_world["uz.officer"], pg_world["kz.officer"]
    package = vault.upload(
        officer,
        NewPackage(title="report", handling=Handling.H3, handling_note="not for court"),
        [IncomingFile("report.txt", io.BytesIO(b"report"))],
    ).package.id
    vault.release(officer, package, country="KZ")
    both_looked = threading.Barrier(2)
    load = Access.load_package_for

    def looks_together(self: Access, *args: Any, **kwargs: Any) -> Any:
        found = load(self, *args, **kwargs)
        if args[3] == "acknowledge":
            both_looked.wait(10)
        return found

    monkeypatch.setattr(Access, "load_package_for", looks_together)
    receipts: list[object] = []

    def acknowledge() -> None:
        try:
            receipts.append(vault.acknowledge(reader, package))
        except Exception as exc:  # the failure this test is about
            receipts.append(exc)

    threads = [threading.Thread(target=acknowledge) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    monkeypatch.undo()

    assert all(isinstance(r, int) for r in receipts), receipts
    reasons = sorted(
        e.reason
        for e in vault.unscoped_entries()
        if e.action == "acknowledge" and e.package == package
    )
    assert reasons == ["already", "ok"]


def test_an_onward_release_racing_its_parents_revocation_is_not_left_in_force(
    pg_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipient passes a package on while the originator revokes the recipient's release:
    the onward release read the release in force before the revocation committed. Without a
    lock it committed after it, derived from a revoked release the cascade had not seen."""
    vault = pg_world.vault
    package = vault.upload(
        pg_world["uz.officer"],
        NewPackage(title="seizure report", classification=Classification.RESTRICTED),
        [IncomingFile("report.txt", io.BytesIO(b"report"))],
    ).package.id
    granted = vault.release(pg_world["uz.officer"], package, country="KZ").release
    grants_read, revoked = threading.Event(), threading.Event()
    read_grants = Access.grants_in_force

    def onward_waits(self: Access, *args: Any, **kwargs: Any) -> Any:
        found = read_grants(self, *args, **kwargs)
        grants_read.set()
        assert revoked.wait(10)  # the revocation commits while this transaction is open
        return found

    monkeypatch.setattr(Access, "grants_in_force", onward_waits)
    outcome: dict[str, object] = {}

    def onward() -> None:
        try:
            outcome["onward"] = vault.release(pg_world["kz.officer"], package, country="TJ")
        except Conflict as exc:
            outcome["onward"] = exc

    thread = threading.Thread(target=onward)
    thread.start()
    assert grants_read.wait(10)
    vault.revoke_release(pg_world["uz.officer"], package, granted.id)
    revoked.set()
    thread.join(30)
    monkeypatch.undo()

    assert isinstance(outcome["onward"], Conflict), outcome
    with pytest.raises(NotFound):
        vault.get_package(pg_world["tj.officer"], package)
