"""Blocking byte streams: reading whole blocks, and reading ahead on a thread.

Plumbing for vault.crypto's sealed streams (which decrypt on the caller's thread while the next
segment is read on another), kept apart from the cryptography itself.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Protocol

__all__ = ["ReadAhead", "Readable", "read_full"]


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


class ReadAhead:
    """Reads ``size``-byte blocks from ``source`` on a thread, at most ``depth`` blocks ahead.

    Reading (a page-cache refill from disk, or a socket) releases the GIL, so it runs on one
    core while the caller decrypts on the other, instead of the two taking turns. A short block
    is the end; the thread stops there, or at the first error, which :meth:`next` re-raises.
    :meth:`close` stops and joins the thread, so once it returns nothing touches ``source``
    again and the caller may close it.
    """

    def __init__(self, source: Readable, size: int, *, depth: int = 4) -> None:
        self._queue: queue.Queue[bytes | Exception] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(source, size), name="read-ahead", daemon=True
        )
        self._thread.start()

    def _run(self, source: Readable, size: int) -> None:
        try:
            while not self._stop.is_set():
                block = read_full(source, size)
                self._queue.put(block)
                if len(block) < size:
                    return
        except Exception as exc:  # noqa: BLE001 - next() re-raises it to the consumer
            self._queue.put(exc)

    def next(self) -> bytes:
        """The next block (shorter than ``size`` only at the end)."""
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        """Stop reading and wait for the thread; safe to call at any point, and twice."""
        self._stop.set()
        while self._thread.is_alive():
            # The thread may be blocked handing over a block: take it so the thread sees _stop.
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()
