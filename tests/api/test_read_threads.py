"""Where the API's audited reads run (vault/service/reads.py): on SQLite the read part of a
listing and of a package's details runs on the event loop's own thread, with no trip to the
thread pool; on PostgreSQL it goes to a worker thread. A download's key and first segments
are always read on a worker thread (the store may be across a network), and only after its
entry is committed. Each answer carries the receipt of an entry already in the ledger."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, World
from vault.schemas import NewPackage
from vault.service import IncomingFile, Vault
from vault.service.pending import PendingRead

RECEIPT = "x-vault-receipt"


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def client(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=30) as http:
        yield http


def _watch(
    monkeypatch: pytest.MonkeyPatch, reads: Any, name: str, seen: list[tuple[str, bool]]
) -> None:
    """Record, for each call of ``reads.<name>``, whether it ran on the loop, and the same for
    the answer it returns."""
    original: Callable[..., PendingRead[Any]] = getattr(reads, name)

    def watched(*args: Any, **kwargs: Any) -> PendingRead[Any]:
        seen.append((name, _on_loop()))
        pending = original(*args, **kwargs)

        def answer(receipt: int) -> Any:
            seen.append(("answer", _on_loop()))
            return pending.answer(receipt)

        return PendingRead(pending.record, answer)

    monkeypatch.setattr(reads, name, watched)


def test_reads_run_where_their_database_wants_them(
    world: World, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault: Vault = world.vault
    package_id = vault.upload(
        world["uz.officer"],
        NewPackage(title="where it runs"),
        [IncomingFile(name="a.txt", reader=io.BytesIO(b"content"))],
    ).package.id
    file_id = vault.get_package(world["uz.officer"], package_id)[0].files[0].id
    token = vault.login("uz.officer", PASSWORD).access_token
    seen: list[tuple[str, bool]] = []
    for name in ("listing", "package", "start_download"):
        _watch(monkeypatch, vault.reads, name, seen)
    auth = {"authorization": f"Bearer {token}"}
    receipts = []
    for path in ("/packages", f"/packages/{package_id}", f"/packages/{package_id}/files/{file_id}"):
        reply = client.get(path, headers=auth)
        assert reply.status_code == 200, reply.text
        receipts.append(int(reply.headers[RECEIPT]))
    inline = vault.engine.dialect.name == "sqlite"
    assert vault.reads.inline is inline
    assert seen == [
        ("listing", inline),
        ("answer", True),
        ("package", inline),
        ("answer", True),
        ("start_download", inline),
        ("answer", False),
    ]
    entries = {e.seq: (e.action, e.package) for e in vault.unscoped_entries()}
    assert [entries[r] for r in receipts] == [
        ("list", ""),
        ("read", package_id),
        ("download", package_id),
    ]


def test_a_refused_read_answers_with_the_receipt_of_its_committed_entry(
    world: World, client: httpx.Client
) -> None:
    vault: Vault = world.vault
    token = vault.login("kz.officer", PASSWORD).access_token
    missing = "f" * 32
    reply = client.get(f"/packages/{missing}", headers={"authorization": f"Bearer {token}"})
    assert reply.status_code == 404
    receipt = reply.json()["error"]["receipt"]
    last = vault.unscoped_entries()[-1]
    assert (last.seq, last.action, last.decision, last.package) == (
        receipt,
        "read",
        "deny",
        missing,
    )
