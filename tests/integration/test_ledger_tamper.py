"""Tampering with the ledger behind the vault's back, on SQLite.

Each case builds a real ledger through the service (seed, uploads, lists, refusals, a release, a
download; a checkpoint signed partway and, where the case needs it, one at the end), then
edits ``vault.db`` through a raw ``sqlite3`` connection. The append-only triggers are shown to
hold first; the cases then drop them, as an attacker with file access would, and edit. Every
case checks ``blovault ledger verify --json`` (exit 1 and ``first_bad_seq``) and the service's
own :meth:`Vault.verify_ledger`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from tests.conftest import ON_POSTGRES, CliRunner, World
from vault.config import Settings
from vault.db import check_schema, migrate
from vault.errors import AccessDenied, ConfigError, LedgerCorrupt, NotFound
from vault.ledger import check, merkle, note
from vault.ledger.entry import GENESIS_PREV, Entry, decode, leaf_hash
from vault.ledger.verify import VerifyResult
from vault.models import Classification, Handling
from vault.schemas import NewPackage
from vault.service import IncomingFile

pytestmark = pytest.mark.skipif(
    ON_POSTGRES, reason="tampers with the SQLite database file directly"
)

APPEND_ONLY = ("ledgerentry", "ledgernode", "ledgercheckpoint")
TRIGGERS = [f"{table}_no_{op}" for table in APPEND_ONLY for op in ("update", "delete")]


# --- building a ledger ------------------------------------------------------------------------


@dataclass
class Built:
    """What :func:`build_ledger` made: sizes and a few interesting sequence numbers."""

    partway: int  # size of the checkpoint signed partway
    size: int  # entries in the ledger
    final: int | None  # size of the checkpoint signed at the end, if any
    release_seq: int  # an "allow" entry after the partway checkpoint
    early_allow_seq: int  # an "allow" entry inside the partway checkpoint
    package_ids: list[str]


def upload(world: World, user: str, title: str, content: bytes) -> str:
    """Upload one small package through the service; return its id."""
    result = world.vault.upload(
        world[user],
        NewPackage(title=title, classification=Classification.UNCLASSIFIED, handling=Handling.H0),
        [IncomingFile(name=f"{title}.txt", reader=io.BytesIO(content))],
    )
    return result.package.id


def build_ledger(world: World, *, final_checkpoint: bool = True, total: int = 64) -> Built:
    """About 40 actions on top of the seeded world, with checkpoints as described above."""
    vault = world.vault
    packages = [
        upload(world, "uz.officer", f"report-{i}", f"seizure {i}".encode()) for i in range(3)
    ]
    vault.list_packages(world["uz.officer"])
    partway = vault.checkpoint().size
    assert partway == vault.ledger_size()
    early_allow_seq = partway - 2  # the last upload: an allow entry the checkpoint covers

    # Refusals: an auditor may not upload, a foreign officer may not read an unreleased package.
    with pytest.raises(AccessDenied) as refused:
        upload(world, "uz.auditor", "nope", b"x")
    assert refused.value.receipt is not None
    with pytest.raises(NotFound) as hidden:
        vault.get_package(world["kz.officer"], packages[0])
    assert hidden.value.receipt is not None

    release_seq = vault.release(world["uz.officer"], packages[0], country="KZ").receipt
    detail, _ = vault.get_package(world["kz.officer"], packages[0])
    download = vault.download(world["kz.officer"], packages[0], detail.files[0].id)
    assert b"".join(download.chunks) == b"seizure 0"
    users = ["uz.officer", "uz.border", "kz.officer", "kz.interior", "tj.officer"]
    i = 0
    while vault.ledger_size() < max(total, release_seq + 10):
        vault.list_packages(world[users[i % len(users)]])
        i += 1
    size = vault.ledger_size()
    final = vault.checkpoint().size if final_checkpoint else None
    assert final in (None, size)
    assert partway < release_seq < size - 4
    return Built(partway, size, final, release_seq, early_allow_seq, packages)


# --- raw database access ------------------------------------------------------------------------


def db_path(settings: Settings) -> Path:
    return settings.data_dir / "vault.db"


@contextlib.contextmanager
def raw_db(settings: Settings) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the vault's database file (autocommit, triggers recursive)."""
    conn = sqlite3.connect(db_path(settings), isolation_level=None, timeout=30)
    conn.execute("PRAGMA recursive_triggers=ON")
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def tampering(settings: Settings) -> Iterator[sqlite3.Connection]:
    """A raw connection with the append-only triggers dropped; edits commit atomically on exit."""
    with raw_db(settings) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for name in TRIGGERS:
                conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def entries(conn: sqlite3.Connection) -> list[tuple[int, bytes, bytes]]:
    """Every ``(seq, prev_hash, entry)`` row, in order."""
    return [
        (s, bytes(p), bytes(e))
        for s, p, e in conn.execute("SELECT seq, prev_hash, entry FROM ledgerentry ORDER BY seq")
    ]


def entry_at(conn: sqlite3.Connection, seq: int) -> Entry:
    (data,) = conn.execute("SELECT entry FROM ledgerentry WHERE seq = ?", (seq,)).fetchone()
    return decode(bytes(data), seq_hint=seq)


def set_entry(conn: sqlite3.Connection, seq: int, data: bytes, *, leaf: bool = False) -> None:
    """Overwrite entry ``seq``'s bytes (and its prev column); with ``leaf`` its leaf node too."""
    entry = decode(data)
    conn.execute(
        "UPDATE ledgerentry SET entry = ?, prev_hash = ? WHERE seq = ?",
        (data, bytes.fromhex(entry.prev), seq),
    )
    if leaf:
        conn.execute(
            "UPDATE ledgernode SET hash = ? WHERE level = 0 AND idx = ?", (leaf_hash(data), seq)
        )


def rebuild_nodes(conn: sqlite3.Connection) -> None:
    """Replace every Merkle node row with those the current entries give (a consistent rewrite)."""
    conn.execute("DELETE FROM ledgernode")
    rng = merkle.CompactRange()
    rows: list[tuple[int, int, bytes]] = []
    for _, _, data in entries(conn):
        rows.extend((n.level, n.idx, n.hash) for n in rng.append(leaf_hash(data)))
    conn.executemany("INSERT INTO ledgernode (level, idx, hash) VALUES (?, ?, ?)", rows)


def rechain_from(conn: sqlite3.Connection, start: int) -> None:
    """Recompute ``prev`` of every entry after ``start`` so the hash chain holds again."""
    rows = entries(conn)
    prev = GENESIS_PREV if start == 0 else leaf_hash(rows[start - 1][2]).hex()
    for seq, _, data in rows[start:]:
        entry = dataclasses.replace(decode(data), prev=prev)
        new = entry.encode()
        conn.execute(
            "UPDATE ledgerentry SET entry = ?, prev_hash = ? WHERE seq = ?",
            (new, bytes.fromhex(prev), seq),
        )
        prev = leaf_hash(new).hex()


def forged(seq: int, prev: str, *, time_us: int) -> Entry:
    """A well-formed entry nobody made: an admin 'download' that never happened."""
    return Entry(
        seq=seq,
        time_us=time_us,
        actor_user="uz.admin",
        actor_agency="UZ-CUSTOMS",
        actor_country="UZ",
        action="download",
        package="0" * 32,
        file="1" * 32,
        release="",
        subject="",
        decision="allow",
        reason="ok",
        handling="H0",
        policy="forged",
        prev=prev,
    )


# --- checking -----------------------------------------------------------------------------------


class VerifyReport(TypedDict):
    """What ``blovault ledger verify --json`` prints (``VerifyResult.as_dict()``)."""

    ok: bool
    size: int
    root: str
    checkpoint_size: int | None
    first_bad_seq: int | None
    problem: str | None


def verify_cli(cli: CliRunner) -> tuple[int, VerifyReport]:
    result = cli("ledger", "verify", "--json")
    report: VerifyReport = json.loads(result.stdout)
    assert report["ok"] is (result.code == 0), (result.code, report)
    return result.code, report


# The database verifier checks entries in aligned blocks (4,096 by default); these small
# blocks make a 64-entry ledger cross many block boundaries and the checks above them.
SMALL_BLOCKS = (1, 2, 3)


def verify_in_small_blocks(world: World) -> list[VerifyResult]:
    """The database verifier in small blocks, in one process and in three (forked) processes."""
    origin, verifier = world.settings.ledger_origin, world.vault.ledger_verifier
    with Session(world.vault.engine) as session:
        return [
            check.verify_database(
                session,
                origin=origin,
                verifier=verifier,
                block_level=level,
                workers=workers,
                min_parallel=1,
            )
            for level in SMALL_BLOCKS
            for workers in (1, 3)
        ]


def confirmed_in_parallel(world: World) -> VerifyResult | None:
    with Session(world.vault.engine) as session:
        return check.confirm_in_parallel(
            session,
            origin=world.settings.ledger_origin,
            verifier=world.vault.ledger_verifier,
            workers=3,
            block_level=2,
            min_parallel=1,
        )


def assert_bad(world: World, cli: CliRunner, first_bad: int | None) -> VerifyReport:
    """The CLI, the service and the verifier in small blocks report the ledger broken at
    ``first_bad``, for the same reason."""
    code, report = verify_cli(cli)
    assert code == 1, report
    assert report["ok"] is False
    assert report["first_bad_seq"] == first_bad, report
    assert report["problem"]
    service = world.vault.verify_ledger(world["uz.auditor"])
    assert service.ok is False
    assert service.first_bad_seq == first_bad, service
    assert service.problem == report["problem"]
    for small in verify_in_small_blocks(world):
        assert (small.ok, small.first_bad_seq, small.problem) == (
            False,
            first_bad,
            report["problem"],
        )
    # The parallel path never reports damage itself: it declines, and one process names it.
    assert confirmed_in_parallel(world) is None
    return report


# --- the tests ----------------------------------------------------------------------------------


def test_clean_ledger_verifies(world: World, cli: CliRunner) -> None:
    built = build_ledger(world)
    code, report = verify_cli(cli)
    assert code == 0, report
    assert report == {
        "ok": True,
        "size": built.size,
        "root": report["root"],
        "checkpoint_size": built.final,
        "first_bad_seq": None,
        "problem": None,
    }
    service = world.vault.verify_ledger(world["uz.auditor"])
    assert service.ok
    assert service.size == built.size
    assert service.root == report["root"]
    for small in verify_in_small_blocks(world):
        assert (small.ok, small.size, small.root) == (True, built.size, report["root"])
    parallel = confirmed_in_parallel(world)
    assert parallel is not None
    assert (parallel.ok, parallel.size, parallel.root) == (True, built.size, report["root"])
    # The root is the one the final checkpoint signed.
    with raw_db(world.settings) as conn:
        (signed,) = conn.execute(
            "SELECT note FROM ledgercheckpoint WHERE size = ?", (built.size,)
        ).fetchone()
    body = note.open_checkpoint(signed, [world.vault.ledger_verifier], world.settings.ledger_origin)
    assert base64.b64encode(body.root_hash).decode() == report["root"]
    # Text mode agrees.
    text = cli("ledger", "verify")
    assert text.code == 0
    assert "ledger intact" in text.stdout


@pytest.mark.parametrize("table", APPEND_ONLY)
def test_triggers_block_update_delete_and_replace(world: World, table: str) -> None:
    build_ledger(world, total=40)
    key = {
        "ledgerentry": "seq = 3",
        "ledgernode": "level = 0 AND idx = 3",
        "ledgercheckpoint": "size = (SELECT MIN(size) FROM ledgercheckpoint)",
    }[table]
    column = {
        "ledgerentry": "entry = x'00'",
        "ledgernode": "hash = zeroblob(32)",
        "ledgercheckpoint": "note = 'forged'",
    }[table]
    with raw_db(world.settings) as conn:
        before = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(f"UPDATE {table} SET {column} WHERE {key}")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(f"DELETE FROM {table} WHERE {key}")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(f"DELETE FROM {table}")
        # INSERT OR REPLACE deletes the clashing row first: the delete trigger fires only because
        # recursive_triggers is on (the vault sets it on every connection, and so does raw_db).
        row = conn.execute(f"SELECT * FROM {table} WHERE {key}").fetchone()
        placeholders = ", ".join("?" * len(row))
        changed = tuple(b"\x01" * 32 if isinstance(v, bytes) else v for v in row)
        if table == "ledgercheckpoint":
            changed = (row[0], "forged", *row[2:])
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(f"INSERT OR REPLACE INTO {table} VALUES ({placeholders})", changed)
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(f"REPLACE INTO {table} VALUES ({placeholders})", changed)
        after = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    assert after == before


def test_only_an_entrys_opening_columns_may_change(world: World) -> None:
    """The guard's one opening: purge and retention NULL a committed entry's opening. Setting
    any column the proofs rest on, alone or beside the opening, is still refused."""
    build_ledger(world, total=20)
    with raw_db(world.settings) as conn:
        seq, entry = conn.execute(
            "SELECT seq, entry FROM ledgerentry WHERE opening_sealed IS NOT NULL LIMIT 1"
        ).fetchone()
        for assignment in ("entry = x'00'", "prev_hash = zeroblob(32)", "seq = seq + 1000"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(
                    f"UPDATE ledgerentry SET opening_sealed = NULL, {assignment} WHERE seq = ?",
                    (seq,),
                )
        conn.execute(
            "UPDATE ledgerentry SET opening_sealed = NULL, opening_key = NULL WHERE seq = ?",
            (seq,),
        )
        after = conn.execute(
            "SELECT entry, opening_sealed FROM ledgerentry WHERE seq = ?", (seq,)
        ).fetchone()
    assert after == (entry, None)


def test_vault_connections_block_insert_or_replace(world: World) -> None:
    """The engine's own connections have recursive_triggers on: REPLACE can't sneak past."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import text

    build_ledger(world, total=30)
    with world.vault.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA recursive_triggers").scalar() == 1
        row = conn.execute(text("SELECT prev_hash FROM ledgerentry WHERE seq = 5")).one()
        with pytest.raises(sa_exc.DatabaseError, match="append-only"):
            conn.execute(
                text(
                    "INSERT OR REPLACE INTO ledgerentry (seq, prev_hash, entry) VALUES (:s, :p, :e)"
                ),
                {"s": 5, "p": row.prev_hash, "e": b"\x01forged"},
            )
        conn.rollback()
    assert world.vault.verify_ledger(world["uz.auditor"]).ok


# Disarming the guard itself. A production vault refuses to start on such a database (it must
# not go on appending to tables that no longer refuse rewrites); `admin migrate`, which a
# development vault runs on every start, restores it.
DISARM = {
    "dropped": (
        ["DROP TRIGGER ledgerentry_no_update"],
        "trigger ledgerentry_no_update is missing",
    ),
    "made-conditional": (
        [
            "DROP TRIGGER ledgernode_no_delete",
            "CREATE TRIGGER ledgernode_no_delete BEFORE DELETE ON ledgernode WHEN 0"
            " BEGIN SELECT RAISE(ABORT, 'ledgernode is append-only'); END",
        ],
        "trigger ledgernode_no_delete was altered",
    ),
    "made-harmless": (
        [
            "DROP TRIGGER ledgercheckpoint_no_update",
            "CREATE TRIGGER ledgercheckpoint_no_update BEFORE UPDATE ON ledgercheckpoint"
            " BEGIN SELECT 1; END",
        ],
        "trigger ledgercheckpoint_no_update was altered",
    ),
}


@pytest.mark.parametrize("how", list(DISARM))
def test_disarmed_guard_refuses_production_and_migrate_restores_it(world: World, how: str) -> None:
    build_ledger(world, total=30)
    engine = world.vault.engine
    check_schema(engine)
    statements, problem = DISARM[how]
    with raw_db(world.settings) as conn:
        for statement in statements:
            conn.execute(statement)
    with pytest.raises(ConfigError, match="not append-only") as caught:
        check_schema(engine)
    assert problem in caught.value.message
    migrate(engine)
    check_schema(engine)
    rewrite = {
        "ledgerentry": "UPDATE ledgerentry SET entry = x'00'",
        "ledgernode": "UPDATE ledgernode SET hash = zeroblob(32)",
        "ledgercheckpoint": "UPDATE ledgercheckpoint SET note = 'forged'",
    }
    with raw_db(world.settings) as conn:
        for table in APPEND_ONLY:
            for statement in (rewrite[table], f"DELETE FROM {table}"):
                with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                    conn.execute(statement)
    assert world.vault.verify_ledger(world["uz.auditor"]).ok


@pytest.mark.parametrize("where", ["covered", "uncovered"])
@pytest.mark.parametrize("leaf_too", [False, True], ids=["entry-only", "entry-and-leaf"])
def test_one_field_changed(world: World, cli: CliRunner, where: str, leaf_too: bool) -> None:
    """decision allow -> deny in one entry's bytes; with ``leaf_too`` its leaf node follows."""
    built = build_ledger(world)
    k = built.early_allow_seq if where == "covered" else built.release_seq
    assert (k < built.partway) is (where == "covered")
    with tampering(world.settings) as conn:
        entry = entry_at(conn, k)
        assert entry.decision == "allow"
        set_entry(conn, k, dataclasses.replace(entry, decision="deny").encode(), leaf=leaf_too)
    report = assert_bad(world, cli, k)
    assert f"entry {k}" in str(report["problem"])


def test_one_byte_flipped_in_place(world: World, cli: CliRunner) -> None:
    """Same length, no re-encoding: one byte of the decision string changed on disk (public
    in every entry version; a committed entry has no reason in the clear)."""
    built = build_ledger(world)
    k = built.release_seq + 1
    with tampering(world.settings) as conn:
        (data,) = conn.execute("SELECT entry FROM ledgerentry WHERE seq = ?", (k,)).fetchone()
        data = bytearray(data)
        pos = bytes(data).index(b"\x00\x00\x00\x05allow") + 4
        data[pos] ^= 0x20  # "allow" -> "Allow"
        conn.execute("UPDATE ledgerentry SET entry = ? WHERE seq = ?", (bytes(data), k))
    assert_bad(world, cli, k)


@pytest.mark.parametrize("with_leaf", [False, True], ids=["entry-row", "entry-and-leaf-rows"])
def test_middle_entry_deleted(world: World, cli: CliRunner, with_leaf: bool) -> None:
    built = build_ledger(world)
    k = built.release_seq + 3
    with tampering(world.settings) as conn:
        conn.execute("DELETE FROM ledgerentry WHERE seq = ?", (k,))
        if with_leaf:
            conn.execute("DELETE FROM ledgernode WHERE level = 0 AND idx = ?", (k,))
    report = assert_bad(world, cli, k)
    assert "missing" in str(report["problem"])


@pytest.mark.parametrize("with_nodes", [False, True], ids=["entry-rows", "entry-and-node-rows"])
def test_tail_deleted_under_a_checkpoint(world: World, cli: CliRunner, with_nodes: bool) -> None:
    built = build_ledger(world)
    assert built.final == built.size
    new_size = built.size - 5
    with tampering(world.settings) as conn:
        conn.execute("DELETE FROM ledgerentry WHERE seq >= ?", (new_size,))
        if with_nodes:
            # Every node that covers a deleted leaf: its last leaf is at or past new_size.
            conn.execute("DELETE FROM ledgernode WHERE ((idx + 1) << level) > ?", (new_size,))
    report = assert_bad(world, cli, new_size)
    assert report["size"] == new_size


def test_two_entries_swapped(world: World, cli: CliRunner) -> None:
    built = build_ledger(world)
    k = built.release_seq + 2
    with tampering(world.settings) as conn:
        rows = {s: e for s, _, e in entries(conn)}
        conn.execute("UPDATE ledgerentry SET entry = ? WHERE seq = ?", (rows[k + 1], k))
        conn.execute("UPDATE ledgerentry SET entry = ? WHERE seq = ?", (rows[k], k + 1))
    report = assert_bad(world, cli, k)
    assert "swapped" in str(report["problem"]) or f"entry {k}" in str(report["problem"])


def test_forged_entry_replaces_one(world: World, cli: CliRunner) -> None:
    """A well-formed entry whose prev links correctly to k-1, with its leaf node rewritten."""
    built = build_ledger(world)
    k = built.release_seq + 1
    with tampering(world.settings) as conn:
        prev = leaf_hash(entries(conn)[k - 1][2]).hex()
        original = entry_at(conn, k)
        fake = forged(k, prev, time_us=original.time_us)
        set_entry(conn, k, fake.encode(), leaf=True)
    assert_bad(world, cli, k)


@pytest.mark.parametrize("where", ["covered", "uncovered"])
def test_forged_entry_inserted_with_renumbering(world: World, cli: CliRunner, where: str) -> None:
    """Shift entries k.. up by one, insert a forged k, re-link the chain; nodes left alone."""
    built = build_ledger(world, final_checkpoint=False)
    k = 10 if where == "covered" else built.release_seq + 1
    with tampering(world.settings) as conn:
        rows = entries(conn)
        conn.execute("DELETE FROM ledgerentry WHERE seq >= ?", (k,))
        prev = leaf_hash(rows[k - 1][2]).hex()
        fake = forged(k, prev, time_us=decode(rows[k][2]).time_us)
        shifted = [fake] + [dataclasses.replace(decode(d), seq=s + 1) for s, _, d in rows[k:]]
        for entry in shifted:
            data = dataclasses.replace(entry, prev=prev).encode()
            conn.execute(
                "INSERT INTO ledgerentry (seq, prev_hash, entry) VALUES (?, ?, ?)",
                (entry.seq, bytes.fromhex(prev), data),
            )
            prev = leaf_hash(data).hex()
    with raw_db(world.settings) as conn:
        assert len(entries(conn)) == built.size + 1
    report = assert_bad(world, cli, k)
    assert report["first_bad_seq"] == k


def _uncovered_start(checkpoints: list[int], changed: int) -> int:
    """Start of the range no matching checkpoint covers, for a change at ``changed``."""
    return max([0, *(size for size in checkpoints if size <= changed)])


@pytest.mark.parametrize("where", ["before-partway", "after-partway"])
def test_consistent_rewrite_is_caught_by_checkpoints(
    world: World, cli: CliRunner, where: str
) -> None:
    """Change one entry, then recompute every later prev and every node row consistently.

    The chain and tree are then self-consistent; only the signed checkpoint roots can tell.
    """
    built = build_ledger(world)
    changed = 12 if where == "before-partway" else built.release_seq
    with tampering(world.settings) as conn:
        entry = entry_at(conn, changed)
        set_entry(conn, changed, dataclasses.replace(entry, decision="deny").encode())
        rechain_from(conn, changed + 1)
        rebuild_nodes(conn)
    report = assert_bad(world, cli, _uncovered_start([built.partway, built.size], changed))
    assert report["first_bad_seq"] is not None
    assert report["first_bad_seq"] <= changed
    assert "checkpoint" in str(report["problem"])


@pytest.mark.parametrize("drop_checkpoints", [False, True], ids=["rows-kept", "later-rows-deleted"])
def test_consistent_rewrite_fails_a_saved_checkpoint(
    world: World, cli: CliRunner, tmp_path: Path, drop_checkpoints: bool
) -> None:
    """The auditor saved the final checkpoint; the rewrite can't be proved consistent with it."""
    built = build_ledger(world)
    saved = tmp_path / "auditor-checkpoint.txt"
    result = cli("ledger", "checkpoint", "-o", saved)
    assert result.code == 0, result.stderr
    assert note.parse_checkpoint(note.parse_note(saved.read_text()).text).size == built.size + 1
    assert cli("ledger", "consistency", "--old", saved).code == 0

    changed = built.release_seq
    with tampering(world.settings) as conn:
        entry = entry_at(conn, changed)
        set_entry(conn, changed, dataclasses.replace(entry, decision="deny").encode())
        rechain_from(conn, changed + 1)
        rebuild_nodes(conn)
        if drop_checkpoints:
            # Hide the evidence in the database: keep only the checkpoint before the change.
            conn.execute("DELETE FROM ledgercheckpoint WHERE size > ?", (changed,))
    if drop_checkpoints:
        # The database alone no longer shows it (that is what saved checkpoints are for).
        code, report = verify_cli(cli)
        assert code == 0, report
    else:
        assert_bad(world, cli, built.partway)
    result = cli("ledger", "consistency", "--old", saved, "--json")
    assert result.code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error:")
    with pytest.raises(LedgerCorrupt):
        world.vault.consistency_proof(world["uz.auditor"], saved.read_text())


def test_forged_checkpoint_signature(world: World, cli: CliRunner) -> None:
    built = build_ledger(world)
    with tampering(world.settings) as conn:
        (signed,) = conn.execute(
            "SELECT note FROM ledgercheckpoint WHERE size = ?", (built.partway,)
        ).fetchone()
        parsed = note.parse_note(signed)
        sig = parsed.signatures[0]
        bad = bytearray(sig.signature)
        bad[10] ^= 0x01
        forged_note = parsed.text + "\n" + dataclasses.replace(sig, signature=bytes(bad)).line()
        note.parse_note(forged_note)  # still well-formed
        conn.execute(
            "UPDATE ledgercheckpoint SET note = ? WHERE size = ?", (forged_note, built.partway)
        )
    report = assert_bad(world, cli, None)
    assert "checkpoint" in str(report["problem"])


def test_checkpoint_text_edited(world: World, cli: CliRunner) -> None:
    """The signed body changed (root swapped for another) and the old signature kept."""
    built = build_ledger(world)
    with tampering(world.settings) as conn:
        (signed,) = conn.execute(
            "SELECT note FROM ledgercheckpoint WHERE size = ?", (built.size,)
        ).fetchone()
        parsed = note.parse_note(signed)
        body = note.parse_checkpoint(parsed.text)
        other = dataclasses.replace(body, root_hash=bytes(32))
        edited = other.to_text() + "\n" + parsed.signatures[0].line()
        conn.execute("UPDATE ledgercheckpoint SET note = ? WHERE size = ?", (edited, built.size))
    report = assert_bad(world, cli, None)
    assert "checkpoint" in str(report["problem"])


def test_checkpoint_row_signed_by_another_key(world: World, cli: CliRunner) -> None:
    """Inserting needs no trigger dropped; a checkpoint under a foreign key still fails."""
    built = build_ledger(world, final_checkpoint=False)
    with raw_db(world.settings) as conn:
        root = merkle.root_from_leaf_hashes([leaf_hash(e) for _, _, e in entries(conn)])
    body = note.Checkpoint(world.settings.ledger_origin, built.size, root)
    signed = note.sign_checkpoint(body, world.settings.ledger_origin, Ed25519PrivateKey.generate())
    with raw_db(world.settings) as conn:
        (created,) = conn.execute("SELECT created_at FROM ledgercheckpoint LIMIT 1").fetchone()
        conn.execute(
            "INSERT INTO ledgercheckpoint (size, note, created_at) VALUES (?, ?, ?)",
            (built.size, signed, created),
        )
    report = assert_bad(world, cli, None)
    assert "checkpoint" in str(report["problem"])


def test_interior_merkle_node_changed(world: World, cli: CliRunner) -> None:
    """A stored interior node that no root computation reads, changed.

    The entries are intact, but proofs through that node (and consistency proofs the vault
    needs to sign its next checkpoint) now come out wrong. ``ledger verify`` checks "chain,
    leaves, tree": the stored tree no longer matches the entries, so it must say so.
    """
    built = build_ledger(world, final_checkpoint=False)
    # (2, 1) covers leaves 4..7; it sits under the left-most frontier node, so no root reads it.
    assert merkle.root_nodes(built.size)[0][0] > 2
    with tampering(world.settings) as conn:
        conn.execute("UPDATE ledgernode SET hash = ? WHERE level = 2 AND idx = 1", (bytes(32),))
    # Leaf 1's inclusion proof uses node (2, 1): the vault refuses to hand out a bad proof.
    result = cli("ledger", "prove", "1", "--json")
    assert result.code == 1, (result.stdout, result.stderr)
    code, report = verify_cli(cli)
    assert code == 1, report
    assert report["ok"] is False
    first_bad = report["first_bad_seq"]
    assert first_bad is None or 4 <= first_bad <= 7, report
