"""How long SQLite's one write lock is held: by an upload's transaction and by the ledger's
group commit, through the service layer, against the same writes on a plain connection.

Under ``bench.load`` the write lock is taken nearly all the time (BENCHMARKS.md, "Issue 14,
2026-12-07 07:10"), so every read's entry waits for the writers ahead of it: shorter holds are
what lowers the reads' tail. A hold is timed from the moment a writer has its turn (just
before its BEGIN IMMEDIATE) until its connection is back in the pool, where the turn is given
back (vault.db).

Phases, each ``--seconds`` long:

- **upload**: one thread uploading one small file at a time (the hold of its transaction:
  the package and file rows, the ledger entry, the commit);
- **group commit**: ``--threads`` threads showing packages, whose entries the group commit
  appends in batches (the hold of each batch);
- **raw**, the baseline, in the same process on the same database file: on a plain
  ``sqlite3`` connection (WAL, synchronous=FULL, as the vault's), BEGIN IMMEDIATE, rows of
  the same sizes as each kind of hold writes (for a batch, the group commit's mean batch), and
  COMMIT. It is the database work alone, without SQLAlchemy, the Merkle tree or sealing.

    python -m bench.write_holds [--seconds 10] [--threads 8]
    python -m bench.write_holds --quick    # 0.5 s phases (CI)

Writes bench/out/write_holds.json. SQLite only: PostgreSQL has no one write lock.
"""

from __future__ import annotations

import argparse
import io
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench.harness import (
    add_common_arguments,
    machine_info,
    machine_line,
    open_world,
    print_table,
    run_in_workdir,
    seed_packages,
    summary_ms,
)
from vault.db import READ_ONLY, WRITER_FIRST
from vault.schemas import NewPackage
from vault.service import IncomingFile, Vault

QUICK = {"seconds": 0.5, "threads": 2}
_STARTED = "bench_write_hold"
# Sizes of what each hold writes, in bytes (a small package: one file; an entry with its
# sealed opening; a Merkle node). Close to the vault's rows, so the baseline writes as much.
PACKAGE_ROWS = (420, 260)
ENTRY_ROW = 700
NODE_ROW = 48


class HoldTimer:
    """Times the holds of the write lock on ``vault``'s engine, by kind (upload or group
    commit), from the BEGIN of a writer to its connection's return to the pool."""

    def __init__(self, vault: Vault) -> None:
        self.holds: dict[str, list[int]] = {"upload": [], "group commit": []}
        self._lock = threading.Lock()
        # Registered after vault.db's own listeners, so they run after the writer has its
        # turn (begin) and after it gave the turn back (checkin).
        event.listen(vault.engine, "begin", self._began)
        event.listen(vault.engine.pool, "checkin", self._returned)

    def clear(self) -> None:
        with self._lock:
            for holds in self.holds.values():
                holds.clear()

    def _began(self, conn: Any) -> None:
        options = conn.get_execution_options()
        if not options.get(READ_ONLY, False) and _STARTED not in conn.info:
            kind = "group commit" if options.get(WRITER_FIRST, False) else "upload"
            conn.info[_STARTED] = (time.perf_counter_ns(), kind)

    def _returned(self, _dbapi_conn: Any, record: Any) -> None:
        started = record.info.pop(_STARTED, None) if record is not None else None
        if started is not None:
            with self._lock:
                self.holds[started[1]].append(time.perf_counter_ns() - started[0])


def for_seconds(seconds: float, threads: int, fn: Callable[[int], object]) -> int:
    """Call ``fn(i)`` in ``threads`` threads until ``seconds`` have passed; the call count."""
    stop = time.monotonic() + seconds

    def worker(offset: int) -> int:
        count = 0
        while time.monotonic() < stop:
            fn(offset + count)
            count += 1
        return count

    with ThreadPoolExecutor(threads) as pool:
        return sum(f.result() for f in [pool.submit(worker, i * 1000) for i in range(threads)])


def raw_holds(db: Path, rows: Sequence[int], seconds: float) -> list[int]:
    """The baseline: BEGIN IMMEDIATE, rows of these sizes, COMMIT, on a plain connection,
    for ``seconds``; each transaction's time in ns."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_scratch (n INTEGER PRIMARY KEY, b BLOB)")
        blobs = [bytes(size) for size in rows]
        held: list[int] = []
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            started = time.perf_counter_ns()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO bench_scratch (b) VALUES (?)", [(b,) for b in blobs])
            conn.execute("COMMIT")
            held.append(time.perf_counter_ns() - started)
        return held
    finally:
        conn.close()


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Seed a vault, then time the holds of uploads, of group commits, and the baseline."""
    vault, officer = open_world(work / "vault-data")
    try:
        packages = seed_packages(vault, officer, 20)
        timer = HoldTimer(vault)

        def upload(i: int) -> object:
            meta = NewPackage(title=f"hold {i}", description="bench")
            return vault.upload(officer, meta, [IncomingFile("a.txt", io.BytesIO(b"x" * 1000))])

        def show(i: int) -> object:
            return vault.get_package(officer, packages[i % len(packages)])

        for _ in range(20):  # warm: statement caches, pool, page cache
            upload(0)
            show(0)
        result: dict[str, Any] = {
            "machine": machine_info(work),
            "seconds_per_phase": args.seconds,
            "threads": args.threads,
        }
        timer.clear()
        for_seconds(args.seconds, 1, upload)
        uploads = list(timer.holds["upload"])
        timer.clear()
        shows = for_seconds(args.seconds, args.threads, show)
        commits = list(timer.holds["group commit"])
    finally:
        vault.close()
    batch = max(1, round(shows / max(1, len(commits))))
    db = work / "vault-data" / "vault.db"
    upload_rows = [*PACKAGE_ROWS, ENTRY_ROW, NODE_ROW, NODE_ROW]
    commit_rows = [ENTRY_ROW] * batch + [NODE_ROW] * (2 * batch)
    result["mean_batch"] = round(shows / max(1, len(commits)), 2)
    for name, held, rows in (
        ("upload", uploads, upload_rows),
        ("group commit", commits, commit_rows),
    ):
        raw = summary_ms(raw_holds(db, rows, args.seconds / 2))
        vaults = summary_ms(held)
        result[name] = {
            "holds": vaults,
            "raw": raw,
            "ratio_median": round(vaults["median_ms"] / raw["median_ms"], 2) if held else None,
        }
    return result


def print_report(result: dict[str, Any]) -> None:
    """One row per kind of hold: the vault's and the baseline's."""
    print(machine_line(result["machine"]))
    rows = []
    for name in ("upload", "group commit"):
        f = result[name]
        rows.append(
            (
                name,
                f["holds"]["n"],
                f["holds"].get("median_ms"),
                f["holds"].get("p90_ms"),
                f["raw"]["median_ms"],
                f["ratio_median"],
            )
        )
    print_table(("hold", "count", "median ms", "p90 ms", "raw median ms", "median vs raw"), rows)
    print(f"group commit: {result['mean_batch']} entries a batch")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="per phase (10)")
    parser.add_argument("--threads", type=int, default=8, help="threads showing (8)")
    add_common_arguments(parser, out="write_holds.json")
    return run_in_workdir("bench.write_holds", parser, argv, QUICK, run, print_report)


if __name__ == "__main__":
    sys.exit(main())
