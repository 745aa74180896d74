"""AuditedReads (vault/service/reads.py): the API's reads, their ledger entries awaited on an
event loop instead of on a blocked worker thread. What must hold is what held before: nothing
is answered ahead of its entry, each read writes exactly one, a refusal is answered with the
receipt of its own, and a caller that stops waiting can't lose an entry or stall the ledger."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import Future
from typing import Any

import pytest

from tests.conftest import PASSWORD, World
from vault.errors import AuthenticationFailed, NotFound, VaultError
from vault.ledger.log import Actor, Record
from vault.schemas import NewPackage, PackageDetail
from vault.service import IncomingFile, Vault
from vault.service._core import UNCOMMITTED
from vault.service.pending import PendingRead

MISSING = "0" * 32


def _package(world: World) -> str:
    return world.vault.upload(
        world["uz.officer"],
        NewPackage(title="awaited on a loop"),
        [IncomingFile(name="a.txt", reader=io.BytesIO(b"content"))],
    ).package.id


def _entry_count(vault: Vault) -> int:
    return len(vault.unscoped_entries())


def test_submit_hands_back_a_future_that_cannot_be_cancelled(world: World) -> None:
    """A waiter that gives up must not cancel the future the committer will complete: a
    cancelled concurrent future refuses ``set_result`` and would stop the committer."""
    vault: Vault = world.vault
    record = vault.core.entry(actor=Actor(user="t"), action="list", decision="allow", reason="ok")
    future = vault.core._appender.submit(record)
    assert not future.cancel()
    seq = future.result(timeout=30)
    assert vault.unscoped_entries()[-1].seq == seq
    # The blocking path is the same queue: it still works afterwards.
    assert vault.core._appender.append(record) == seq + 1


def test_prepare_writes_nothing_and_finish_answers_only_after_the_entry(world: World) -> None:
    vault: Vault = world.vault
    reads = vault.reads
    package_id = _package(world)
    token = vault.login("uz.officer", PASSWORD).access_token
    before = _entry_count(vault)
    pending = reads.prepare(token, lambda caller: reads.package(caller, package_id))
    assert _entry_count(vault) == before
    seen: list[tuple[int, str, str]] = []

    def answer(receipt: int) -> tuple[PackageDetail, int]:
        last = vault.unscoped_entries()[-1]
        seen.append((last.seq, last.action, last.package))
        return pending.answer(receipt)

    detail, receipt = asyncio.run(reads.finish(PendingRead(pending.record, answer)))
    assert detail.title == "awaited on a loop"
    assert seen == [(receipt, "read", package_id)]
    assert _entry_count(vault) == before + 1


@pytest.mark.parametrize("kind", ["list", "download"])
def test_each_kind_of_read_writes_one_entry_before_its_answer(world: World, kind: str) -> None:
    vault: Vault = world.vault
    reads = vault.reads
    package_id = _package(world)
    file_id = vault.get_package(world["uz.officer"], package_id)[0].files[0].id
    token = vault.login("uz.officer", PASSWORD).access_token
    before = _entry_count(vault)
    if kind == "list":
        listing = reads.prepare(token, lambda caller: reads.listing(caller, limit=5))
        result: Any = asyncio.run(reads.finish(listing))
        assert [item.id for item in result.items] == [package_id]
    else:
        download = reads.prepare(
            token, lambda caller: reads.start_download(caller, package_id, file_id)
        )
        receipt = asyncio.run(reads.receipt(download))
        result = download.answer(receipt)
        assert b"".join(result.chunks) == b"content"
    written = vault.unscoped_entries()[before:]
    assert [(e.action, e.decision, e.seq) for e in written] == [(kind, "allow", result.receipt)]


def test_a_refusal_is_raised_with_its_entry_queued_and_settled_before_it_is_answered(
    world: World,
) -> None:
    vault: Vault = world.vault
    reads = vault.reads
    token = vault.login("uz.officer", PASSWORD).access_token
    before = _entry_count(vault)
    with pytest.raises(NotFound) as raised:
        reads.prepare(token, lambda caller: reads.package(caller, MISSING))
    refusal = raised.value
    assert refusal.receipt is None
    queued: Future[int] = getattr(refusal, UNCOMMITTED)
    asyncio.run(reads.settle(refusal))
    assert not hasattr(refusal, UNCOMMITTED)
    written = vault.unscoped_entries()[before:]
    assert [(e.action, e.decision, e.reason, e.package) for e in written] == [
        ("read", "deny", "not_found", MISSING)
    ]
    assert refusal.receipt == written[0].seq == queued.result()


def test_a_bad_session_is_refused_the_same_way(world: World) -> None:
    vault: Vault = world.vault
    reads = vault.reads
    token = vault.login("uz.officer", PASSWORD).access_token
    vault.logout(vault.authenticate(token))
    with pytest.raises(AuthenticationFailed) as raised:
        reads.prepare(token, lambda caller: reads.listing(caller))
    asyncio.run(reads.settle(raised.value))
    last = vault.unscoped_entries()[-1]
    assert (last.action, last.reason, raised.value.receipt) == (
        "authenticate",
        "session_revoked",
        last.seq,
    )


def test_refusals_outside_prepare_are_still_waited_for_where_they_happen(world: World) -> None:
    """Deferring is scoped to ``prepare``: the synchronous operations keep recording their
    refusals before raising them."""
    vault: Vault = world.vault
    with pytest.raises(NotFound) as raised:
        vault.get_package(world["uz.officer"], MISSING)
    assert raised.value.receipt == vault.unscoped_entries()[-1].seq
    assert not hasattr(raised.value, UNCOMMITTED)


def test_a_waiter_that_is_cancelled_leaves_its_entry_committed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault: Vault = world.vault
    reads = vault.reads
    token = vault.login("uz.officer", PASSWORD).access_token
    futures: list[Future[int]] = []
    submit = vault.core.submit

    def kept(record: Record) -> Future[int]:
        futures.append(submit(record))
        return futures[-1]

    monkeypatch.setattr(vault.core, "submit", kept)
    pending = reads.prepare(token, lambda caller: reads.listing(caller))

    async def give_up_then_read_again() -> int:
        waiting = asyncio.ensure_future(reads.finish(pending))
        await asyncio.sleep(0)  # it has queued its entry
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        again = reads.prepare(token, lambda caller: reads.listing(caller))
        return (await reads.finish(again)).receipt

    later = asyncio.run(give_up_then_read_again())
    abandoned = futures[0].result(timeout=30)
    assert not futures[0].cancelled()
    entries = {e.seq: e.action for e in vault.unscoped_entries()}
    assert entries[abandoned] == entries[later] == "list"
    assert later > abandoned


def test_a_ledger_that_fails_fails_the_read(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error of the commit reaches the awaiting caller; nothing is answered."""
    vault: Vault = world.vault
    reads = vault.reads
    token = vault.login("uz.officer", PASSWORD).access_token
    pending = reads.prepare(token, lambda caller: reads.listing(caller))
    failed: Future[int] = Future()
    failed.set_exception(VaultError("the database is unavailable"))
    monkeypatch.setattr(vault.core, "submit", lambda _record: failed)
    answered: list[int] = []
    with pytest.raises(VaultError, match="unavailable"):
        asyncio.run(reads.finish(PendingRead(pending.record, answered.append)))
    assert answered == []


def test_the_read_part_runs_inline_only_on_sqlite(world: World) -> None:
    """SQLite's readers neither lock nor wait on a network; PostgreSQL's round trips go to a
    worker thread (the API reads ``inline``)."""
    vault: Vault = world.vault
    assert vault.reads.inline is (vault.settings.resolved_database_url.startswith("sqlite"))
