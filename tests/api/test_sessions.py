"""Sessions through the real HTTP stack: login starts one, refresh rotates its refresh token,
reuse of a spent refresh token ends it, logout ends it at once, idle and absolute timeouts end
it, a password change ends every session of the user, and every step is in the ledger without
a token or password anywhere in the ledger or the database.

Time is moved through the service's explicit ``now`` parameters, never by sleeping.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData

from tests.conftest import (
    FAST_ARGON2,
    ON_POSTGRES,
    PASSWORD,
    World,
    postgres_schema_url,
    seed,
)
from tests.servers import spawn, wait_healthy
from vault.config import load_settings
from vault.errors import AuthenticationFailed
from vault.ledger.entry import Entry
from vault.models import utcnow
from vault.service import Vault
from vault.tokens import session_reference

NEW_PASSWORD = "a brand new passphrase for the night shift"
WRONG = "not the right password at all"


# --- helpers ------------------------------------------------------------------------------------


def login(client: httpx.Client, user: str, password: str = PASSWORD) -> dict[str, Any]:
    reply = client.post("/auth/login", json={"username": user, "password": password})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def refresh(client: httpx.Client, refresh_token: str) -> httpx.Response:
    return client.post("/auth/refresh", json={"refresh_token": refresh_token})


def claims_of(access_token: str) -> dict[str, Any]:
    payload = access_token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


def entries(vault: Vault) -> list[Entry]:
    return vault.unscoped_entries()


def entry(vault: Vault, seq: int) -> Entry:
    found = [e for e in entries(vault) if e.seq == seq]
    assert found, f"no ledger entry #{seq}"
    return found[0]


def refused(reply: httpx.Response, status: int = 401) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error: dict[str, Any] = reply.json()["error"]
    assert isinstance(error["receipt"], int), "a refusal must be recorded"
    return error


@contextlib.contextmanager
def vault_with(tmp_path: Path, **overrides: Any) -> Iterator[World]:
    """A seeded vault with setting ``overrides`` (on PostgreSQL when the suite runs there)."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema_url()) if ON_POSTGRES else None
        settings = load_settings(
            data_dir=tmp_path / "vault-data", database_url=url, **{**FAST_ARGON2, **overrides}
        )
        vault = Vault.open(settings)
        stack.callback(vault.close)
        yield World(vault=vault, settings=settings, users=seed(vault))


@pytest.fixture
def client(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=60) as http:
        yield http


# --- login, refresh, reuse ----------------------------------------------------------------------


def test_login_starts_a_session_with_a_refresh_token(world: World, client: httpx.Client) -> None:
    reply = client.post("/auth/login", json={"username": "uz.officer", "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    assert reply.headers["Cache-Control"] == "no-store"
    body = reply.json()
    assert body["expires_in"] == world.settings.token_ttl_seconds
    assert body["refresh_expires_in"] == world.settings.session_idle_seconds
    assert body["session_expires_in"] == world.settings.session_max_seconds
    assert body["refresh_token"]
    assert body["refresh_token"] != body["access_token"]
    sid = claims_of(body["access_token"])["sid"]
    assert body["refresh_token"].startswith(sid + ".")
    login_entry = entry(world.vault, body["receipt"])
    assert (login_entry.action, login_entry.decision, login_entry.actor_user) == (
        "login",
        "allow",
        "uz.officer",
    )
    assert login_entry.subject.startswith("session:")
    assert sid not in login_entry.subject  # the ledger names a session by a hash of its id


def test_refresh_rotates_and_a_spent_refresh_token_ends_the_session(
    world: World, client: httpx.Client
) -> None:
    first = login(client, "uz.officer")
    reply = refresh(client, first["refresh_token"])
    assert reply.status_code == 200, reply.text
    assert reply.headers["Cache-Control"] == "no-store"
    second = reply.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert claims_of(second["access_token"])["sid"] == claims_of(first["access_token"])["sid"]
    assert client.get("/packages", headers=bearer(second)).status_code == 200
    assert (entry(world.vault, second["receipt"]).action, "allow") == ("refresh", "allow")

    # The spent token again: whoever holds it, the session is taken as stolen and ends.
    error = refused(refresh(client, first["refresh_token"]))
    reuse = entry(world.vault, error["receipt"])
    assert (reuse.action, reuse.decision, reuse.reason, reuse.actor_user) == (
        "refresh",
        "deny",
        "refresh_reused",
        "uz.officer",
    )
    # ... for the other holder too: the newest refresh token and access token are dead.
    error = refused(refresh(client, second["refresh_token"]))
    assert entry(world.vault, error["receipt"]).reason == "session_revoked"
    error = refused(client.get("/packages", headers=bearer(second)))
    assert entry(world.vault, error["receipt"]).reason == "session_revoked"
    ended = [e for e in entries(world.vault) if e.action == "end-session"]
    assert [(e.reason, e.subject) for e in ended] == [
        ("refresh_reused", f"user:uz.officer {reuse.subject}")
    ]
    # Another session of the same officer is not affected.
    other = login(client, "uz.officer")
    assert client.get("/packages", headers=bearer(other)).status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "",
        "0" * 32 + "." + "A" * 43,  # well formed, no such session
        "x" * 200,
    ],
    ids=["garbage", "empty", "unknown-session", "long"],
)
def test_bad_refresh_tokens_are_refused(world: World, client: httpx.Client, token: str) -> None:
    reply = refresh(client, token)
    if token == "":
        assert reply.status_code == 422  # refused by the request schema, before the service
        return
    error = refused(reply)
    assert entry(world.vault, error["receipt"]).reason in {"bad_refresh_token", "session_unknown"}


def test_a_refresh_token_works_only_for_its_own_session(world: World, client: httpx.Client) -> None:
    """Another session's id with this session's secret is no refresh token at all."""
    mine = login(client, "uz.officer")
    theirs = login(client, "kz.officer")
    secret = mine["refresh_token"].split(".")[1]
    sid = theirs["refresh_token"].split(".")[0]
    refused(refresh(client, f"{sid}.{secret}"))
    # (taken as reuse of kz.officer's session: it ends, mine goes on)
    assert client.get("/packages", headers=bearer(theirs)).status_code == 401
    assert refresh(client, mine["refresh_token"]).status_code == 200


# --- logout -------------------------------------------------------------------------------------


def test_logout_refuses_the_access_token_on_the_next_request(
    world: World, client: httpx.Client
) -> None:
    tokens = login(client, "kz.officer")
    other = login(client, "kz.officer")  # the same officer on another workstation
    assert client.get("/packages", headers=bearer(tokens)).status_code == 200
    reply = client.post("/auth/logout", headers=bearer(tokens))
    assert reply.status_code == 200, reply.text
    logged = entry(world.vault, reply.json()["receipt"])
    assert (logged.action, logged.decision, logged.actor_user) == ("logout", "allow", "kz.officer")

    error = refused(client.get("/packages", headers=bearer(tokens)))
    assert entry(world.vault, error["receipt"]).reason == "session_revoked"
    error = refused(refresh(client, tokens["refresh_token"]))
    assert entry(world.vault, error["receipt"]).reason == "session_revoked"
    refused(client.post("/auth/logout", headers=bearer(tokens)))
    assert client.get("/packages", headers=bearer(other)).status_code == 200


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/packages", {"limit": "many"}),  # a value the schema refuses
        ("/packages", {"colour": "red"}),  # a parameter the route does not declare
        (f"/packages/{'0' * 32}", {"colour": "red"}),
    ],
    ids=["list-bad-value", "list-unknown-parameter", "show-unknown-parameter"],
)
def test_an_ended_session_is_refused_before_its_request_is_read(
    world: World, client: httpx.Client, path: str, params: dict[str, str]
) -> None:
    """The read routes look the caller up with the read, after the parameters are validated;
    a token of an ended session is still answered 401, not 422, and its refusal recorded."""
    tokens = login(client, "kz.officer")
    assert client.get(path, params=params, headers=bearer(tokens)).status_code == 422
    assert client.post("/auth/logout", headers=bearer(tokens)).status_code == 200
    error = refused(client.get(path, params=params, headers=bearer(tokens)))
    assert entry(world.vault, error["receipt"]).reason == "session_revoked"


def test_a_token_without_a_session_is_refused(world: World, client: httpx.Client) -> None:
    """A token from before sessions (no sid) could never be revoked: it is refused."""
    from jose import jwt

    tokens = login(client, "kz.officer")
    claims = claims_of(tokens["access_token"])
    del claims["sid"]
    kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
    forged = jwt.encode(
        claims, world.vault.keys.token_private_pem.decode(), algorithm="ES256", headers={"kid": kid}
    )
    error = refused(client.get("/packages", headers={"Authorization": f"Bearer {forged}"}))
    assert entry(world.vault, error["receipt"]).reason == "bad_token"


# --- timeouts (time moved through `now`) --------------------------------------------------------


def test_a_session_not_refreshed_within_the_idle_timeout_ends(tmp_path: Path) -> None:
    with vault_with(tmp_path, session_idle_seconds=600, session_max_seconds=3600) as w:
        vault = w.vault
        start = utcnow()
        tokens = vault.login("uz.officer", PASSWORD)
        # Refreshing within the idle timeout keeps it alive, from the refresh on.
        later = start + timedelta(seconds=590)
        renewed = vault.refresh(tokens.refresh_token, now=later)
        assert vault.authenticate(renewed.access_token, now=later + timedelta(seconds=590))
        # Idle for longer than the timeout: both the access token and the refresh token die.
        idle = later + timedelta(seconds=601)
        with pytest.raises(AuthenticationFailed) as caught:
            vault.authenticate(renewed.access_token, now=idle)
        assert caught.value.receipt is not None
        assert entry(vault, caught.value.receipt).reason == "session_idle"
        with pytest.raises(AuthenticationFailed) as caught:
            vault.refresh(renewed.refresh_token, now=idle)
        assert caught.value.receipt is not None
        assert entry(vault, caught.value.receipt).reason == "session_idle"


def test_a_session_ends_at_its_absolute_lifetime_however_often_refreshed(
    tmp_path: Path,
) -> None:
    with vault_with(tmp_path, session_idle_seconds=600, session_max_seconds=1500) as w:
        vault = w.vault
        start = utcnow()
        tokens = vault.login("uz.officer", PASSWORD)
        for minutes in (9, 18):
            tokens = vault.refresh(tokens.refresh_token, now=start + timedelta(minutes=minutes))
        # The idle deadline never reaches past the absolute one.
        assert tokens.refresh_expires_in <= 1500 - 18 * 60 + 1
        end = start + timedelta(seconds=1501)
        with pytest.raises(AuthenticationFailed) as caught:
            vault.refresh(tokens.refresh_token, now=end)
        assert caught.value.receipt is not None
        assert entry(vault, caught.value.receipt).reason == "session_expired"
        with pytest.raises(AuthenticationFailed):
            vault.authenticate(tokens.access_token, now=end)


# --- password change ----------------------------------------------------------------------------


def test_a_password_change_ends_every_session_of_the_user(
    world: World, client: httpx.Client
) -> None:
    here = login(client, "uz.officer")
    there = login(client, "uz.officer")
    bystander = login(client, "kz.officer")
    reply = client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(here),
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["Cache-Control"] == "no-store"
    fresh = reply.json()
    # Both earlier sessions are over, access and refresh alike ...
    for old in (here, there):
        refused(client.get("/packages", headers=bearer(old)))
        refused(refresh(client, old["refresh_token"]))
    # ... the caller carries on in a new one, and nobody else is touched.
    assert client.get("/packages", headers=bearer(fresh)).status_code == 200
    assert client.get("/packages", headers=bearer(bystander)).status_code == 200
    # Only the new password opens a session now.
    assert (
        client.post(
            "/auth/login", json={"username": "uz.officer", "password": PASSWORD}
        ).status_code
        == 401
    )
    login(client, "uz.officer", NEW_PASSWORD)

    story = [e for e in entries(world.vault) if e.seq > here["receipt"]]
    changed = next(i for i, e in enumerate(story) if e.action == "password")
    assert (story[changed].decision, story[changed].reason) == ("allow", "changed")
    # One entry per session ended (the seeded world's login of uz.officer is a third) ...
    ended = story[changed + 1 : changed + 4]
    assert {(e.action, e.reason, e.actor_user) for e in ended} == {
        ("end-session", "password_changed", "uz.officer")
    }
    for old in (here, there):
        ref = session_reference(claims_of(old["access_token"])["sid"])
        assert f"user:uz.officer {ref}" in {e.subject for e in ended}
    # ... then the caller's new session.
    started = story[changed + 4]
    assert (started.action, started.reason, started.seq) == (
        "login",
        "password_changed",
        fresh["receipt"],
    )


def test_a_wrong_current_password_is_recorded_and_counts_towards_the_lockout(
    world: World, client: httpx.Client
) -> None:
    tokens = login(client, "tj.officer")
    body = {"current_password": WRONG, "new_password": NEW_PASSWORD}
    for _ in range(world.settings.login_failures_per_user):
        error = refused(client.post("/auth/password", json=body, headers=bearer(tokens)), 403)
        denied = entry(world.vault, error["receipt"])
        assert (denied.action, denied.decision, denied.reason) == (
            "password",
            "deny",
            "bad_credentials",
        )
    # Locked out like failed logins: even the right password is refused unchecked now ...
    body["current_password"] = PASSWORD
    locked = client.post("/auth/password", json=body, headers=bearer(tokens))
    assert locked.status_code == 429, locked.text
    assert int(locked.headers["Retry-After"]) >= 1
    # ... and so is logging in: a stolen session can't be used to guess the password.
    assert (
        client.post(
            "/auth/login", json={"username": "tj.officer", "password": PASSWORD}
        ).status_code
        == 429
    )


@pytest.mark.parametrize(
    ("new", "why", "reason"),
    [
        # The length is in the schema, so the API refuses it before the operation runs.
        ("short", "new_password", "invalid_input"),
        (PASSWORD, "differ", "invalid_password"),
    ],
    ids=["too-short", "same"],
)
def test_an_unacceptable_new_password_is_refused_and_nothing_changes(
    world: World, client: httpx.Client, new: str, why: str, reason: str
) -> None:
    tokens = login(client, "kz.interior")
    reply = client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": new},
        headers=bearer(tokens),
    )
    error = refused(reply, 422)
    assert why in error["message"]
    recorded = entry(world.vault, error["receipt"])
    assert (recorded.actor_user, recorded.reason) == ("kz.interior", reason)
    assert client.get("/packages", headers=bearer(tokens)).status_code == 200
    login(client, "kz.interior", PASSWORD)


# --- nothing secret at rest ---------------------------------------------------------------------


def test_no_token_or_password_is_in_the_ledger_or_the_database(
    world: World, client: httpx.Client
) -> None:
    secrets_seen: list[str] = [PASSWORD, NEW_PASSWORD, WRONG]
    first = login(client, "uz.officer")
    second = refresh(client, first["refresh_token"]).json()
    client.post(
        "/auth/password",
        json={"current_password": WRONG, "new_password": NEW_PASSWORD},
        headers=bearer(second),
    )
    third = client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(second),
    ).json()
    refresh(client, first["refresh_token"])  # a spent one (refused, recorded)
    fourth = refresh(client, third["refresh_token"]).json()
    client.post("/auth/logout", headers=bearer(fourth))
    for tokens in (first, second, third, fourth):
        secrets_seen += [
            tokens["access_token"],
            tokens["access_token"].split(".")[2],  # the signature alone
            tokens["refresh_token"],
            tokens["refresh_token"].split(".")[1],  # the secret half alone
        ]
    needles = {s.encode() for s in secrets_seen}

    ledger_bytes = b"\n".join(e.encode() for e in entries(world.vault))
    assert b"refresh" in ledger_bytes  # the scan looks at the right thing
    assert [s for s in needles if s in ledger_bytes] == []

    # Every column of every row of every table, on whichever database this runs.
    metadata = MetaData()
    metadata.reflect(world.vault.engine)
    dumped = []
    with world.vault.engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(table.select()):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        dumped.append(bytes(value))
                    elif value is not None:
                        dumped.append(str(value).encode())
    assert "usersession" in metadata.tables
    blob = b"\x00".join(dumped)
    assert [s for s in needles if s in blob] == []
    if not ON_POSTGRES:  # and the raw files (database, WAL), freed pages included
        for path in world.settings.data_dir.rglob("vault.db*"):
            raw = path.read_bytes()
            assert [s for s in needles if s in raw] == [], path


# --- two server processes -----------------------------------------------------------------------


def test_a_session_ended_through_one_server_process_is_refused_by_the_other(
    tmp_path: Path,
) -> None:
    """Sessions live in the database, not in a process: two ``blovault serve`` processes on
    one database see a logout, a rotation or a reuse at the other's very next request."""
    with vault_with(tmp_path) as w:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env["VAULT_DATA_DIR"] = str(w.settings.data_dir)
        if w.settings.database_url:
            env["VAULT_DATABASE_URL"] = w.settings.database_url
        env.update({f"VAULT_{k.upper()}": str(v) for k, v in FAST_ARGON2.items()})
        servers = []
        try:
            for name in ("a", "b"):
                servers.append(spawn(env, tmp_path / f"server-{name}.log"))
            for served in servers:
                wait_healthy(served)
            a = httpx.Client(base_url=servers[0].url, timeout=60)
            b = httpx.Client(base_url=servers[1].url, timeout=60)
            with a, b:
                tokens = login(a, "uz.officer")
                assert b.get("/packages", headers=bearer(tokens)).status_code == 200
                rotated = refresh(b, tokens["refresh_token"]).json()
                assert a.get("/packages", headers=bearer(rotated)).status_code == 200
                # the refresh token B spent is refused by A too
                assert refresh(a, tokens["refresh_token"]).status_code == 401
                assert b.get("/packages", headers=bearer(rotated)).status_code == 401

                other = login(b, "uz.officer")
                assert a.post("/auth/logout", headers=bearer(other)).status_code == 200
                assert b.get("/packages", headers=bearer(other)).status_code == 401
                assert refresh(b, other["refresh_token"]).status_code == 401
        finally:
            for served in servers:
                served.process.terminate()
            for served in servers:
                try:
                    served.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    served.process.kill()
                    served.process.wait(timeout=10)
