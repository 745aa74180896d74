"""Schema migrations that move data: run on a vault with real rows, on the suite's database
(SQLite, or PostgreSQL when the suite runs there).

0008 moved the sealed openings of committed ledger entries from their own table (revision
0007, each under a per-entry key wrapped by the KEK) into the entries' rows; new openings are
sealed under a key derived from the KEK. Upgrading a vault that holds 0007's openings must keep
every one of them opening to the same fields; the downgrade gives them back, and refuses while
openings of the new kind exist (0007 cannot hold them).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, inspect, text
from sqlmodel import Session, col, select

from tests.conftest import World, postgres_schema_url, requires_postgres
from vault import crypto
from vault.db import MIGRATIONS, append_only_problems, make_engine, migrate, schema_revision
from vault.errors import StorageUnavailable
from vault.models import LEDGER_OPENING_COLUMNS, Classification, Handling, LedgerEntry
from vault.schemas import NewPackage
from vault.service import IncomingFile, Vault, local_operator
from vault.service.ledger_openings import opening_identity


def _downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _opened(world: World) -> list[tuple[int, str, str, str]]:
    return [
        (e.seq, e.actor_user, e.package, e.reason)
        for e in world.vault.unscoped_entries()
        if e.actor_user
    ]


def _reseal_as_revision_0007(world: World) -> int:
    """Store every opening the way revision 0007 did: sealed under a fresh key of its own,
    wrapped by the KEK. Returns how many."""
    core = world.vault.core
    with Session(core.engine) as session:
        openings = core.openings.unscoped(session, 0, None)
        for seq, opening in openings.items():
            identity = opening_identity(seq)
            key = crypto.new_data_key()
            wrapped = core.keys.keyring.wrap(key, context=identity)
            row = session.get(LedgerEntry, seq)
            assert row is not None
            row.opening_kek_id, row.opening_key = wrapped.kek_id, wrapped.blob
            row.opening_sealed = crypto.seal_bytes(key, opening.to_bytes(), context=identity)
            session.add(row)
        session.commit()
    return len(openings)


def test_openings_move_into_their_entries_and_back(world: World) -> None:
    vault, officer = world.vault, world["uz.officer"]
    package = vault.upload(
        officer,
        NewPackage(title="t", classification=Classification.UNCLASSIFIED, handling=Handling.H0),
        [IncomingFile(name="a.txt", reader=io.BytesIO(b"a"))],
    ).package.id
    vault.get_package(officer, package)
    before = _opened(world)
    assert any(p == package for _, _, p, _ in before)
    engine = vault.engine

    # Openings sealed under the KEK's derived key: 0007 can't hold them, so no downgrade.
    with pytest.raises(RuntimeError, match="cannot hold"):
        _downgrade(engine, "0007")
    assert _opened(world) == before

    moved = _reseal_as_revision_0007(world)
    assert moved == len(before)
    assert _opened(world) == before  # the wrapped-key kind opens too
    _downgrade(engine, "0007")
    columns = {c["name"] for c in inspect(engine).get_columns("ledgerentry")}
    assert columns.isdisjoint(LEDGER_OPENING_COLUMNS)
    with engine.connect() as connection:
        moved_out = connection.execute(text("SELECT count(*) FROM ledgeropening")).scalar_one()
    assert moved_out == moved

    migrate(engine)
    assert not inspect(engine).has_table("ledgeropening")
    assert _opened(world) == before
    # The vault goes on appending committed entries, openings in their rows, after the move.
    vault.get_package(officer, package)
    after = _opened(world)
    assert after[: len(before)] == before
    assert after[-1][1:3] == ("uz.officer", package)
    with Session(engine) as session:
        newest = session.get(LedgerEntry, after[-1][0])
        assert newest is not None
        assert newest.opening_key is None  # new openings: the derived key, no wrapped key


def test_rotate_kek_reseals_both_kinds_of_opening(world: World, tmp_path: Path) -> None:
    """After rotation no opening needs the old KEK: 0007's kind is re-sealed as the new kind."""
    world.vault.get_package(world["uz.officer"], _any_package(world))
    before = _opened(world)
    _reseal_as_revision_0007(world)
    world.vault.get_package(world["uz.officer"], _any_package(world))  # one of the new kind
    old_kek = next(world.settings.data_dir.rglob("kek.b64"))
    new_kek = tmp_path / "kek-new.b64"
    new_kek.write_bytes(base64.b64encode(crypto.new_data_key()) + b"\n")
    new_kek.chmod(0o600)
    rotated = world.settings.model_copy(update={"kek_file": new_kek, "kek_old_files": [old_kek]})
    vault = Vault.open(rotated, create=False)
    try:
        current = vault.core.keys.keyring.current.id
        assert vault.rotate_kek(local_operator()) >= len(before) + 1
        with Session(vault.engine) as session:
            rows = session.exec(
                select(LedgerEntry).where(col(LedgerEntry.opening_sealed).is_not(None))
            ).all()
        assert len(rows) > len(before)
        assert {(r.opening_kek_id, r.opening_key) for r in rows} == {(current, None)}
        opened = [(e.seq, e.actor_user, e.package, e.reason) for e in vault.unscoped_entries()]
        assert [o for o in opened if o[1]][: len(before)] == before
    finally:
        vault.close()


def _any_package(world: World) -> str:
    return world.vault.upload(
        world["uz.officer"],
        NewPackage(title="p", classification=Classification.UNCLASSIFIED, handling=Handling.H0),
        [IncomingFile(name="p.txt", reader=io.BytesIO(b"p"))],
    ).package.id


# What a schema holds besides rows: its relations (tables, indexes, sequences, views), the types
# other than a relation's row type and arrays (enums, domains: an array type goes with its
# element) and its functions.
_SCHEMA_OBJECTS = text(
    "SELECT 'relation ' || relname FROM pg_class"
    " WHERE relnamespace = current_schema()::regnamespace"
    " UNION ALL SELECT 'type ' || typname FROM pg_type"
    " WHERE typnamespace = current_schema()::regnamespace AND typrelid = 0"
    " AND typcategory <> 'A'"
    " UNION ALL SELECT 'function ' || proname FROM pg_proc"
    " WHERE pronamespace = current_schema()::regnamespace"
)


def _schema_objects(connection: Connection) -> set[str]:
    return set(connection.execute(_SCHEMA_OBJECTS).scalars())


@requires_postgres
def test_postgres_downgrade_to_base_and_upgrade_again() -> None:
    """``downgrade base`` removes everything the revisions created on PostgreSQL, the enum
    types and the append-only guard's function included, so ``upgrade head`` runs again."""
    with postgres_schema_url() as url:
        engine = make_engine(url)
        try:
            migrate(engine)
            _downgrade(engine, "base")
            with engine.connect() as connection:
                left = _schema_objects(connection)
            assert left == {"relation alembic_version", "relation alembic_version_pkc"}
            migrate(engine)
            with engine.connect() as connection:
                assert append_only_problems(connection) == []
                assert "type role" in _schema_objects(connection)  # the types are back
        finally:
            engine.dispose()


def test_a_migration_that_fails_says_why_and_changes_nothing(world: World) -> None:
    """It said only "database unavailable: OperationalError": nothing to act on."""
    engine = world.vault.engine
    _downgrade(engine, "0008")
    with engine.begin() as conn:  # in the way of what 0009 creates
        conn.execute(text("CREATE TABLE _in_the_way (x INTEGER)"))
        conn.execute(text("CREATE INDEX ix_release_derived_from ON _in_the_way (x)"))
    with pytest.raises(StorageUnavailable) as failed:
        migrate(engine)
    assert "migration failed, nothing changed" in failed.value.message
    assert "ix_release_derived_from" in failed.value.message
    assert schema_revision(engine) == "0008_openings_in_entries"
