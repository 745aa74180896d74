"""Commands that open the vault locally: only ``admin init`` creates one, and the compliance
commands leave what they inspect exactly as they found it.

Issue 17, defect 4: ``blovault ledger verify`` run in the wrong folder created a new vault
there (database and development keys) and reported "ledger intact: 0 entries". Sharp edge:
``ledger verify`` restored a dropped append-only trigger of the database it was checking.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import pytest
from sqlalchemy import create_engine, inspect, text

from blo_vault.cli.errors import EXIT_CODES
from tests.cli.test_cli_access import release, upload, write_source
from tests.conftest import (
    FAST_ARGON2,
    PG_URL,
    CliRunner,
    World,
    free_port,
    postgres_schema_url,
    requires_postgres,
)
from tests.servers import BLOVAULT
from vault.db import append_only_problems
from vault.errors import VaultMissing

MISSING = EXIT_CODES[VaultMissing]

# Every command that opens the local vault, other than the one that creates it.
LOCAL_COMMANDS = [
    ("ledger", "verify"),
    ("ledger", "export", "-o", "ledger.json"),
    ("ledger", "checkpoint"),
    ("ledger", "prove", "0"),
    ("ledger", "show"),
    ("admin", "add-country", "UZ", "--name", "Uzbekistan"),
    ("admin", "rules"),
    ("admin", "rotate-kek"),
    ("admin", "migrate"),
]


class BareCli(Protocol):
    """The ``bare_cli`` fixture: run the CLI with ``args``; returns (exit code, stdout, stderr)."""

    def __call__(self, *args: str) -> tuple[int, str, str]: ...


@pytest.fixture
def bare_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> BareCli:
    """``blovault`` run in-process in an empty folder with no VAULT_* settings at all."""
    from blo_vault.cli.main import run

    folder = tmp_path / "elsewhere"
    folder.mkdir()
    for key in list(os.environ):
        if key.startswith("VAULT_"):
            monkeypatch.delenv(key)
    for key, value in FAST_ARGON2.items():
        monkeypatch.setenv(f"VAULT_{key.upper()}", str(value))
    monkeypatch.setenv("VAULT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(folder)

    def invoke(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        capsys.readouterr()
        code = run(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.mark.parametrize("command", LOCAL_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_no_command_but_init_creates_a_vault(bare_cli: BareCli, command: tuple[str, ...]) -> None:
    folder = Path.cwd()
    code, out, err = bare_cli(*command)
    assert code == MISSING, (code, out, err)
    assert "intact" not in out
    # The message names the path it looked at and the command that creates a vault.
    assert str(folder / "vault-data" / "vault.db") in err
    assert "blovault admin init" in err
    assert list(folder.iterdir()) == [], "a command other than 'admin init' created files"


def test_admin_init_creates_then_verify_reports(
    bare_cli: BareCli,
) -> None:
    code, _, err = bare_cli("admin", "init")
    assert code == 0, err
    data = Path.cwd() / "vault-data"
    assert (data / "vault.db").is_file()
    assert (data / "dev-keys").is_dir()
    code, out, err = bare_cli("ledger", "verify")
    assert code == 0, err
    assert "ledger intact: 0 entries" in out
    # Running init again on the vault it made is harmless (it upgrades the schema only).
    code, _, err = bare_cli("admin", "init")
    assert code == 0, err


def test_missing_development_key_is_not_made_on_the_side(
    bare_cli: BareCli,
) -> None:
    """A new key next to an existing database would not open what the old one sealed."""
    assert bare_cli("admin", "init")[0] == 0
    key = next((Path.cwd() / "vault-data" / "dev-keys").iterdir())
    key.unlink()
    code, _, err = bare_cli("ledger", "verify")
    assert code == MISSING, err
    assert str(key) in err
    assert not key.exists()


def test_serve_does_not_create_a_vault(tmp_path: Path) -> None:
    """In a real process (a server that wrongly started would be stopped by the timeout)."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    result = subprocess.run(
        [str(BLOVAULT), "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == MISSING, result.stderr
    assert str(folder / "vault-data" / "vault.db") in result.stderr
    assert list(folder.iterdir()) == []


def test_serve_warns_of_what_the_database_lacks(
    cli: CliRunner, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL server with autovacuum off is named before the server starts (listings
    slow down as the vault grows); SQLite, or autovacuum on, gets no warning."""
    import uvicorn

    started: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: started.append(app))
    result = cli("serve", "--port", free_port())
    assert result.code == 0, result.stderr
    assert started == ["blo_vault.api.asgi:app"]
    engine = world.vault.engine
    off = False
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            setting = connection.execute(text("SELECT current_setting('autovacuum')")).scalar()
        off = setting == "off"
    assert ("warning: PostgreSQL's autovacuum is off" in result.stderr) is off, result.stderr


@requires_postgres
def test_empty_postgres_database_is_missing_not_created(
    bare_cli: BareCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert PG_URL
    with postgres_schema_url() as url:
        monkeypatch.setenv("VAULT_DATABASE_URL", url)
        code, out, err = bare_cli("ledger", "verify")
        assert code == MISSING, (code, out, err)
        assert "no vault schema" in err
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with engine.connect() as connection:
                assert inspect(connection).get_table_names() == []
        finally:
            engine.dispose()


def _disarm(world: World) -> None:
    """Drop one of the ledger's append-only triggers, as a schema owner could."""
    engine = world.vault.engine
    statement = (
        "DROP TRIGGER ledgerentry_append_only ON ledgerentry"
        if engine.dialect.name == "postgresql"
        else "DROP TRIGGER ledgerentry_no_update"
    )
    with engine.begin() as connection:
        connection.execute(text(statement))


def _guard_problems_and_size(world: World) -> tuple[list[str], int]:
    with world.vault.engine.connect() as connection:
        size = connection.execute(text("SELECT count(*) FROM ledgerentry")).scalar_one()
        return append_only_problems(connection), int(size)


def test_ledger_verify_is_read_only(world: World, cli: CliRunner) -> None:
    """Verification reports on a disarmed ledger and changes nothing: restoring the guard is
    'admin migrate''s job, and an auditor's check must not alter the evidence."""
    _disarm(world)
    before = _guard_problems_and_size(world)
    assert before[0], "the trigger should be reported missing"
    result = cli("ledger", "verify")
    assert result.code == 0, result.stderr
    assert "ledger intact" in result.stdout
    assert _guard_problems_and_size(world) == before
    # ... and the command whose job it is does restore it.
    assert cli("admin", "migrate").code == 0
    assert _guard_problems_and_size(world)[0] == []


def test_release_window_relative_to_now(
    cli: CliRunner, logged_in: Callable[[str], None], tmp_path: Path
) -> None:
    """The README's timed release: '+1d' and '+30d' counted from now, as the server stores."""
    logged_in("uz.officer")
    package_id = upload(cli, "uz.officer", write_source(tmp_path))
    before = datetime.now(UTC)
    made = release(
        cli, "uz.officer", package_id, "--country", "TJ", "--not-before", "+1d", "--expires", "+30d"
    )
    after = datetime.now(UTC)
    starts = datetime.fromisoformat(made["not_before"])
    ends = datetime.fromisoformat(made["expires_at"])
    assert before + timedelta(days=1) - timedelta(seconds=1) <= starts
    assert starts <= after + timedelta(days=1)
    assert before + timedelta(days=30) - timedelta(seconds=1) <= ends
    assert ends <= after + timedelta(days=30)
    # Not yet in force: Tajikistan can't see it.
    logged_in("tj.officer")
    assert cli("package", "show", package_id, user="tj.officer").code == 4
    bad = cli(
        "package", "release", package_id, "--country", "KZ", "--expires", "+1y", user="uz.officer"
    )
    assert bad.code == 2
    assert "+30d" in bad.stderr
