"""Audited metadata reads through the service layer alone (no HTTP), against raw SQL.

What bounds ``bench.load`` before any web framework: how many authenticated, authorised and
recorded reads one process does, in 1 and in several threads. Each operation is what one API
request does: ``Vault.reading_as(token)`` (the caller's lookup), then in its transaction
``get_package`` (show) or ``list_packages`` (first page of 50), each recorded in the ledger
before it returns.

The raw baseline, in the same process and on the same database file: the SELECTs the service
sent for one show, captured and replayed on a plain ``sqlite3`` connection, plus one INSERT
into a scratch table and a COMMIT (WAL, synchronous=FULL, as the ledger's) per operation. It
is the database work alone, without Python-side decisions, encryption or the Merkle tree.

    python -m bench.service_reads [--seconds 10] [--threads 1,8]
    python -m bench.service_reads --quick    # 0.5 s phases, 20 packages (CI)

Writes bench/out/service_reads.json. SQLite only (the embedded default).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench.harness import (
    PASSWORD,
    add_common_arguments,
    machine_info,
    machine_line,
    open_world,
    print_table,
    run_in_workdir,
    seed_packages,
)
from vault.service import Vault

QUICK = {"seconds": 0.5, "packages": 20, "threads": [1, 2]}


def timed(fn: Callable[[], object], threads: int, seconds: float) -> dict[str, float]:
    """Run ``fn`` in ``threads`` threads for ``seconds``; operations per second, CPU per op."""
    stop = time.monotonic() + seconds

    def worker() -> int:
        count = 0
        while time.monotonic() < stop:
            fn()
            count += 1
        return count

    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
        ops = sum(f.result() for f in futures)  # re-raises what a worker raised
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "threads": threads,
        "ops": ops,
        "ops_per_second": round(ops / wall, 1),
        "cpu_ms_per_op": round(cpu / ops * 1000, 3),
        "cpu_cores": round(cpu / wall, 2),
    }


def capture_selects(vault: Vault, fn: Callable[[], object]) -> list[tuple[str, Any]]:
    """The SELECT statements (and parameters) the service sends while ``fn`` runs."""
    seen: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(vault.engine, "before_cursor_execute", grab)
    try:
        fn()
    finally:
        event.remove(vault.engine, "before_cursor_execute", grab)
    return seen


def raw_reads(db: Path, selects: list[tuple[str, Any]]) -> Callable[[], object]:
    """One operation of the baseline: the captured SELECTs, then INSERT + durable COMMIT."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS bench_scratch (n INTEGER, entry BLOB)")
    entry = bytes(300)  # about a ledger entry's size
    counter = iter(range(1 << 62))

    def op() -> None:
        conn.execute("BEGIN")
        for sql, params in selects:
            conn.execute(sql, params).fetchall()
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO bench_scratch VALUES (?, ?)", (next(counter), entry))
        conn.execute("COMMIT")

    return op


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Seed a vault, then time the raw baseline and the service's show and list."""
    vault, officer = open_world(work / "vault-data")
    try:
        token = vault.login("uz.officer", PASSWORD).access_token
        packages = seed_packages(vault, officer, args.packages)
        target = packages[len(packages) // 2]

        # As the API's read routes do: the caller's lookup and the read in one transaction.
        def show() -> object:
            with vault.reading_as(token) as caller:
                return vault.get_package(caller, target)

        def listing() -> object:
            with vault.reading_as(token) as caller:
                return vault.list_packages(caller, limit=50)

        for _ in range(50):  # warm: statement caches, pool, page cache
            show()
            listing()
        selects = capture_selects(vault, show)
        result: dict[str, Any] = {
            "machine": machine_info(work),
            "packages": len(packages),
            "seconds_per_phase": args.seconds,
            "raw_show_statements": len(selects),
        }
        raw = timed(raw_reads(work / "vault-data" / "vault.db", selects), 1, args.seconds)
        result["raw_show"] = raw
        for name, fn in (("show", show), ("list", listing)):
            for threads in args.threads:
                result[f"service_{name}_{threads}"] = timed(fn, threads, args.seconds)
    finally:
        vault.close()
    one = result["service_show_1"]
    result["ratio_show_time_1_thread"] = round(raw["ops_per_second"] / one["ops_per_second"], 2)
    return result


def print_report(result: dict[str, Any]) -> None:
    """One row per measured operation and thread count, then the ratio."""
    print(machine_line(result["machine"]))
    rows = []
    for key, f in result.items():
        if key == "raw_show" or key.startswith("service_"):
            label = "raw show" if key == "raw_show" else key.split("_")[1]
            rows.append(
                (label, f["threads"], f["ops_per_second"], f["cpu_ms_per_op"], f["cpu_cores"])
            )
    print_table(("operation", "threads", "ops/s", "CPU ms/op", "cores"), rows)
    print(f"show vs raw, one thread: {result['ratio_show_time_1_thread']}x the time")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="per phase (10)")
    parser.add_argument("--packages", type=int, default=200, help="packages seeded (200)")
    parser.add_argument(
        "--threads",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 8],
        help="thread counts, comma-separated (1,8)",
    )
    add_common_arguments(parser, out="service_reads.json")
    return run_in_workdir("bench.service_reads", parser, argv, QUICK, run, print_report)


if __name__ == "__main__":
    sys.exit(main())
