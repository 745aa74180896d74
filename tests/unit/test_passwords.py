"""vault.passwords: argon2 checks and hashes run at most ``max_concurrent`` at a time.

Each holds its whole memory cost while it runs; a burst of parallel logins must queue rather
than take that memory many times over (bench.bench_logins measures the memory)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import argon2
import pytest

from vault.passwords import Passwords

LIMIT = 2
CALLERS = 12


class Overlap:
    """Counts how many calls of the wrapped argon2 method run at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def wrap(self, original: Callable[..., object]) -> Callable[..., object]:
        def spy(*args: object, **kwargs: object) -> object:
            with self._lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(0.05)  # long enough for every caller to have arrived
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        return spy


def _at_once(work: Callable[[], object]) -> list[object]:
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(work())) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("method", ["verify", "hash"])
def test_parallel_calls_wait_their_turn(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    passwords = Passwords(time_cost=1, memory_kib=1024, parallelism=1, max_concurrent=LIMIT)
    stored = passwords.hash("the right password")
    overlap = Overlap()
    monkeypatch.setattr(
        argon2.PasswordHasher, method, overlap.wrap(getattr(argon2.PasswordHasher, method))
    )
    if method == "verify":
        results = _at_once(lambda: passwords.verify(stored, "a wrong password"))
        assert results == [False] * CALLERS
    else:
        results = _at_once(lambda: passwords.hash("a new password, long enough"))
        assert len(set(results)) == CALLERS  # each hash salted afresh
        assert all(passwords.verify(str(h), "a new password, long enough") for h in results)
    assert overlap.most == LIMIT, f"{overlap.most} ran at once"


def test_an_unknown_user_waits_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dummy check for a name no account has queues like a real one (same time, same
    memory: nothing tells the two apart)."""
    passwords = Passwords(time_cost=1, memory_kib=1024, parallelism=1, max_concurrent=LIMIT)
    overlap = Overlap()
    monkeypatch.setattr(argon2.PasswordHasher, "verify", overlap.wrap(argon2.PasswordHasher.verify))
    assert _at_once(lambda: passwords.verify(None, "anything at all")) == [False] * CALLERS
    assert overlap.most == LIMIT
