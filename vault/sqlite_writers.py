"""SQLite's writers, across the threads and processes of one database file, in a queue.

SQLite itself lets one writer in at a time and leaves the others to poll; the queue here
decides who goes next (see WriterQueue). Used by vault.db's SQLite engine.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time

__all__ = ["WRITER_QUEUE_SECONDS", "Turn", "WriterQueue"]

# How long a writer queues before going ahead to SQLite's own lock wait (busy_timeout).
WRITER_QUEUE_SECONDS = 30.0


class WriterQueue:
    """Writers of one SQLite file, across threads and processes, queue on an OS file lock.

    SQLite lets one writer in at a time, and one that finds the lock taken polls for it with
    sleeps growing to 100 ms, so it can sleep long after the lock came free: under load, every
    read waiting on a ledger commit waited with it (p99 over a second with two server
    processes). A writer here takes an exclusive ``flock`` on ``<database>.writer-lock`` just
    before BEGIN IMMEDIATE and lets go when its connection returns to the pool, so the next
    one starts as soon as the lock is released.

    Threads of one process first queue on a lock of their own, which sleeps in the kernel
    until it is free, so only one thread a process polls the file lock: with every waiting
    thread polling it, 20 concurrent uploads spent more CPU polling than writing.

    A writer marked ``first`` (vault.db.WRITER_FIRST: the ledger's group commit) takes this
    process's turn before the others waiting for it (see Turn). One commit of that writer
    answers every read whose entry is in its batch, while an upload's transaction answers one
    request; in line behind a process's queued uploads, the reads' entries waited 30 ms at the
    90th percentile under ``bench.load`` (BENCHMARKS.md, "Issue 14, 2026-12-07 07:10").

    Only an aid to fairness: SQLite's lock still guards the data. A writer that can't queue
    within WRITER_QUEUE_SECONDS goes ahead to SQLite's own wait, which ends in its usual
    "database is locked" error, so a stuck holder can't hang anyone for good.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._ours = Turn()  # this process's turn

    def enter(self, *, first: bool = False) -> int | None:
        """Wait for our turn (ahead of the writers not ``first``); the descriptor that holds it
        (None if we went ahead without). Give it back with :meth:`leave`."""
        deadline = time.monotonic() + WRITER_QUEUE_SECONDS
        if not self._ours.acquire(first=first, timeout=WRITER_QUEUE_SECONDS):
            return None
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except BaseException:
            self._ours.release()
            raise
        pause = 0.00005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self.leave(fd)
                    return None
                # Short, bounded pauses: the holder's transaction is a few milliseconds.
                time.sleep(pause)
                pause = min(pause * 2, 0.001)

    def leave(self, fd: int) -> None:
        """Give back the turn :meth:`enter` gave (closing ``fd`` releases the file lock)."""
        try:
            os.close(fd)
        finally:
            self._ours.release()


class Turn:
    """A lock for one thread at a time that gives itself to a waiting ``first`` thread before
    the others, but never twice in a row while another waits: a steady stream of group
    commits can't starve the uploads. (No order among threads of one kind, as with
    threading.Lock.)"""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._lock = lock
        self._wake = {True: threading.Condition(lock), False: threading.Condition(lock)}
        self._waiting = {True: 0, False: 0}
        self._held = False
        self._last_first = False  # whether the last holder was a first thread

    def acquire(self, *, first: bool, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds; False if it could not be taken."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiting[first] += 1
            try:
                while self._held or self._first_next() != first:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._wake[first].wait(remaining)
                self._held = True
                self._last_first = first
                return True
            finally:
                self._waiting[first] -= 1
                if not self._held:  # gave up: the turn may be another kind's now
                    self._wake_next()

    def release(self) -> None:
        """Give the lock back, and wake a waiter whose turn it is."""
        with self._lock:
            self._held = False
            self._wake_next()

    def _first_next(self) -> bool:
        # Whether a first thread takes the lock when it is free (called holding _lock).
        if not self._waiting[True]:
            return False
        return not (self._last_first and self._waiting[False])

    def _wake_next(self) -> None:
        if self._waiting[True] or self._waiting[False]:
            self._wake[self._first_next()].notify()
