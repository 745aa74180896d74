"""Shared fixtures: a vault on a temp folder (SQLite, or PostgreSQL when asked), a seeded world
of countries, agencies and users, an in-process API client, a real server on 127.0.0.1, and
the CLI run in-process.

Set ``VAULT_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``) to run
PostgreSQL-only tests; add ``VAULT_TEST_BACKEND=postgres`` to run the *whole* suite on it
(each test gets its own schema, dropped afterwards).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import hypothesis
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlmodel import Session, col, select
from starlette.applications import Starlette

from vault import crypto
from vault.config import Settings, load_settings
from vault.models import Classification, Package, PackageFile, Role
from vault.service import Principal, Vault, local_operator, sealed

# CI runs the property tests on a fixed seed, so a submission's verdict doesn't depend on the
# draw; developers' runs explore new examples each time (HYPOTHESIS_PROFILE=ci to reproduce CI).
hypothesis.settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") or os.environ.get("HYPOTHESIS_PROFILE") == "ci":
    hypothesis.settings.load_profile("ci")

PASSWORD = "correct horse battery staple"
PG_URL = os.environ.get("VAULT_TEST_DATABASE_URL")
ON_POSTGRES = os.environ.get("VAULT_TEST_BACKEND") == "postgres"

# Tests that need a PostgreSQL server of their own (whatever backend the suite runs on) carry
# this mark; without VAULT_TEST_DATABASE_URL they are skipped with the reason below.
requires_postgres = pytest.mark.postgres
_NO_POSTGRES = pytest.mark.skip(
    reason="set VAULT_TEST_DATABASE_URL to a PostgreSQL server to run this test"
)


def _reaches_backend(item: pytest.Item) -> bool:
    """Whether the suite's backend choice can change what this test runs against: it uses the
    ``database_url`` fixture (directly or through ``settings``/``world``), or its module picks
    the database itself from ``ON_POSTGRES``/``postgres_schema_url``."""
    if "database_url" in getattr(item, "fixturenames", ()):
        return True
    module = getattr(item, "module", None)
    return hasattr(module, "ON_POSTGRES") or hasattr(module, "postgres_schema_url")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not PG_URL:
        for item in items:
            if item.get_closest_marker("postgres"):
                item.add_marker(_NO_POSTGRES)
    if ON_POSTGRES:
        # The PostgreSQL pass repeats only what PostgreSQL can change: the rest (crypto,
        # Merkle, notes, the access matrix on its own SQLite vault, ...) would run exactly as
        # in the SQLite pass.
        same = [item for item in items if not _reaches_backend(item)]
        if same:
            config.hook.pytest_deselected(items=same)
            items[:] = [item for item in items if _reaches_backend(item)]


# The bearer token GET /metrics needs on the test vaults (VAULT_METRICS_TOKEN).
METRICS_TOKEN = "metrics-token-for-tests-0123456789"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}

# The parts of a multipart upload as httpx takes them: (field, (filename, content, type)).
MultipartFiles = list[tuple[str, tuple[str | None, bytes | str | IO[bytes], str]]]

FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}

COUNTRIES = {"UZ": "Uzbekistan", "KZ": "Kazakhstan", "TJ": "Tajikistan", "KG": "Kyrgyzstan"}
AGENCIES = {
    "UZ-CUSTOMS": ("UZ", "State Customs Committee"),
    "UZ-BORDER": ("UZ", "State Border Guard Committee"),
    "KZ-BORDER": ("KZ", "Border Guard Service"),
    "KZ-INTERIOR": ("KZ", "Ministry of Interior"),
    "TJ-CUSTOMS": ("TJ", "Customs Service"),
}
# username: (agency, role, clearance)
USERS = {
    "uz.officer": ("UZ-CUSTOMS", Role.OFFICER, Classification.SECRET),
    "uz.border": ("UZ-BORDER", Role.OFFICER, Classification.SECRET),
    "uz.supervisor": ("UZ-CUSTOMS", Role.SUPERVISOR, Classification.SECRET),
    "kz.officer": ("KZ-BORDER", Role.OFFICER, Classification.SECRET),
    "kz.interior": ("KZ-INTERIOR", Role.OFFICER, Classification.SECRET),
    "tj.officer": ("TJ-CUSTOMS", Role.OFFICER, Classification.SECRET),
    "uz.auditor": ("UZ-CUSTOMS", Role.AUDITOR, Classification.SECRET),
    "uz.admin": ("UZ-CUSTOMS", Role.ADMIN, Classification.UNCLASSIFIED),
}


@contextlib.contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server, as a URL whose search_path points at it."""
    assert PG_URL
    schema = "t_" + secrets.token_hex(6)
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def database_url() -> Iterator[str | None]:
    """None (SQLite under the data dir) unless the whole suite runs on PostgreSQL."""
    if ON_POSTGRES:
        with postgres_schema_url() as url:
            yield url
    else:
        yield None


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    """Settings on a fresh data folder with cheap (but still argon2id) password hashing."""
    return load_settings(
        data_dir=tmp_path / "vault-data",
        database_url=database_url,
        metrics_token=METRICS_TOKEN,
        **FAST_ARGON2,
    )


@dataclass
class World:
    """A seeded vault and its users' principals."""

    vault: Vault
    settings: Settings
    users: dict[str, Principal] = field(default_factory=dict)

    def __getitem__(self, username: str) -> Principal:
        return self.users[username]


def seed(vault: Vault) -> dict[str, Principal]:
    """Countries, agencies and users of the demo world; returns each user's principal."""
    op = local_operator()
    for code, name in COUNTRIES.items():
        vault.add_country(op, code, name)
    for code, (country, name) in AGENCIES.items():
        vault.add_agency(op, code, country, name)
    out = {}
    for username, (agency, role, clearance) in USERS.items():
        vault.add_user(
            op, username=username, agency=agency, role=role, password=PASSWORD, clearance=clearance
        )
        out[username] = vault.authenticate(vault.login(username, PASSWORD).access_token)
    return out


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    """A vault with the demo world seeded."""
    vault = Vault.open(settings)
    try:
        yield World(vault=vault, settings=settings, users=seed(vault))
    finally:
        vault.close()


def reseal_package_digest(vault: Vault, session: Session, package_id: str) -> None:
    """Seal a package's digest anew over its file rows as they are in ``session`` now, as the
    host's operator (who holds the KEK) would after rewriting them: the server then serves
    the rows as genuine, and only what the recipient checks can catch the forgery."""
    package = session.get(Package, package_id)
    assert package is not None
    opened = sealed.open_meta(vault.keys, package)
    rows = session.exec(
        select(PackageFile)
        .where(PackageFile.package_id == package_id)
        .order_by(col(PackageFile.position))
    ).all()
    meta = {
        **opened.meta,
        "digest": sealed.package_digest([sealed.file_info(opened.key, row) for row in rows]),
    }
    package.sealed_meta = crypto.seal_bytes(
        opened.key, json.dumps(meta).encode(), context=sealed.package_identity(package_id)
    )
    session.add(package)


def open_files_under(root: Path) -> list[str]:
    """Files this process holds open below ``root`` (from /proc/self/fd)."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(f"{root}{os.sep}"):
                held.append(target)
    return held


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(app: Starlette, **options: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn on 127.0.0.1 in a thread; stop it on exit."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def running_server(vault: Vault) -> Iterator[str]:
    """Serve ``vault`` with uvicorn on 127.0.0.1 in a thread; stop it on exit."""
    from blo_vault.api.app import create_app
    from blo_vault.api.server import server_options

    # The options `blovault serve` uses, so tests see the production protocol and limits.
    with serving(create_app(vault=vault), **server_options(vault.settings)) as url:
        yield url


@pytest.fixture
def live_server(world: World) -> Iterator[str]:
    """The seeded vault served over a real socket on 127.0.0.1."""
    with running_server(world.vault) as url:
        yield url


@dataclass
class CliResult:
    """What one CLI run did."""

    code: int
    stdout: str
    stderr: str


class CliRunner(Protocol):
    """The ``cli`` fixture: run ``blovault`` with ``args`` (each passed through ``str``)."""

    def __call__(self, *args: str | int | Path, user: str = ..., stdin: str = ...) -> CliResult: ...


@pytest.fixture
def cli(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> CliRunner:
    """Run ``blovault`` in-process as a given user (own config dir), with the world's settings."""
    from blo_vault.cli.main import run

    monkeypatch.setenv("VAULT_DATA_DIR", str(world.settings.data_dir))
    if world.settings.database_url:
        monkeypatch.setenv("VAULT_DATABASE_URL", world.settings.database_url)
    for key, value in FAST_ARGON2.items():
        monkeypatch.setenv(f"VAULT_{key.upper()}", str(value))

    def invoke(*args: str | int | Path, user: str = "operator", stdin: str = "") -> CliResult:
        monkeypatch.setenv("VAULT_CONFIG_DIR", str(tmp_path / "config" / user))
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code=code, stdout=captured.out, stderr=captured.err)

    return invoke


@pytest.fixture
def logged_in(cli: CliRunner, live_server: str) -> Callable[[str], None]:
    """Log a user in through the CLI against the live server."""

    def do(user: str) -> None:
        result = cli(
            "login",
            "--server",
            live_server,
            "--username",
            user,
            "--password-stdin",
            user=user,
            stdin=PASSWORD + "\n",
        )
        assert result.code == 0, result.stderr

    return do
