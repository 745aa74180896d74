"""Heap snapshots on demand, to explain a server's memory growth under load.

Off unless ``VAULT_HEAP_SNAPSHOT_DIR`` names a folder when the server starts. Then each server
process traces its allocations (``tracemalloc``, one frame each: it slows the server, so the
load benchmark measures with it off and explains with it on) and, on ``SIGUSR2``, writes a
snapshot to ``heap-<pid>-<n>.snapshot`` in that folder. ``bench.load --heap-snapshots``
takes one when its last minutes start and one at the end, and compares them: what grew, by
source line. A snapshot holds sizes and source lines, never the data allocated.

Beside each snapshot, ``heap-<pid>-<n>.native.json`` holds what ``tracemalloc`` can't see:
glibc's allocator totals (``mallinfo2``: bytes in use and free in its arenas, and in mmapped
blocks) and SQLite's own count of the memory it holds (``sqlite3_memory_used``), so growth
outside the Python heap can be told apart: SQLite's caches, live C allocations, or freed
memory the allocator keeps.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

from blo_vault.api.memory import glibc_function

__all__ = ["ENV", "install_from_environment", "native_heap"]

ENV = "VAULT_HEAP_SNAPSHOT_DIR"


def install_from_environment() -> Path | None:
    """Start tracing and install the SIGUSR2 handler if ``ENV`` is set; the folder, or None."""
    folder = os.environ.get(ENV)
    if not folder:
        return None
    target = Path(folder)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not tracemalloc.is_tracing():
        tracemalloc.start(1)
    counter = itertools.count(1)

    def dump(signum: int, frame: FrameType | None) -> None:
        path = target / f"heap-{os.getpid()}-{next(counter)}.snapshot"
        partial = path.with_suffix(".partial")
        path.with_suffix(".native.json").write_text(json.dumps(native_heap()))
        tracemalloc.take_snapshot().dump(str(partial))
        partial.rename(path)  # whole snapshots only: the benchmark waits for this name

    signal.signal(signal.SIGUSR2, dump)
    return target


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes the arenas took from the system (not mmapped blocks)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in mmapped blocks
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use in the arenas
            "fordblks",  # bytes free in the arenas
            "keepcost",
        )
    ]


def native_heap() -> dict[str, int]:
    """Allocator and SQLite memory of this process, in bytes (what is available here: glibc's
    ``mallinfo2`` on glibc 2.33 and later, SQLite's memory statistics when it keeps them)."""
    out: dict[str, int] = {}
    mallinfo2 = glibc_function("mallinfo2")
    if mallinfo2 is not None:
        mallinfo2.restype = _MallInfo2
        info = mallinfo2()
        out |= {
            "malloc_arena_bytes": info.arena,
            "malloc_in_use_bytes": info.uordblks,
            "malloc_free_bytes": info.fordblks,
            "malloc_mmapped_bytes": info.hblkhd,
        }
    try:
        sqlite = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        return out
    sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    out["sqlite_memory_used_bytes"] = sqlite.sqlite3_memory_used()
    return out
