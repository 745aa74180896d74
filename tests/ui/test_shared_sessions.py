"""Web sessions live in the vault's database: a second server worker (another ``Vault.open``
of the same data, another app) serves the session a first one started, and signing out in one
ends it in the other; no cookie value, CSRF token or service token is in the database file."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from blo_vault.api.app import create_app
from tests.conftest import ON_POSTGRES, World
from tests.ui.conftest import CSRF, Browser
from vault.service import Vault
from vault.websessions import WebSessionStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette: the httpx-backed TestClient is deprecated
    from fastapi.testclient import TestClient

COOKIE = "vault_session"


@pytest.fixture
def second_worker(world: World) -> Iterator[TestClient]:
    """Another worker: its own Vault over the same data directory and database, its own app."""
    vault = Vault.open(world.settings)
    try:
        with TestClient(create_app(vault=vault)) as client:
            yield client
    finally:
        vault.close()


def test_a_session_started_in_one_worker_is_served_by_another(
    browser: Browser, second_worker: TestClient
) -> None:
    browser.sign_in("uz.officer")
    cookie = browser.client.cookies.get(COOKIE)
    assert cookie
    second_worker.cookies.set(COOKIE, cookie)
    page = second_worker.get("/ui/account", follow_redirects=False)
    assert page.status_code == 200
    assert "uz.officer" in page.text
    # The CSRF token is the session's, whichever worker rendered the form.
    found = CSRF.search(page.text)
    assert found
    assert found.group(1) == browser.csrf("/ui/account")

    answer = second_worker.post(
        "/ui/signout", data={"csrf": found.group(1)}, follow_redirects=False
    )
    assert answer.status_code == 303
    back = browser.client.get("/ui/account", follow_redirects=False)
    assert back.status_code == 303
    assert back.headers["location"].endswith("/ui/signin")


def test_language_chosen_in_one_worker_holds_in_another(
    browser: Browser, second_worker: TestClient
) -> None:
    browser.sign_in("uz.officer")
    done = browser.post("/ui/preferences", {"lang": "ru"}, csrf_from="/ui/account")
    assert done.status_code == 303
    cookie = browser.client.cookies.get(COOKIE)
    assert cookie
    second_worker.cookies.set(COOKIE, cookie)
    assert '<html lang="ru">' in second_worker.get("/ui/account").text


@pytest.mark.skipif(ON_POSTGRES, reason="the database file is SQLite's")
def test_no_cookie_or_token_in_plaintext_in_the_database(world: World, browser: Browser) -> None:
    browser.sign_in("uz.officer")
    csrf = browser.csrf("/ui/account")
    cookie = browser.client.cookies.get(COOKIE)
    assert cookie
    rows = WebSessionStore(world.vault.engine, idle_seconds=60, lifetime_seconds=3600)
    held = rows.load(cookie)
    assert held is not None
    assert csrf.encode() in held.state  # opened with the cookie: the secrets are in there
    secrets = [cookie, csrf]
    for token in ("access", "refresh"):
        start = held.state.index(f'"{token}": "'.encode()) + len(token) + 5
        secrets.append(held.state[start : held.state.index(b'"', start)].decode())
    assert all(len(secret) > 20 for secret in secrets)
    world.vault.close()  # everything written to the database file
    files = [p for p in Path(world.settings.data_dir).glob("vault.db*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, (path.name, secret[:6])
