"""Blocking byte streams: what a source is, and reading whole blocks from one.

Plumbing for vault.crypto's sealed streams, kept apart from the cryptography itself.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Readable", "read_full"]


class Readable(Protocol):
    """Anything with a blocking ``read(n)`` that returns ``b""`` at end of stream."""

    def read(self, size: int = -1, /) -> bytes: ...


def read_full(source: Readable, size: int) -> bytes:
    """Read exactly ``size`` bytes unless the stream ends first (short reads are retried)."""
    first = source.read(size)
    if len(first) == size or not first:
        return first
    parts = [first]
    got = len(first)
    while got < size:
        more = source.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
