"""PostgreSQL roles: the service's role can append to the ledger but never rewrite it.

README, "Database roles": migrations run as the owner; ``grant_app_role`` gives the service's
role SELECT and INSERT only on ``ledgerentry``, ``ledgernode`` and ``ledgercheckpoint``
(read-only on ``alembic_version``, read-write elsewhere); triggers stop even the owner from
UPDATE, DELETE and TRUNCATE on the ledger tables.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tests.conftest import (
    FAST_ARGON2,
    PASSWORD,
    PG_URL,
    postgres_schema_url,
    requires_postgres,
    running_server,
    seed,
)
from vault.config import load_settings
from vault.crypto import SEGMENT_SIZE
from vault.db import (
    APPEND_ONLY_TABLES,
    MIGRATIONS,
    check_schema,
    grant_app_role,
    make_engine,
    migrate,
)
from vault.errors import ConfigError
from vault.keys import generate_key_files
from vault.service import Vault, local_operator

pytestmark = requires_postgres

# A row for each ledger table (rows must exist for the row-level triggers to fire).
ROWS = {
    "ledgerentry": ("INSERT INTO ledgerentry (seq, prev_hash, entry) VALUES (:n, :h, :b)"),
    "ledgernode": ("INSERT INTO ledgernode (level, idx, hash) VALUES (0, :n, :h)"),
    "ledgercheckpoint": (
        "INSERT INTO ledgercheckpoint (size, note, created_at) VALUES (:n, 'note', now())"
    ),
}
CHANGES = {
    "UPDATE": {
        "ledgerentry": "UPDATE ledgerentry SET entry = :b",
        "ledgernode": "UPDATE ledgernode SET hash = :h",
        "ledgercheckpoint": "UPDATE ledgercheckpoint SET note = 'forged'",
    },
    "DELETE": {table: f"DELETE FROM {table}" for table in APPEND_ONLY_TABLES},
    "TRUNCATE": {table: f"TRUNCATE {table}" for table in APPEND_ONLY_TABLES},
}


@dataclass
class Databases:
    role: str
    owner_url: str
    role_url: str
    owner: Engine
    app: Engine


def _engine(url: str) -> Engine:
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


@pytest.fixture
def databases() -> Iterator[Databases]:
    """A fresh schema migrated by the owner, and a new LOGIN role granted as the service."""
    assert PG_URL
    role = "vault_app_t_" + secrets.token_hex(5)
    admin = _engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
    try:
        with postgres_schema_url() as owner_url:
            owner = make_engine(owner_url)
            migrate(owner)
            grant_app_role(owner, role)
            role_url = make_url(owner_url).set(username=role).render_as_string(hide_password=False)
            app = _engine(role_url)
            try:
                yield Databases(
                    role=role, owner_url=owner_url, role_url=role_url, owner=owner, app=app
                )
            finally:
                app.dispose()
                owner.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


def _params(n: int) -> dict[str, object]:
    return {"n": n, "h": secrets.token_bytes(32), "b": b"entry-%d" % n}


def _refused(engine: Engine, sql: str, params: dict[str, object]) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
        conn.execute(text(sql), params)
    return caught.value


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def test_app_role_connects_as_itself_into_the_schema(databases: Databases) -> None:
    with databases.app.connect() as conn:
        user, schema = conn.execute(text("SELECT current_user, current_schema()")).one()
        superuser = conn.execute(
            text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        ).scalar_one()
    assert user == databases.role
    assert schema.startswith("t_")
    assert superuser is False
    check_schema(databases.app)  # may read alembic_version


def test_app_role_may_append_and_read_the_ledger(databases: Databases) -> None:
    for n, (table, sql) in enumerate(ROWS.items()):
        with databases.app.begin() as conn:
            conn.execute(text(sql), _params(n))
        with databases.app.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1


@pytest.mark.parametrize("op", list(CHANGES))
@pytest.mark.parametrize("table", APPEND_ONLY_TABLES)
def test_app_role_may_not_rewrite_the_ledger(databases: Databases, table: str, op: str) -> None:
    with databases.owner.begin() as conn:
        conn.execute(text(ROWS[table]), _params(0))
    exc = _refused(databases.app, CHANGES[op][table], _params(1))
    assert _sqlstate(exc) == "42501", exc
    assert "permission denied" in str(exc.orig)
    with databases.owner.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE ledgerentry DISABLE TRIGGER ALL",
        "DROP TRIGGER ledgerentry_append_only ON ledgerentry",
        "DROP TABLE ledgerentry",
        "CREATE OR REPLACE FUNCTION vault_append_only() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RETURN NEW; END $$",
        "UPDATE alembic_version SET version_num = 'x'",
    ],
)
def test_app_role_may_not_disarm_the_triggers(databases: Databases, sql: str) -> None:
    exc = _refused(databases.app, sql, {})
    assert _sqlstate(exc) == "42501", exc


def test_app_role_may_not_grant_itself_more(databases: Databases) -> None:
    # PostgreSQL only warns ("no privileges were granted") here; what matters is the effect.
    with databases.app.begin() as conn:
        conn.execute(text(f"GRANT UPDATE, DELETE, TRUNCATE ON ledgerentry TO {databases.role}"))
        conn.execute(text("GRANT UPDATE, DELETE, TRUNCATE ON ledgerentry TO PUBLIC"))
    with databases.app.connect() as conn:
        for privilege in ("UPDATE", "DELETE", "TRUNCATE"):
            held = conn.execute(
                text("SELECT has_table_privilege(current_user, 'ledgerentry', :p)"),
                {"p": privilege},
            ).scalar_one()
            assert held is False, privilege
    exc = _refused(databases.app, "DELETE FROM ledgerentry", {})
    assert _sqlstate(exc) == "42501"


def test_app_role_may_change_the_other_tables(databases: Databases) -> None:
    with databases.app.begin() as conn:
        conn.execute(text("INSERT INTO country (code, name) VALUES ('ZZ', 'Test')"))
        conn.execute(text("UPDATE country SET name = 'Changed' WHERE code = 'ZZ'"))
        conn.execute(text("DELETE FROM country WHERE code = 'ZZ'"))


@pytest.mark.parametrize("op", list(CHANGES))
@pytest.mark.parametrize("table", APPEND_ONLY_TABLES)
def test_even_the_owner_may_not_rewrite_the_ledger(
    databases: Databases, table: str, op: str
) -> None:
    with databases.owner.begin() as conn:
        conn.execute(text(ROWS[table]), _params(0))
    exc = _refused(databases.owner, CHANGES[op][table], _params(1))
    assert f"{table} is append-only" in str(exc.orig)
    with databases.owner.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1


# The guard can be disarmed by the owner (or a superuser): a vault must notice on start.
DISARM = {
    "trigger-dropped": (
        "DROP TRIGGER ledgerentry_append_only ON ledgerentry",
        "trigger ledgerentry_append_only is missing",
    ),
    "trigger-disabled": (
        "ALTER TABLE ledgernode DISABLE TRIGGER ledgernode_append_only",
        "trigger ledgernode_append_only is disabled",
    ),
    "trigger-made-conditional": (
        "DROP TRIGGER ledgercheckpoint_append_only ON ledgercheckpoint;"
        " CREATE TRIGGER ledgercheckpoint_append_only BEFORE UPDATE OR DELETE ON ledgercheckpoint"
        " FOR EACH ROW WHEN (false) EXECUTE FUNCTION vault_append_only()",
        "trigger ledgercheckpoint_append_only was altered",
    ),
    "function-rewritten": (
        "CREATE OR REPLACE FUNCTION vault_append_only() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN OLD; END $$",
        "function vault_append_only() is missing or altered",
    ),
}


@pytest.mark.parametrize("how", list(DISARM))
def test_disarmed_guard_refuses_production_and_migrate_restores_it(
    databases: Databases, how: str
) -> None:
    check_schema(databases.app)  # intact: passes, read with the app role's rights
    statement, problem = DISARM[how]
    with databases.owner.begin() as conn:
        conn.execute(text(statement))
    with pytest.raises(ConfigError, match="not append-only") as caught:
        check_schema(databases.app)
    assert problem in caught.value.message
    assert "blovault admin migrate" in caught.value.message
    migrate(databases.owner)  # as the owner: restores every trigger and the function
    check_schema(databases.app)
    for table in APPEND_ONLY_TABLES:
        with databases.owner.begin() as conn:
            conn.execute(text(ROWS[table]), _params(0))
        for op in CHANGES:
            exc = _refused(databases.owner, CHANGES[op][table], _params(1))
            assert f"{table} is append-only" in str(exc.orig)


def test_vault_runs_as_app_role(databases: Databases, tmp_path: Path) -> None:
    keys = generate_key_files(tmp_path / "secrets")
    settings = load_settings(
        env="production",
        data_dir=tmp_path / "data",
        database_url=databases.role_url,
        kek_file=keys["VAULT_KEK_FILE"],
        jwt_key_file=keys["VAULT_JWT_KEY_FILE"],
        ledger_key_file=keys["VAULT_LEDGER_KEY_FILE"],
        # Production requires signed packages by default (issue 13); what this test checks is
        # the database role, with a plain upload.
        require_signatures=False,
        **FAST_ARGON2,
    )
    vault = Vault.open(settings)
    try:
        with vault.engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar_one() == databases.role
        seed(vault)
        content = secrets.token_bytes(2 * SEGMENT_SIZE + 11)
        with running_server(vault) as url, httpx.Client(base_url=url, timeout=60) as client:

            def auth(user: str) -> dict[str, str]:
                reply = client.post("/auth/login", json={"username": user, "password": PASSWORD})
                assert reply.status_code == 200, reply.text
                return {"Authorization": f"Bearer {reply.json()['access_token']}"}

            uz, kz = auth("uz.officer"), auth("kz.officer")
            up = client.post(
                "/packages",
                headers=uz,
                files=[
                    ("metadata", (None, json.dumps({"title": "As app role"}), "application/json")),
                    ("file", ("evidence.bin", content, "application/octet-stream")),
                ],
            )
            assert up.status_code == 201, up.text
            package = up.json()["package"]
            file_id = package["files"][0]["id"]
            released = client.post(
                f"/packages/{package['id']}/releases", headers=uz, json={"country": "KZ"}
            )
            assert released.status_code == 201, released.text
            for who in (uz, kz):
                got = client.get(f"/packages/{package['id']}/files/{file_id}", headers=who)
                assert got.status_code == 200, got.text
                assert got.content == content
                assert got.headers["X-Content-SHA256"] == hashlib.sha256(content).hexdigest()
            assert client.get("/readyz").status_code == 200
        checkpoint = vault.checkpoint()  # INSERT into ledgercheckpoint
        assert checkpoint.size == vault.ledger_size()
        assert vault.verify_ledger(local_operator()).ok
        # Admin maintenance with the service's credentials: crypto-shredding still works, but
        # the role owns no table, so it can't VACUUM them: the purge says so (it said all was
        # well while PostgreSQL skipped the VACUUM with a notice).
        purged = vault.purge(local_operator(), package["id"])
        assert not purged.log_emptied
        assert vault.verify_ledger(local_operator()).ok
    finally:
        vault.close()
    with databases.owner.connect() as conn:
        wrapped = conn.execute(
            text("SELECT length(wrapped_key) FROM package WHERE id = :i"), {"i": package["id"]}
        ).scalar_one()
    assert wrapped == 0


def test_only_a_ledger_entrys_opening_may_be_destroyed(databases: Databases) -> None:
    """Purge and retention set an entry's opening columns to NULL: the app role may do that,
    and only that; an UPDATE that also sets the entry is refused, by the grant for the app role
    and by the trigger for the owner."""
    with databases.owner.begin() as conn:
        conn.execute(text(ROWS["ledgerentry"]), _params(0))
        conn.execute(text("UPDATE ledgerentry SET opening_sealed = :s"), {"s": b"sealed"})
    with databases.app.begin() as conn:
        conn.execute(text("UPDATE ledgerentry SET opening_sealed = NULL, opening_key = NULL"))
    both = "UPDATE ledgerentry SET opening_sealed = NULL, entry = :b"
    assert _sqlstate(_refused(databases.app, both, _params(1))) == "42501"
    assert "ledgerentry is append-only" in str(_refused(databases.owner, both, _params(1)).orig)
    with databases.owner.connect() as conn:
        entry, sealed = conn.execute(text("SELECT entry, opening_sealed FROM ledgerentry")).one()
    assert (bytes(entry), sealed) == (b"entry-0", None)


def test_upgrading_to_openings_in_entries_grants_the_app_role(databases: Databases) -> None:
    """A deployment granted before 0008 (INSERT on the ledger, no column grants) keeps working:
    the migration grants every role that may append UPDATE of the opening columns."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with databases.owner.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0007")  # drops the columns, and their grants with them
    migrate(databases.owner)
    with databases.owner.begin() as conn:
        conn.execute(text(ROWS["ledgerentry"]), _params(0))
        conn.execute(text("UPDATE ledgerentry SET opening_sealed = :s"), {"s": b"sealed"})
    with databases.app.begin() as conn:
        conn.execute(text("UPDATE ledgerentry SET opening_sealed = NULL"))
    with databases.owner.connect() as conn:
        assert conn.execute(text("SELECT opening_sealed FROM ledgerentry")).scalar_one() is None


def test_an_upgrade_grants_the_app_role_the_tables_it_adds(databases: Databases) -> None:
    """A deployment granted at 0002 and upgraded with `admin migrate` alone: the service's
    role had no right at all on the tables added since (web sessions, officer keys, seizure
    records, crossing points, witnesses) and failed at run time. The migration now grants
    every role already granted as the service."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with databases.owner.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0002")  # drops the later tables, and their grants
    migrate(databases.owner)
    added = ("websession", "officerkey", "packagerecords", "crossingpoint", "witnesslag")
    with databases.owner.connect() as conn:
        rights = {
            table: conn.execute(
                text("SELECT has_table_privilege(:role, :table, 'INSERT')"),
                {"role": databases.role, "table": table},
            ).scalar_one()
            for table in (*added, "ledgerentry")
        }
        ledger_update = conn.execute(
            text("SELECT has_table_privilege(:role, 'ledgerentry', 'UPDATE')"),
            {"role": databases.role},
        ).scalar_one()
    assert rights == dict.fromkeys((*added, "ledgerentry"), True)
    assert not ledger_update  # the ledger stays append-only for it
