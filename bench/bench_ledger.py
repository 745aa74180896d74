"""Ledger benchmark: durable appends, verification throughput and inclusion-proof latency.

Run::

    python -m bench.bench_ledger [--entries N] [--appends M] [--proofs P] [--pg URL]
                                 [--dir PATH] [--out FILE] [--no-experiments] [--wait-idle S]
    python -m bench.bench_ledger --quick    # 10,000 entries, 50 appends: seconds (CI)

In one process, on throw-away databases under a temp folder (``--dir`` to choose the disk):

appends (SQLite)
    ``M`` appends, each ``with session_scope(engine): vault.ledger.log.append(...)`` on the
    vault's own engine (``make_engine``: WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``), so
    each is its own committed, fsynced transaction. Baseline: the same entry
    bytes inserted with plain ``sqlite3`` into a table of the same shape, same pragmas, one
    ``BEGIN IMMEDIATE``/``INSERT``/``COMMIT`` each on one open connection. Reported as
    appends/s and vault/raw ratio.
appends (PostgreSQL, ``--pg URL``)
    The same through ``make_engine(URL)`` in a fresh schema, vs raw psycopg
    ``INSERT`` + ``commit()`` per entry on one connection.
verify
    A ledger of ``N`` entries (default 1,000,000) is bulk-built into a fresh SQLite database
    (entry bytes generated and chained in Python, nodes from ``merkle.CompactRange.append``,
    inserted with ``executemany``; checkpoints signed at N/2 and N with
    ``log.sign_checkpoint``). Timed: ``verify.verify_entries`` over the N entries already in
    memory (pure CPU), ``verify.verify_export`` on the equivalent export document, and
    ``check.verify_database`` (reads included) in one process and with one forked process
    per CPU (at most 8), as ``blovault ledger verify`` runs by default.
proofs
    ``P`` random sequence numbers, ``log.inclusion_proof(session, seq, N)`` each timed alone
    (median, p99); each proof is then verified (not timed).
experiments (unless ``--no-experiments``)
    Where the append time goes: raw sqlite3 with a new connection per transaction (what a
    pool-less engine pays), and with the head read and node rows a real append also does;
    ``log.append`` on a one-connection pool of this file's own with the vault's pragmas, the
    same with ``synchronous=NORMAL``, and 100 appends per commit; a cProfile of vault appends
    (``bench/out/profile_ledger_append.pstats``). For proofs: the same node rows fetched with
    one plain sqlite3 query and resolved, to split database time from Python time.

Results: a table on stdout, JSON in ``bench/out/ledger.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import base64
import gc
import os
import pstats
import random
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import QueuePool
from sqlmodel import Session

from bench.harness import (
    LIST_RECORD,
    ORIGIN,
    OUT_DIR,
    Phases,
    add_common_arguments,
    command_line,
    ledger_engine,
    machine_info,
    machine_line,
    parse_arguments,
    pg_schema,
    plain_pg_url,
    print_table,
    profiled,
    seconds_ms,
    workdir,
    write_json,
)
from vault import db
from vault.ledger import check, log, merkle, note
from vault.ledger.entry import GENESIS_PREV, Entry
from vault.ledger.verify import ListSource, verify_entries, verify_export
from vault.models import LedgerNode

QUICK = {"entries": 10_000, "appends": 50, "proofs": 200}
PROFILE_OUT = OUT_DIR / "profile_ledger_append.pstats"
WORKERS = min(os.cpu_count() or 1, 8)  # as `blovault ledger verify` uses by default
TARGET_APPENDS = 3_000.0
TARGET_VERIFY = 300_000.0
TARGET_PROOF_MS = 2.0
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA recursive_triggers=ON",
    "PRAGMA busy_timeout=30000",
)
LEDGER_DDL = (
    "CREATE TABLE ledgerentry (seq INTEGER NOT NULL PRIMARY KEY, "
    "prev_hash BLOB NOT NULL UNIQUE, entry BLOB NOT NULL)"
)
NODE_DDL = (
    "CREATE TABLE ledgernode (level INTEGER NOT NULL, idx INTEGER NOT NULL, "
    "hash BLOB NOT NULL, PRIMARY KEY (level, idx))"
)


# --- helpers ---------------------------------------------------------------------------------


def raw_sqlite(path: Path, pragmas: tuple[str, ...] = SQLITE_PRAGMAS) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    for pragma in pragmas:
        conn.execute(pragma)
    return conn


def time_appends(
    engine: Engine, count: int, *, per_tx: int = 1, collect: bool = True
) -> tuple[float, list[float]]:
    """``count`` calls of log.append, ``per_tx`` per committed transaction; (rate, latencies)."""
    latencies = []
    if collect:
        gc.collect()
    began = time.perf_counter()
    done = 0
    while done < count:
        t0 = time.perf_counter()
        with db.session_scope(engine) as session:
            for _ in range(min(per_tx, count - done)):
                log.append(session, **LIST_RECORD)
                done += 1
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - began
    return count / elapsed, latencies


def time_group_appends(engine: Engine, count: int, threads: int = 16) -> float:
    """``count`` durable appends from ``threads`` concurrent callers through the service's
    group commit (vault.ledger.log.GroupAppender): each call returns only once its entry is
    committed. Returns appends per second."""
    appender = log.GroupAppender(engine)
    record = log.Record(**LIST_RECORD)
    appender.append(record)  # warm-up: starts the committer thread
    per_thread = count // threads

    def work() -> None:
        for _ in range(per_thread):
            appender.append(record)

    gc.collect()
    began = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    appender.close()
    return per_thread * threads / elapsed


def entry_bytes(engine: Engine, start: int, stop: int) -> list[tuple[int, bytes, bytes]]:
    with Session(engine) as session:
        rows = list(log.iter_entries(session, start=start, stop=stop))
    out = []
    for seq, data in rows:
        prev = bytes.fromhex(data[-64:].decode())
        out.append((seq, prev, data))
    return out


def raw_sqlite_appends(
    path: Path, rows: list[tuple[int, bytes, bytes]], *, reconnect: bool, nodes: bool
) -> float:
    """Insert ``rows`` one committed transaction each; optionally a new connection each time
    (as a pool-less engine does) and the node rows a real append also writes."""
    conn = raw_sqlite(path)
    conn.execute(LEDGER_DDL)
    conn.execute(NODE_DDL)
    rng = merkle.CompactRange()
    node_rows = [
        [(n.level, n.idx, n.hash) for n in rng.append(merkle.leaf_hash(d))] for _, _, d in rows
    ]
    gc.collect()
    began = time.perf_counter()
    for i, (seq, prev, data) in enumerate(rows):
        if reconnect:
            conn.close()
            conn = raw_sqlite(path)
        conn.execute("BEGIN IMMEDIATE")
        if nodes:  # a real append also reads the head and the left siblings first
            conn.execute("SELECT seq, entry FROM ledgerentry ORDER BY seq DESC LIMIT 1").fetchone()
        conn.execute(
            "INSERT INTO ledgerentry (seq, prev_hash, entry) VALUES (?, ?, ?)", (seq, prev, data)
        )
        if nodes:
            conn.executemany(
                "INSERT INTO ledgernode (level, idx, hash) VALUES (?, ?, ?)", node_rows[i]
            )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - began
    conn.close()
    return len(rows) / elapsed


def pooled_sqlite_engine(path: Path, synchronous: str = "FULL") -> Engine:
    """The vault's SQLite pragmas on a one-connection pool of our own, with ``synchronous``
    chosen (experiment only: the vault's engine is :func:`vault.db.make_engine`)."""
    engine = create_engine(
        f"sqlite:///{path}",
        poolclass=QueuePool,
        pool_size=1,
        connect_args={"check_same_thread": False, "timeout": 30},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        for pragma in SQLITE_PRAGMAS:
            if pragma.startswith("PRAGMA synchronous"):
                pragma = f"PRAGMA synchronous={synchronous}"
            dbapi_conn.execute(pragma)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# --- appends ---------------------------------------------------------------------------------


def bench_sqlite_appends(work: Path, count: int, experiments: bool) -> dict[str, Any]:
    path = work / "append.db"
    engine = ledger_engine(path)
    time_appends(engine, 50)  # warm-up: imports, statement caches, the WAL file
    rate, lat = time_appends(engine, count)
    rows = entry_bytes(engine, 50, 50 + count)
    out: dict[str, Any] = {
        "vault_appends_per_s": round(rate, 1),
        "vault_latency": seconds_ms(lat),
    }
    raw = raw_sqlite_appends(work / "raw.db", rows, reconnect=False, nodes=False)
    out["raw_appends_per_s"] = round(raw, 1)
    out["ratio_vault_over_raw"] = round(rate / raw, 3)
    group = time_group_appends(engine, count)
    out["group_commit_16_callers_appends_per_s"] = round(group, 1)
    out["ratio_group_commit_over_raw"] = round(group / raw, 3)
    if experiments:
        exp: dict[str, float] = {}
        exp["raw_new_connection_each"] = raw_sqlite_appends(
            work / "raw2.db", rows, reconnect=True, nodes=False
        )
        exp["raw_new_connection_each_plus_head_read_and_nodes"] = raw_sqlite_appends(
            work / "raw3.db", rows, reconnect=True, nodes=True
        )
        exp["raw_one_connection_plus_head_read_and_nodes"] = raw_sqlite_appends(
            work / "raw4.db", rows, reconnect=False, nodes=True
        )
        for label, sync in (
            ("log_append_kept_connection", "FULL"),
            ("log_append_kept_connection_sync_normal", "NORMAL"),
        ):
            pooled = pooled_sqlite_engine(work / f"{label}.db", sync)
            db.migrate(pooled)
            time_appends(pooled, 50)
            exp[label] = time_appends(pooled, count)[0]
            pooled.dispose()
        batched = ledger_engine(work / "batched.db")
        exp["log_append_100_per_commit"] = time_appends(batched, count, per_tx=100)[0]
        batched.dispose()
        out["experiments_appends_per_s"] = {k: round(v, 1) for k, v in exp.items()}
        out["profile"] = profile_appends(engine, min(count, 1000))
    engine.dispose()
    return out


def profile_appends(engine: Engine, count: int) -> dict[str, Any]:
    """cProfile ``count`` vault appends; the biggest self-time items, and grouped totals."""
    gc.collect()
    with profiled(PROFILE_OUT) as prof:
        time_appends(engine, count, collect=False)
    assert prof is not None
    stats = pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    groups = {
        "sqlite commit (fsync)": 0.0,
        "sqlite connection close": 0.0,
        "sqlite connect + pragmas": 0.0,
        "sqlite execute": 0.0,
    }
    top = []
    for (file, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{Path(file).name}:{func}"
        if func == "<method 'commit' of 'sqlite3.Connection' objects>":
            groups["sqlite commit (fsync)"] += tt
        elif func == "<method 'close' of 'sqlite3.Connection' objects>":
            groups["sqlite connection close"] += tt
        elif func in ("<built-in method _sqlite3.connect>",):
            groups["sqlite connect + pragmas"] += tt
        elif func in (
            "<method 'execute' of 'sqlite3.Cursor' objects>",
            "<method 'execute' of 'sqlite3.Connection' objects>",
        ):
            groups["sqlite execute"] += tt
        top.append((tt, name))
    top.sort(reverse=True)
    per = {k: round(v / count * 1e3, 3) for k, v in groups.items()}
    per["python (SQLAlchemy/ORM/merkle/etc.)"] = round(
        (total - sum(groups.values())) / count * 1e3, 3
    )
    return {
        "appends": count,
        "ms_per_append_under_profiler": round(total / count * 1e3, 3),
        "ms_per_append_by_group": per,
        "top_self_time": [
            {"ms_per_append": round(tt / count * 1e3, 4), "function": name} for tt, name in top[:12]
        ],
        "pstats_file": str(PROFILE_OUT),
    }


def bench_pg_appends(url: str, count: int) -> dict[str, Any]:
    import psycopg

    out: dict[str, Any] = {}
    with pg_schema(url) as (schema_url, _):
        engine = ledger_engine(schema_url)
        with engine.connect() as conn:
            out["server"] = conn.exec_driver_sql("SHOW server_version").scalar()
            out["synchronous_commit"] = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
            out["fsync"] = conn.exec_driver_sql("SHOW fsync").scalar()
        time_appends(engine, 50)
        rate, lat = time_appends(engine, count)
        rows = entry_bytes(engine, 50, 50 + count)
        out["group_commit_16_callers_appends_per_s"] = round(time_group_appends(engine, count), 1)
        engine.dispose()
        out["vault_appends_per_s"] = round(rate, 1)
        out["vault_latency"] = seconds_ms(lat)
    with pg_schema(url) as (_, name), psycopg.connect(plain_pg_url(url)) as conn:
        conn.execute(f"SET search_path TO {name}")
        conn.execute(
            "CREATE TABLE ledgerentry (seq BIGINT PRIMARY KEY, "
            "prev_hash BYTEA NOT NULL UNIQUE, entry BYTEA NOT NULL)"
        )
        conn.commit()
        gc.collect()
        began = time.perf_counter()
        for seq, prev, data in rows:
            conn.execute(
                "INSERT INTO ledgerentry (seq, prev_hash, entry) VALUES (%s, %s, %s)",
                (seq, prev, data),
            )
            conn.commit()
        raw = len(rows) / (time.perf_counter() - began)
    out["raw_appends_per_s"] = round(raw, 1)
    out["ratio_vault_over_raw"] = round(rate / raw, 3)
    return out


# --- a big ledger, built fast -----------------------------------------------------------------


def generate(n: int, seed: int = 7) -> tuple[list[bytes], list[bytes]]:
    """``n`` chained entries (bytes) and their leaf hashes; deterministic content."""
    rnd = random.Random(seed)
    users = [
        ("uz.officer", "UZ-CUSTOMS", "UZ"),
        ("kz.officer", "KZ-BORDER", "KZ"),
        ("tj.officer", "TJ-CUSTOMS", "TJ"),
        ("uz.auditor", "UZ-CUSTOMS", "UZ"),
    ]
    actions = ["list", "read", "download", "upload", "release", "ledger"]
    packages = [rnd.randbytes(16).hex() for _ in range(1000)]
    prev = GENESIS_PREV
    t0 = 1_790_000_000_000_000
    datas, leaves = [], []
    for seq in range(n):
        user, agency, country = users[seq % 4]
        action = actions[seq % 6]
        pkg = packages[seq % 1000] if action in ("read", "download", "upload", "release") else ""
        data = Entry(
            seq,
            t0 + seq * 1000,
            user,
            agency,
            country,
            action,
            pkg,
            packages[(seq * 7) % 1000] if action == "download" else "",
            "",
            "",
            "deny" if seq % 17 == 0 else "allow",
            "ok",
            "H0" if pkg else "",
            LIST_RECORD["policy"],
            prev,
        ).encode()
        leaf = merkle.leaf_hash(data)
        datas.append(data)
        leaves.append(leaf)
        prev = leaf.hex()
    return datas, leaves


def bulk_build(
    path: Path, datas: list[bytes], leaves: list[bytes], key: Ed25519PrivateKey
) -> float:
    """Write entries + nodes into a fresh vault schema; checkpoints at N/2 and N. Seconds taken."""
    began = time.perf_counter()
    ledger_engine(path).dispose()
    rng = merkle.CompactRange()
    half = len(datas) // 2
    conn = raw_sqlite(path, ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=OFF"))
    for lo, hi in ((0, half), (half, len(datas))):
        conn.execute("BEGIN")
        batch = 100_000
        for start in range(lo, hi, batch):
            stop = min(hi, start + batch)
            nodes: list[tuple[int, int, bytes]] = []
            for leaf in leaves[start:stop]:
                nodes.extend((nd.level, nd.idx, nd.hash) for nd in rng.append(leaf))
            conn.executemany(
                "INSERT INTO ledgerentry (seq, prev_hash, entry) VALUES (?, ?, ?)",
                ((s, bytes.fromhex(datas[s][-64:].decode()), datas[s]) for s in range(start, stop)),
            )
            conn.executemany("INSERT INTO ledgernode (level, idx, hash) VALUES (?, ?, ?)", nodes)
        conn.execute("COMMIT")
        engine = db.make_engine(f"sqlite:///{path}")
        with db.session_scope(engine) as session:
            log.sign_checkpoint(session, origin=ORIGIN, key=key)
        engine.dispose()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - began


def bench_verify(
    path: Path, datas: list[bytes], leaves: list[bytes], verifier: note.Verifier
) -> dict[str, Any]:
    n = len(datas)
    engine = db.make_engine(f"sqlite:///{path}")
    with Session(engine) as session:
        notes = log.checkpoint_notes(session)
    checkpoints = [note.open_checkpoint(t, [verifier], ORIGIN) for t in notes]
    columns = [bytes.fromhex(d[-64:].decode()) for d in datas]
    out: dict[str, Any] = {"entries": n, "checkpoints": [c.size for c in checkpoints]}

    gc.collect()
    began = time.perf_counter()
    result = verify_entries(ListSource(datas, columns), checkpoints=checkpoints)
    elapsed = time.perf_counter() - began
    assert result.ok, result
    out["verify_entries_per_s"] = round(n / elapsed, 0)
    out["verify_entries_s"] = round(elapsed, 3)
    del columns

    document: dict[str, object] = {
        "origin": ORIGIN,
        "vkey": verifier.vkey(),
        "checkpoint": notes[-1],
        "entries": [base64.b64encode(d).decode() for d in datas],
    }
    gc.collect()
    began = time.perf_counter()
    result = verify_export(document, verifier.vkey())
    elapsed = time.perf_counter() - began
    assert result.ok, result
    out["verify_export_per_s"] = round(n / elapsed, 0)
    del document

    for workers in (1, WORKERS):
        gc.collect()
        with Session(engine) as session:
            began = time.perf_counter()
            result = check.verify_database(
                session, origin=ORIGIN, verifier=verifier, workers=workers
            )
            elapsed = time.perf_counter() - began
        assert result.ok, result
        suffix = "" if workers == 1 else "_parallel"
        out[f"verify_database{suffix}_per_s"] = round(n / elapsed, 0)
        out[f"verify_database{suffix}_s"] = round(elapsed, 3)
    out["verify_workers"] = WORKERS
    engine.dispose()
    return out


def bench_proofs(path: Path, n: int, count: int, root: bytes) -> dict[str, Any]:
    engine = db.make_engine(f"sqlite:///{path}")
    rnd = random.Random(11)
    seqs = [rnd.randrange(n) for _ in range(count)]
    times, proofs = [], []
    with Session(engine) as session:
        for seq in seqs[:50]:  # warm-up: statement cache, page cache
            log.inclusion_proof(session, seq, n)
        gc.collect()
        for seq in seqs:
            t0 = time.perf_counter()
            proof = log.inclusion_proof(session, seq, n)
            times.append(time.perf_counter() - t0)
            proofs.append(proof)
        for seq, proof in zip(seqs, proofs, strict=True):
            leaf = session.get(LedgerNode, (0, seq))
            assert leaf is not None
            merkle.verify_inclusion(leaf.hash, seq, n, proof, root)
    engine.dispose()
    return {
        "tree_size": n,
        "proofs": count,
        **seconds_ms(times),
        "hashes_per_proof": len(proofs[0]),
    }


def bench_proof_raw(path: Path, n: int, count: int) -> dict[str, Any]:
    """Experiment: the same proof nodes fetched with one plain sqlite3 query (IN on rowid keys)."""
    conn = raw_sqlite(path, ("PRAGMA query_only=ON",))
    rnd = random.Random(11)
    seqs = [rnd.randrange(n) for _ in range(count)]
    times = []
    for seq in seqs:
        t0 = time.perf_counter()
        plan = merkle.inclusion_proof_nodes(seq, n)
        ids = list({i for g in plan for i in g})
        where = " OR ".join("(level = ? AND idx = ?)" for _ in ids)
        found = {
            (lv, ix): h
            for lv, ix, h in conn.execute(
                f"SELECT level, idx, hash FROM ledgernode WHERE {where}",
                [v for pair in ids for v in pair],
            )
        }
        merkle.resolve_proof(plan, lambda lv, ix: found[(lv, ix)])  # noqa: B023 (called now)
        times.append(time.perf_counter() - t0)
    conn.close()
    return seconds_ms(times)


# --- report ----------------------------------------------------------------------------------


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "MET" if ok else "MISSED"


def print_report(result: dict[str, Any]) -> None:
    """The table of results against the targets, then the experiments."""
    print("\n" + machine_line(result["machine"]))
    print(f"command: {result['command']}\n")
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, value: float, target: float | None = None, higher: bool = True) -> None:
        shown = f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
        if target is None:
            rows.append((label, shown, "", ""))
        else:
            sign = ">=" if higher else "<="
            rows.append((label, shown, f"{sign} {target:,g}", verdict(value, target, higher)))

    a = result["sqlite_appends"]
    row("SQLite durable appends/s (vault)", a["vault_appends_per_s"], TARGET_APPENDS)
    row(
        "SQLite durable appends/s, 16 callers (group commit)",
        a["group_commit_16_callers_appends_per_s"],
        TARGET_APPENDS,
    )
    row("SQLite raw INSERT+COMMIT/s", a["raw_appends_per_s"])
    row("SQLite vault / raw", a["ratio_vault_over_raw"])
    if "pg_appends" in result:
        p = result["pg_appends"]
        row("PostgreSQL durable appends/s (vault)", p["vault_appends_per_s"])
        row(
            "PostgreSQL durable appends/s, 16 callers (group commit)",
            p["group_commit_16_callers_appends_per_s"],
        )
        row("PostgreSQL raw INSERT+commit/s", p["raw_appends_per_s"])
        row("PostgreSQL vault / raw", p["ratio_vault_over_raw"])
    v = result["verify"]
    row(f"verify_entries, {v['entries']:,} entries/s", v["verify_entries_per_s"], TARGET_VERIFY)
    row("verify_export entries/s", v["verify_export_per_s"])
    row("verify_database, 1 process, entries/s", v["verify_database_per_s"], TARGET_VERIFY)
    row(
        f"verify_database, {v['verify_workers']} processes",
        v["verify_database_parallel_per_s"],
        TARGET_VERIFY,
    )
    pr = result["proofs"]
    row(
        f"inclusion proof @ {pr['tree_size']:,}: median ms",
        pr["median_ms"],
        TARGET_PROOF_MS,
        higher=False,
    )
    row("inclusion proof: p99 ms", pr["p99_ms"], TARGET_PROOF_MS, higher=False)
    print_table(("measure", "value", "target", ""), rows)
    if "experiments_appends_per_s" in a:
        print("\nwhere SQLite append time goes (appends/s):")
        for k, val in a["experiments_appends_per_s"].items():
            print(f"  {k:<52} {val:>10,.0f}")
        print("  profile, ms per append by group (under cProfile):")
        for k, val in a["profile"]["ms_per_append_by_group"].items():
            print(f"    {k:<50} {val:>8.3f}")
    if "experiments" in pr:
        raw = pr["experiments"]["raw_sqlite3_fetch_and_resolve"]
        print(f"\nproofs, raw sqlite3 fetch and resolve: median {raw['median_ms']} ms")
    print(f"\nbulk build of {v['entries']:,} entries: {result['bulk_build_s']:.1f} s")
    print(
        "others' CPU (cores) in each phase:",
        {k: v["others_cores"] for k, v in result["contention"].items()},
    )


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every phase on throw-away databases; the result document."""
    phases = Phases(args.wait_idle)
    with workdir("bench-ledger-", args.dir) as work:
        result: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command,
            "machine": machine_info(work, fsync=True),
            "targets": {
                "sqlite_appends_per_s": TARGET_APPENDS,
                "verify_entries_per_s": TARGET_VERIFY,
                "proof_ms": TARGET_PROOF_MS,
            },
            "contention": phases.record,
        }
        with phases.phase("appends on SQLite"):
            result["sqlite_appends"] = bench_sqlite_appends(
                work, args.appends, not args.no_experiments
            )
        if args.pg:
            with phases.phase("appends on PostgreSQL"):
                result["pg_appends"] = bench_pg_appends(args.pg, args.appends)
        with phases.phase(f"building {args.entries:,} entries"):
            t0 = time.perf_counter()
            datas, leaves = generate(args.entries)
            gen_s = time.perf_counter() - t0
            key = Ed25519PrivateKey.generate()
            verifier = note.Verifier.from_public_key(ORIGIN, key.public_key())
            big = work / "big.db"
            result["bulk_build_s"] = round(gen_s + bulk_build(big, datas, leaves, key), 1)
            result["entry_bytes_mean"] = round(sum(map(len, datas)) / len(datas), 1)
        with phases.phase("verifying"):
            result["verify"] = bench_verify(big, datas, leaves, verifier)
        root = merkle.root_from_leaf_hashes(leaves)
        del datas, leaves
        with phases.phase("proofs"):
            result["proofs"] = bench_proofs(big, args.entries, args.proofs, root)
            if not args.no_experiments:
                result["proofs"]["experiments"] = {
                    "raw_sqlite3_fetch_and_resolve": bench_proof_raw(
                        big, args.entries, args.proofs
                    ),
                }
        return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--entries",
        type=int,
        default=1_000_000,
        help="size of the bulk-built ledger for verify and proofs (default 1,000,000)",
    )
    parser.add_argument(
        "--appends", type=int, default=3000, help="durable appends timed per backend (default 3000)"
    )
    parser.add_argument("--proofs", type=int, default=2000, help="inclusion proofs timed")
    parser.add_argument("--pg", metavar="URL", help="also bench PostgreSQL at this URL")
    parser.add_argument("--dir", help="folder for the temp databases (default: system temp)")
    parser.add_argument(
        "--no-experiments",
        action="store_true",
        help="skip the where-does-the-time-go experiments and profile",
    )
    add_common_arguments(parser, out="ledger.json", wait_idle=0.0)
    args = parse_arguments(parser, argv, QUICK)
    result = run(args, command_line("bench.bench_ledger", argv))
    print_report(result)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
