"""The server hands freed transfer buffers back to the system (api/memory.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import anyio
import pytest

from blo_vault.api import memory

pytestmark = pytest.mark.skipif(
    memory.glibc_trim() is None, reason="the C library is not glibc: there is nothing to trim"
)

# In a fresh interpreter, so the allocator's state is only this script's: 200 buffers of 1 MiB
# allocated and freed on a worker thread, the way transfers use them, each followed by a small
# object that stays (so the freed space is not at the top of the heap, where glibc would give
# it back by itself). The first buffer freed raises glibc's mmap threshold, so the rest come
# from the thread's arena, which keeps them when freed.
CHURN = textwrap.dedent(
    """
    import threading
    from blo_vault.api import memory

    def rss_mib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024

    kept = []

    def transfer():
        buffers = []
        for i in range(200):
            buffers.append(bytearray(1 << 20))
            if i == 1:
                buffers.pop(0)
            kept.append(bytearray(2000))
        buffers.clear()

    worker = threading.Thread(target=transfer)
    worker.start()
    worker.join()
    before = rss_mib()
    returned = memory.glibc_trim()()
    print(before, rss_mib(), returned)
    """
)


def test_trimming_returns_what_transfers_freed_to_the_system() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHURN], capture_output=True, text=True, timeout=60, check=True
    )
    before, after, returned = map(int, done.stdout.split())
    assert before - after >= 150, (before, after)  # nearly all of the 200 MiB freed
    assert returned == 1


def test_the_server_trims_on_its_cadence() -> None:
    trim = memory.glibc_trim()
    assert trim is not None
    calls: list[int] = []

    def counted() -> int:
        calls.append(trim())
        return calls[-1]

    async def run() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(memory.trim_every, 0.01, counted)
            with anyio.fail_after(30):  # a bound for a stuck loop, not a timing
                while len(calls) < 3:
                    await anyio.sleep(0.01)
            tasks.cancel_scope.cancel()

    anyio.run(run)
    assert len(calls) >= 3


def test_no_trimming_when_disabled() -> None:
    async def run() -> None:
        with anyio.fail_after(1.0):  # returns at once, rather than looping
            await memory.trim_every(0, memory.glibc_trim())

    anyio.run(run)
