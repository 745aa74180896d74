"""Heap snapshots on demand, to explain a server's memory growth under load.

Off unless ``VAULT_HEAP_SNAPSHOT_DIR`` names a folder when the server starts. Then each server
process traces its allocations (``tracemalloc``, one frame each: it slows the server, so the
load benchmark measures with it off and explains with it on) and, on ``SIGUSR2``, writes a
snapshot to ``heap-<pid>-<n>.snapshot`` in that folder. ``bench.load --heap-snapshots``
takes one when its last minutes start and one at the end, and compares them: what grew, by
source line. A snapshot holds sizes and source lines, never the data allocated.
"""

from __future__ import annotations

import itertools
import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

__all__ = ["ENV", "install_from_environment"]

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
        tracemalloc.take_snapshot().dump(str(partial))
        partial.rename(path)  # whole snapshots only: the benchmark waits for this name

    signal.signal(signal.SIGUSR2, dump)
    return target
