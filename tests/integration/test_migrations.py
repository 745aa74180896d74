"""Schema migrations that move data: run on a vault with real rows, on the suite's database
(SQLite, or PostgreSQL when the suite runs there).

0008 moved the sealed openings of committed ledger entries from their own table into the
entries' rows (issue 18's append rate). Upgrading a vault that already holds openings must
keep every one of them opening to the same fields, and the downgrade must give them back.
"""

from __future__ import annotations

import io

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect, text

from tests.conftest import World
from vault.db import MIGRATIONS, migrate
from vault.models import LEDGER_OPENING_COLUMNS, Classification, Handling
from vault.schemas import NewPackage
from vault.service import IncomingFile


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

    _downgrade(engine, "0007")
    columns = {c["name"] for c in inspect(engine).get_columns("ledgerentry")}
    assert columns.isdisjoint(LEDGER_OPENING_COLUMNS)
    with engine.connect() as connection:
        moved_out = connection.execute(text("SELECT count(*) FROM ledgeropening")).scalar_one()
    assert moved_out == len(before)

    migrate(engine)
    assert not inspect(engine).has_table("ledgeropening")
    assert _opened(world) == before
    # The vault goes on appending committed entries, openings in their rows, after the move.
    vault.get_package(officer, package)
    after = _opened(world)
    assert after[: len(before)] == before
    assert after[-1][1:3] == ("uz.officer", package)
