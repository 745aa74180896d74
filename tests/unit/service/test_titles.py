"""Listings remember opened titles (vault.service.titles), within bounds: purge forgets a
package's title at once in its process and within the TTL in every other; a title is found only
for the very sealed bytes it was opened from, so tampered or destroyed metadata is never
answered from memory; and the cache holds at most its limit."""

from __future__ import annotations

import functools
import io

import pytest
from sqlalchemy import text

from tests.conftest import World
from vault.errors import IntegrityError
from vault.schemas import NewPackage
from vault.service import IncomingFile, Vault, local_operator
from vault.service.titles import Titles


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _upload(vault: Vault, world: World, title: str) -> str:
    return vault.upload(
        world["uz.officer"],
        NewPackage(title=title),
        [IncomingFile(name="a.txt", reader=io.BytesIO(title.encode()))],
    ).package.id


def _titles(vault: Vault, world: World) -> dict[str, str]:
    return {i.id: i.title for i in vault.list_packages(world["uz.officer"], limit=50).items}


def test_listing_remembers_titles_and_purge_forgets_them(world: World) -> None:
    vault = world.vault
    kept, purged = _upload(vault, world, "kept"), _upload(vault, world, "purged")
    assert _titles(vault, world) == {kept: "kept", purged: "purged"}
    assert kept in vault.core.titles
    assert purged in vault.core.titles
    vault.purge(local_operator(), purged)
    assert purged not in vault.core.titles
    assert _titles(vault, world) == {kept: "kept"}


def test_another_process_drops_a_purged_title_within_the_ttl(world: World) -> None:
    vault = world.vault
    other = Vault.open(world.settings, create=False)  # a second server over the same database
    clock = Clock()
    other.core.titles = Titles(ttl_seconds=60, clock=clock)
    try:
        kept, purged = _upload(vault, world, "kept"), _upload(vault, world, "purged")
        assert _titles(other, world) == {kept: "kept", purged: "purged"}
        vault.purge(local_operator(), purged)
        clock.now += 30
        # Not listed (the query decides), though still in the other's memory until the TTL.
        assert _titles(other, world) == {kept: "kept"}
        clock.now += 31
        assert _titles(other, world) == {kept: "kept"}
        assert purged not in other.core.titles
        assert kept in other.core.titles  # opened again when it expired
    finally:
        other.close()


def test_tampered_metadata_is_not_answered_from_memory(world: World) -> None:
    vault = world.vault
    first, second = _upload(vault, world, "first"), _upload(vault, world, "second")
    assert _titles(vault, world) == {first: "first", second: "second"}
    # Someone with write access to the database moves one package's sealed metadata onto
    # the other: without the cache that listing fails; it must fail with the cache too.
    with vault.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE package SET sealed_meta = "
                "(SELECT sealed_meta FROM package WHERE id = :src) WHERE id = :dst"
            ),
            {"src": first, "dst": second},
        )
    with pytest.raises(IntegrityError):
        _titles(vault, world)


def test_the_cache_is_bounded_and_expires() -> None:
    clock = Clock()
    titles = Titles(limit=3, ttl_seconds=10, clock=clock)

    class Row:
        def __init__(self, n: int) -> None:
            self.id, self.kek_id = f"p{n}", "k"
            self.wrapped_key, self.sealed_meta = b"w%d" % n, b"m%d" % n

    opened: list[str] = []

    def opener(n: int) -> str:
        opened.append(f"p{n}")
        return f"t{n}"

    for n in range(5):
        assert titles.title(Row(n), functools.partial(opener, n)) == f"t{n}"
    assert len(titles) == 3
    assert "p0" not in titles
    assert "p1" not in titles
    assert titles.title(Row(4), lambda: opener(99)) == "t4"  # remembered: not opened again
    assert opened == ["p0", "p1", "p2", "p3", "p4"]
    changed = Row(4)
    changed.sealed_meta = b"other"
    assert titles.title(changed, lambda: "new") == "new"  # other bytes: opened again
    clock.now += 11
    assert titles.title(Row(9), lambda: "t9") == "t9"
    assert len(titles) == 1  # the expired ones went at that use


def test_a_remembered_title_does_not_outlive_a_revoked_release(world: World) -> None:
    """The cache only spares opening rows the listing query returned: a release revoked in
    one process hides the package from the next listing in another that remembers its title."""
    vault = world.vault
    other = Vault.open(world.settings, create=False)  # a second server over the same database
    try:
        package_id = _upload(vault, world, "released")
        released = vault.release(world["uz.officer"], package_id, country="KZ")
        kz = world["kz.officer"]
        assert [i.title for i in other.list_packages(kz, limit=50).items] == ["released"]
        assert package_id in other.core.titles
        vault.revoke_release(world["uz.officer"], package_id, released.release.id)
        assert other.list_packages(kz, limit=50).items == []
    finally:
        other.close()
