"""The caches of whom a ledger entry concerns are bounded: they must not grow with every
package ever uploaded (seen in a heap snapshot comparison under load)."""

from __future__ import annotations

from vault.service import ledger_openings


def test_remember_keeps_the_newest_and_drops_the_oldest() -> None:
    cache: dict[str, str] = {}
    limit = ledger_openings._CACHED
    for i in range(limit + 10):
        assert ledger_openings._remember(cache, f"p{i}", f"c{i}") == f"c{i}"
    assert len(cache) == limit
    assert "p0" not in cache
    assert "p9" not in cache
    assert cache["p10"] == "c10"
    assert cache[f"p{limit + 9}"] == f"c{limit + 9}"
