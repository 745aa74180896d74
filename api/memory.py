"""Handing the memory that large transfers freed back to the operating system (glibc only).

Transfers allocate and free 1 MiB buffers on several threads. glibc keeps freed chunks in the
arena of the thread that freed them, so under sustained load a server's RSS creeps up while its
Python heap stays flat (BENCHMARKS.md, "Memory under sustained load"). Forcing such buffers onto
their own mappings (``MALLOC_MMAP_THRESHOLD_=131072``, this image's earlier setting) curbed the
creep, but every buffer then became a fresh mapping faulted in and zeroed page by page: the
server spent 1.6–2.2× the CPU per transfer. Instead, the server calls ``malloc_trim(0)`` every
``VAULT_MALLOC_TRIM_SECONDS``: glibc returns the whole free pages of every arena to the system,
and allocation keeps the speed of its defaults. Where the C library is not glibc, nothing runs.
(It is not all of the creep: under ``bench.load`` on SQLite with the local store the servers'
RSS still grew 5.6–6.2 % over the last 4 minutes, every 10 s or every 2 s alike, against 4.0 %
with the mmap threshold; see BENCHMARKS.md.)
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["glibc_function", "glibc_trim", "trim_every"]


def glibc_function(name: str) -> Any | None:
    """The C function ``name`` of the process's C library if it is glibc's and has it (a
    ctypes function to give its types to), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):  # musl (Alpine) has no libc.so.6, or an older glibc
        return None


def glibc_trim() -> Callable[[], int] | None:
    """``malloc_trim(0)`` of the process's C library if it is glibc's, else None."""
    trim = glibc_function("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def trim_all() -> int:
        """1 if memory was returned to the system, 0 if there was none to return."""
        return int(trim(0))

    return trim_all


async def trim_every(seconds: float, trim: Callable[[], int] | None) -> None:
    """Run ``trim`` every ``seconds`` until cancelled, on a worker thread: it walks the arenas
    under their locks, which may take milliseconds, and ctypes releases the GIL meanwhile.
    Returns at once if ``seconds`` is 0 or there is nothing to run."""
    if trim is None or seconds <= 0:
        return
    while True:
        await anyio.sleep(seconds)
        await anyio.to_thread.run_sync(trim)
