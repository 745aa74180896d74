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
import gc
import sys
from collections.abc import Callable
from typing import Any

import anyio

__all__ = [
    "GC_YOUNG_THRESHOLD",
    "glibc_function",
    "glibc_trim",
    "settle_startup_objects",
    "trim_every",
]


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


# Container objects allocated (less those freed) before the cyclic collector looks at the
# youngest generation; Python's default is 700.
GC_YOUNG_THRESHOLD = 20_000


def settle_startup_objects() -> None:
    """Take what the server built before its first request (modules, the app and its routes,
    the database engine, the policy) out of the cyclic garbage collector's sight, and let it
    look at the young generation less often.

    With Python's defaults a server under load spent 4–9 % of its CPU in the collector
    (``perf``), mostly walking those long-lived objects again in each older-generation pass,
    and collected every 16 requests or so. Requests make few objects that outlive them, and
    garbage held in reference cycles waits at most one young-generation pass longer; what
    these settings keep is bounded (BENCHMARKS.md, "Issue 14, 2026-12-07 04:10"). Servers
    only: called where ``blovault serve`` and uvicorn load the app (blo_vault.api.asgi), not
    by processes that build apps as they go (the tests)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
