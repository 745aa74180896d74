"""Uploads that fail where nothing expected them to: a chosen id taken by another upload
between the check and the insert, a file removed by gc before the commit, and a fault of the
vault's own. Each is answered with the
vault's own error or re-raised, leaves no object behind, and is in the ledger."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import World
from vault.errors import Conflict, StorageUnavailable
from vault.schemas import NewPackage
from vault.service import IncomingFile, local_operator
from vault.service import packages as packages_module
from vault.service.packages import PackageService


def _upload(world: World, package_id: str | None = None) -> str:
    result = world.vault.upload(
        world["uz.officer"],
        NewPackage(title="report", package_id=package_id),
        [IncomingFile("report.txt", io.BytesIO(b"report"))],
    )
    return result.package.id


def test_a_chosen_id_taken_after_the_check_is_a_recorded_conflict(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = secrets.token_hex(16)
    check = PackageService._fresh_id

    def taken_meanwhile(self: PackageService, wanted: str | None) -> str:
        found = check(self, wanted)
        monkeypatch.setattr(PackageService, "_fresh_id", check)
        _upload(world, chosen)  # another upload takes the id between the check and the insert
        return found

    monkeypatch.setattr(PackageService, "_fresh_id", taken_meanwhile)
    objects = set(world.vault.store.keys())
    size = world.vault.ledger_size()
    with pytest.raises(Conflict, match="already in use") as refused:
        _upload(world, chosen)
    # Only the other upload's object is stored; the refused one's was deleted again.
    assert len(set(world.vault.store.keys()) - objects) == 1
    entries = world.vault.unscoped_entries(size)
    assert [(e.action, e.decision, e.reason) for e in entries] == [
        ("upload", "allow", "ok"),
        ("upload", "deny", "conflict"),
    ]
    assert refused.value.receipt == entries[-1].seq


def test_a_fault_of_the_vaults_own_is_recorded_and_stores_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    # Inside the transaction, after every file is stored.
    monkeypatch.setattr(packages_module, "records_row", broken)
    objects = set(world.vault.store.keys())
    size = world.vault.ledger_size()
    with pytest.raises(RuntimeError):
        world.vault.upload(
            world["uz.officer"],
            NewPackage(title="report"),
            [IncomingFile("report.txt", io.BytesIO(b"report"))],
            records=[object()],  # type: ignore[list-item]
        )
    assert set(world.vault.store.keys()) == objects
    entries = world.vault.unscoped_entries(size)
    assert [(e.action, e.decision, e.reason) for e in entries] == [
        ("upload", "error", "internal_error")
    ]


def test_an_upload_whose_file_gc_removed_meanwhile_fails_and_commits_nothing(
    world: World,
) -> None:
    """A small file first, then a large one over a slow link: until the commit, the first
    file's object belongs to no package, and a gc whose grace is shorter than the upload takes
    it for a stray. The upload must then fail (recorded), not commit a package whose file is
    gone."""
    vault = world.vault

    def files() -> Iterator[IncomingFile]:
        yield IncomingFile("first.txt", io.BytesIO(b"small, stored first"))
        removed, _, _ = vault.gc(local_operator(), grace=timedelta(0))
        assert removed == 1  # the first file's object, not yet any package's
        yield IncomingFile("second.txt", io.BytesIO(b"the large one, much later"))

    size = vault.ledger_size()
    with pytest.raises(StorageUnavailable, match="removed from the store"):
        vault.upload(world["uz.officer"], NewPackage(title="report"), files())
    entries = vault.unscoped_entries(size)
    assert vault.list_packages(world["uz.officer"]).items == []
    assert list(vault.store.keys()) == []
    assert [(e.action, e.decision, e.reason) for e in entries] == [
        ("gc", "allow", "ok"),
        ("upload", "error", "storage_unavailable"),
    ]
