"""vault.prepared: statements run on the driver's cursor give what SQLAlchemy's own execution
gives (values, types, transaction, errors), on SQLite and, in the PostgreSQL pass, there."""

from __future__ import annotations

import io
from datetime import datetime

import pytest
from sqlalchemy import bindparam, column, event, literal, select, table, text
from sqlalchemy.exc import DBAPIError, OperationalError, PendingRollbackError
from sqlalchemy.sql.expression import BindParameter
from sqlmodel import col

from tests.conftest import PG_URL, World, postgres_schema_url, requires_postgres
from vault.db import make_engine, migrate, read_scope
from vault.models import Classification, Handling, Package, Release, ReleaseStatus
from vault.prepared import Prepared
from vault.schemas import NewPackage
from vault.service import IncomingFile
from vault.service.access import _PACKAGE_FACTS
from vault.service.identity import _PRINCIPAL


def _package(world: World) -> str:
    meta = NewPackage(
        title="prepared", classification=Classification.RESTRICTED, handling=Handling.H2
    )
    files = [IncomingFile(name="a.txt", reader=io.BytesIO(b"x"))]
    return world.vault.upload(world["uz.officer"], meta, files).package.id


def test_rows_carry_the_values_and_types_sqlalchemy_gives(world: World) -> None:
    package_id = _package(world)
    uz = world["uz.officer"]
    world.vault.release(uz, package_id, country="KZ")
    facts = {
        "pid": package_id,
        "now": datetime.now().astimezone(),
        "agency": "KZ-BORDER",
        "country": "KZ",
        "uid": uz.user_id,
    }
    principal = {"uid": uz.user_id, "sid": uz.session_id}
    with read_scope(world.vault.engine) as connection:
        for prepared, params in ((_PACKAGE_FACTS, facts), (_PRINCIPAL, principal)):
            mine = prepared.first(connection, params)
            theirs = connection.execute(prepared.statement, params).first()
            assert mine is not None
            assert theirs is not None
            assert tuple(mine) == tuple(theirs)
            assert [type(v) for v in mine] == [type(v) for v in theirs]
            assert mine._fields == tuple(theirs._fields)
        package = _PACKAGE_FACTS.first(connection, facts)
        caller = _PRINCIPAL.first(connection, principal)
    assert package is not None
    assert caller is not None
    assert package.classification is Classification.RESTRICTED
    assert package.created_at.tzinfo is not None  # aware, as the models say
    assert package.to_country is True
    assert package.to_agency is False
    assert caller.username == "uz.officer"
    assert caller.expires_at.tzinfo is not None
    assert package.creator == "uz.officer"


def test_its_sql_is_the_text_sqlalchemy_would_send(world: World) -> None:
    """What benchmarks compare their replicas with (bench._internals.driver_sql): SQLAlchemy's
    cursor events never see a statement run on the driver's cursor."""
    package_id = _package(world)
    engine = world.vault.engine
    params = {"pid": package_id, "now": datetime.now().astimezone(), "agency": "UZ-CUSTOMS"}
    params |= {"country": "UZ", "uid": world["uz.officer"].user_id}
    sent: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with read_scope(engine) as connection:
            connection.execute(_PACKAGE_FACTS.statement, params).all()
            assert _PACKAGE_FACTS.first(connection, params) is not None
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert sent
    assert _PACKAGE_FACTS.sql(engine.dialect) == sent[-1]
    assert sent[-1].lstrip().upper().startswith("SELECT")


def test_bound_literals_and_missing_rows(world: World) -> None:
    package_id = _package(world)
    world.vault.release(world["uz.officer"], package_id, country="KZ")
    active = Prepared(
        select(col(Release.country_code)).where(
            col(Release.package_id) == bindparam("pid"),
            col(Release.status) == ReleaseStatus.ACTIVE,  # an anonymous bound value
        )
    )
    with read_scope(world.vault.engine) as connection:
        assert active.all(connection, {"pid": package_id}) == [("KZ",)]
        assert active.first(connection, {"pid": "no-such-package"}) is None
        assert active.scalar(connection, {"pid": "no-such-package"}) is None
        assert Prepared.of(active.statement) is Prepared.of(active.statement)


def test_runs_in_the_connections_transaction(world: World) -> None:
    package_id = _package(world)
    count = Prepared(select(col(Package.size)).where(col(Package.id) == bindparam("pid")))
    engine = world.vault.engine
    with engine.connect() as connection:
        assert not connection.in_transaction()
        count.scalar(connection, {"pid": package_id})
        # Begun through SQLAlchemy, so its commit or rollback ends what the cursor read in.
        assert connection.in_transaction()
        connection.rollback()
    with engine.connect() as connection:
        # A change not yet committed in this connection's transaction is seen by the cursor.
        connection.execute(
            text("UPDATE package SET size = 4242 WHERE id = :pid"), {"pid": package_id}
        )
        assert count.scalar(connection, {"pid": package_id}) == 4242
        connection.rollback()
        assert count.scalar(connection, {"pid": package_id}) != 4242


def test_driver_errors_are_sqlalchemys(world: World) -> None:
    missing = Prepared(select(column("x")).select_from(table("no_such_table")))
    with world.vault.engine.connect() as connection, pytest.raises(DBAPIError) as raised:
        missing.all(connection, {})
    assert isinstance(raised.value.orig, connection.dialect.loaded_dbapi.Error)
    assert not raised.value.connection_invalidated


def test_statements_it_cannot_run_are_refused(world: World) -> None:
    with pytest.raises(ValueError, match="plain names"):
        Prepared(select(literal(1)))  # no name to call the column by
    ids: BindParameter[str] = bindparam("ids", expanding=True)  # rendered at each execution
    expanding = Prepared(select(col(Package.id)).where(col(Package.id).in_(ids)))
    with (
        world.vault.engine.connect() as connection,
        pytest.raises(ValueError, match="fixed once compiled"),
    ):
        expanding.all(connection, {"ids": ["a"]})


@requires_postgres
def test_a_lost_postgresql_connection_is_invalidated() -> None:
    assert PG_URL
    with postgres_schema_url() as url:
        engine = make_engine(url)
        try:
            migrate(engine)
            sizes = Prepared(select(col(Package.size)))
            with engine.connect() as connection:
                pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                connection.rollback()
                with engine.connect() as killer:
                    killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    killer.commit()
                with pytest.raises(OperationalError) as raised:
                    sizes.all(connection, {})
                assert raised.value.connection_invalidated
                assert connection.invalidated
                with pytest.raises(PendingRollbackError):
                    connection.exec_driver_sql("SELECT 1")
            # The pool hands out a working connection afterwards.
            with engine.connect() as connection:
                assert sizes.all(connection, {}) == []
        finally:
            engine.dispose()
