"""The caches of whom a ledger entry concerns are bounded: they must not grow with every
package ever uploaded (seen in a heap snapshot comparison under load)."""

from __future__ import annotations

import threading

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


def test_remember_from_many_threads_stays_bounded() -> None:
    cache: dict[str, int] = {}
    limit = ledger_openings._CACHED

    errors: list[BaseException] = []

    def fill(start: int) -> None:
        try:
            for i in range(start, start + 3 * limit):
                ledger_openings._remember(cache, f"p{i}", i)
        except (KeyError, RuntimeError) as exc:  # what an unlocked eviction races into
            errors.append(exc)

    threads = [threading.Thread(target=fill, args=(n * 10 * limit,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) == limit
