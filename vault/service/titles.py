"""Opened titles of packages, kept in memory so a listing need not unwrap a key and open the
sealed metadata of every package on every page.

A title is a server-side secret the server already holds (it opens it on every listing); the
cache keeps it only in this process's memory, never on disk or in a log, and bounds it:

- in size (``LIMIT`` titles; the oldest goes first), so memory does not grow with every
  package ever listed;
- in time (``TTL_SECONDS`` after it was opened), so a title another process purged leaves
  this one's memory too, at the first use of the cache after that (purge in this process
  forgets it at once, :meth:`Titles.forget`);
- to the sealed bytes it was opened from: the key is the package id and a digest of the
  KEK id, wrapped key and sealed metadata, so a purged package (both destroyed), a re-wrapped key
  or tampered metadata never finds an entry; that row is opened again (and a tampered one
  fails, as without the cache).

Which packages a caller may list is decided by the listing query on every request; the cache
only spares the opening of rows that query returned.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from vault.service.sealed import SealedRow

# About 2.5 MiB at a typical title's length, 25 MiB at most (500-character titles of 4-byte
# characters); pages of a listing are 200 at most, so this holds many callers' working sets.
LIMIT = 10_000
TTL_SECONDS = 60.0


def _digest(kek_id: str, wrapped_key: bytes, sealed_meta: bytes) -> bytes:
    """What the entry was opened from (the sealed bytes are not kept: only their digest)."""
    h = hashlib.blake2b(digest_size=16)
    kek = kek_id.encode()
    for part in (kek, wrapped_key):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    h.update(sealed_meta)
    return h.digest()


class Titles:
    """Bounded, expiring cache of opened titles, keyed by package id and sealed bytes."""

    def __init__(
        self,
        *,
        limit: int = LIMIT,
        ttl_seconds: float = TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._ttl = ttl_seconds
        self._clock = clock
        # package id -> (digest, title, opened at); oldest first (entries are never moved, so
        # insertion order is also expiry order).
        self._entries: OrderedDict[str, tuple[bytes, str, float]] = OrderedDict()
        # Request threads read and fill it at once; evictions under one lock.
        self._lock = threading.Lock()

    def title(self, package: SealedRow, open_title: Callable[[], str]) -> str:
        """The package's title: remembered, or ``open_title()`` (then remembered). Whatever
        ``open_title`` raises (IntegrityError for tampered rows) goes to the caller, and
        nothing is remembered."""
        package_id = package.id
        digest = _digest(package.kek_id, package.wrapped_key, package.sealed_meta)
        with self._lock:
            self._expire(self._clock())
            found = self._entries.get(package_id)
            if found is not None and found[0] == digest:
                return found[1]
        title = open_title()
        with self._lock:
            self._entries.pop(package_id, None)
            # Stamped under the lock: insertion order stays expiry order.
            self._entries[package_id] = (digest, title, self._clock())
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)
        return title

    def forget(self, package_id: str) -> None:
        """Drop a package's title (purge: its keys are being destroyed)."""
        with self._lock:
            self._entries.pop(package_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, package_id: object) -> bool:
        with self._lock:
            return package_id in self._entries

    def _expire(self, now: float) -> None:
        """Drop the entries older than the TTL (the oldest are first); under the lock."""
        entries = self._entries
        while entries:
            oldest = next(iter(entries.values()))
            if now - oldest[2] < self._ttl:
                return
            entries.popitem(last=False)
