"""Vault.reading_as: what the API's read routes do per request. The caller's lookup and the
read share one read-only transaction, yet the caller is looked up afresh on every call (no
cache: a session ended or a user disabled is refused at once), and refusals raised inside are
recorded once, after the transaction, with their receipt on the error."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from tests.conftest import PASSWORD, World
from vault.errors import AuthenticationFailed, NotFound
from vault.models import Package
from vault.schemas import NewPackage
from vault.service import IncomingFile, Vault, local_operator
from vault.service import _core as core_module


def _package(world: World) -> str:
    return world.vault.upload(
        world["uz.officer"],
        NewPackage(title="shared transaction"),
        [IncomingFile(name="a.txt", reader=io.BytesIO(b"content"))],
    ).package.id


@pytest.fixture
def begins(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Transactions begun by this thread (the ledger's committer has its own thread). The
    policy re-read is held off, so only the request's own transactions count."""
    monkeypatch.setattr(core_module, "POLICY_REFRESH_SECONDS", 1e9)
    caller = threading.get_ident()
    seen: list[int] = []

    def on_begin(_conn: Any) -> None:
        if threading.get_ident() == caller:
            seen.append(1)

    event.listen(world.vault.engine, "begin", on_begin)
    try:
        yield seen
    finally:
        event.remove(world.vault.engine, "begin", on_begin)


def test_lookup_and_reads_share_one_transaction(world: World, begins: list[int]) -> None:
    vault: Vault = world.vault
    package_id = _package(world)
    token = vault.login("uz.officer", PASSWORD).access_token
    begins.clear()
    with vault.reading_as(token) as caller:
        detail, _ = vault.get_package(caller, package_id)
    assert detail.title == "shared transaction"
    assert len(begins) == 1
    # The transaction ends before the read waits for its ledger entry (Core._end_snapshot),
    # so a second read in the same block begins another.
    begins.clear()
    with vault.reading_as(token) as caller:
        detail, _ = vault.get_package(caller, package_id)
        listing = vault.list_packages(caller, limit=5)
    assert [item.id for item in listing.items] == [package_id]
    assert len(begins) == 2
    # Apart, as before: one transaction for the lookup, one for the read.
    begins.clear()
    vault.get_package(vault.authenticate(token), package_id)
    assert len(begins) == 2


def test_each_call_looks_the_caller_up_afresh(world: World) -> None:
    vault: Vault = world.vault
    package_id = _package(world)
    token = vault.login("kz.officer", PASSWORD).access_token
    with vault.reading_as(token) as caller:
        assert caller.username == "kz.officer"
    vault.set_user(local_operator(), "kz.officer", disabled=True)
    try:
        with pytest.raises(AuthenticationFailed) as raised, vault.reading_as(token):
            pytest.fail("a disabled user's read ran")
        entry = vault.unscoped_entries()[-1]
        assert raised.value.receipt == entry.seq
        assert (entry.actor_user, entry.action, entry.reason) == (
            "kz.officer",
            "authenticate",
            "user_disabled",
        )
    finally:
        vault.set_user(local_operator(), "kz.officer", disabled=False)
    uz_token = vault.login("uz.officer", PASSWORD).access_token
    with vault.reading_as(uz_token) as caller:
        vault.get_package(caller, package_id)
    vault.logout(vault.authenticate(uz_token))
    with pytest.raises(AuthenticationFailed), vault.reading_as(uz_token) as caller:
        vault.get_package(caller, package_id)
    assert vault.unscoped_entries()[-1].reason == "session_revoked"


def test_a_refused_read_inside_is_recorded_once_after_the_transaction(world: World) -> None:
    vault: Vault = world.vault
    token = vault.login("uz.officer", PASSWORD).access_token
    before = len(vault.unscoped_entries())
    missing = "0" * 32
    with pytest.raises(NotFound) as raised, vault.reading_as(token) as caller:
        vault.get_package(caller, missing)
    written = vault.unscoped_entries()[before:]
    assert [(e.action, e.decision, e.reason, e.package) for e in written] == [
        ("read", "deny", "not_found", missing)
    ]
    assert raised.value.receipt == written[0].seq


def test_sessions_opened_inside_join_the_plain_read_transaction(
    world: World, begins: list[int]
) -> None:
    """reading_as holds a plain connection, not an ORM session; a read-only session opened
    inside (services that read through the ORM) joins its transaction, and leaving that
    session neither commits nor ends it."""
    vault: Vault = world.vault
    package_id = _package(world)
    token = vault.login("uz.officer", PASSWORD).access_token
    begins.clear()
    with vault.reading_as(token) as caller:
        with vault.core.tx(readonly=True) as session:
            assert session.get(Package, package_id) is not None
            with vault.core.tx(readonly=True) as inner:
                assert inner is session
        detail, _ = vault.get_package(caller, package_id)
    assert detail.title == "shared transaction"
    assert len(begins) == 1


@pytest.mark.parametrize("route", ["show", "list", "download"])
def test_a_read_holds_no_snapshot_while_it_waits_for_its_entry(
    world: World, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """A read that waited for the group commit inside its read transaction would pin its
    snapshot for the whole wait, and on SQLite keep the write-ahead log from being started
    over under load (vault.db._WalKeeper)."""
    vault: Vault = world.vault
    package_id = _package(world)
    file_id = vault.get_package(world["uz.officer"], package_id)[0].files[0].id
    token = vault.login("uz.officer", PASSWORD).access_token
    appender = vault.core._appender
    append = appender.append
    open_while_waiting: list[bool] = []

    def watched(record: Any, **kwargs: Any) -> int:
        shared = getattr(vault.core._local, "reading", None)
        open_while_waiting.append(shared is not None and shared.in_transaction())
        return append(record, **kwargs)

    monkeypatch.setattr(appender, "append", watched)
    with vault.reading_as(token) as caller:
        if route == "show":
            vault.get_package(caller, package_id)
        elif route == "list":
            vault.list_packages(caller, limit=5)
        else:
            with contextlib.closing(vault.download(caller, package_id, file_id).chunks) as chunks:
                assert b"".join(chunks)
    assert open_while_waiting == [False]
