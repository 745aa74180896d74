"""api/heapdump.py: heap snapshots on SIGUSR2, only when VAULT_HEAP_SNAPSHOT_DIR is set.

Each case runs in a child interpreter: tracing and signal handlers are process-wide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

CHILD = """
import os, signal, sys
from blo_vault.api import heapdump
folder = heapdump.install_from_environment()
print(os.getpid(), folder, signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL)
if folder is not None:
    kept = [bytearray(1000) for _ in range(2000)]  # something to see in the snapshot
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGUSR2)
"""


def _run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_off_by_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "VAULT_HEAP_SNAPSHOT_DIR"}
    assert _run(env).split()[1:] == ["None", "True"]


def test_each_signal_writes_a_whole_snapshot(tmp_path: Path) -> None:
    folder = tmp_path / "heap"
    pid, shown, default = _run({**os.environ, "VAULT_HEAP_SNAPSHOT_DIR": str(folder)}).split()
    assert (shown, default) == (str(folder), "False")
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    files = sorted(p.name for p in folder.iterdir())
    assert files == [
        f"heap-{pid}-1.native.json",
        f"heap-{pid}-1.snapshot",
        f"heap-{pid}-2.native.json",
        f"heap-{pid}-2.snapshot",
    ]
    snapshot = tracemalloc.Snapshot.load(str(folder / files[1]))
    assert sum(s.size for s in snapshot.statistics("filename")) > 2000 * 1000
    # What tracemalloc can't see, beside it: the allocator's totals (the 2 MB kept above are
    # malloc'd blocks: bytearrays of 1,000 bytes are past pymalloc's 512-byte limit) and
    # SQLite's own count.
    native = json.loads((folder / files[0]).read_text())
    assert native["malloc_in_use_bytes"] > 2000 * 1000
    assert native["malloc_arena_bytes"] >= native["malloc_in_use_bytes"]
    assert native["sqlite_memory_used_bytes"] >= 0
