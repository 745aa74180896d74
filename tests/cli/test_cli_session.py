"""Sessions through the ``blovault`` command line against a live server: logout ends the
session on the server and forgets it here (even when the server can't be told), an expired
access token is renewed once with the refresh token and the rotated tokens saved, uploads renew
before they start, ``passwd`` ends every other session, and ``admin set-user`` ends sessions.

An expired access token is made by signing one, for the live session, with a past ``iat``:
no test waits for a token to expire.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, CliRunner, World, free_port
from vault.ledger.entry import Entry

LoggedIn = Callable[[str], None]
NEW_PASSWORD = "a brand new passphrase for the night shift"


def session_file(tmp_path: Path, user: str) -> Path:
    return tmp_path / "config" / user / "session.json"


def read_session(tmp_path: Path, user: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(session_file(tmp_path, user).read_text())
    return data


def write_session(tmp_path: Path, user: str, data: dict[str, Any]) -> None:
    path = session_file(tmp_path, user)
    path.write_text(json.dumps(data))
    os.chmod(path, 0o600)


def sid_of(access_token: str) -> str:
    payload = access_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sid"])


def expired_token(world: World, user: str, access_token: str) -> str:
    """A genuine token of the same session that expired half an hour ago."""
    return world.vault.tokens.issue(
        world[user].user_id, session_id=sid_of(access_token), now=int(time.time()) - 2700
    )


def entries_after(world: World, seq: int) -> list[Entry]:
    return world.vault.unscoped_entries(seq + 1)


def ledger_head(world: World) -> int:
    return world.vault.ledger_size() - 1


def status(live_server: str, access_token: str) -> int:
    headers = {"Authorization": f"Bearer {access_token}"}
    return httpx.get(f"{live_server}/packages", headers=headers, timeout=30).status_code


def test_logout_ends_the_session_on_the_server_and_forgets_it_here(
    cli: CliRunner, logged_in: LoggedIn, live_server: str, world: World, tmp_path: Path
) -> None:
    logged_in("kz.officer")
    token = read_session(tmp_path, "kz.officer")["token"]
    assert status(live_server, token) == 200
    before = ledger_head(world)
    result = cli("logout", user="kz.officer")
    assert result.code == 0, result.stderr
    assert "logged out kz.officer" in result.stderr
    assert not session_file(tmp_path, "kz.officer").exists()
    # a copy of the token left behind (another terminal, a stolen file) is dead on the server
    assert status(live_server, token) == 401
    assert ("logout", "allow", "kz.officer") in {
        (e.action, e.decision, e.actor_user) for e in entries_after(world, before)
    }
    result = cli("package", "list", user="kz.officer")
    assert result.code == 3
    assert "not logged in" in result.stderr


def test_logout_of_a_session_that_already_ended_still_forgets_it(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path
) -> None:
    logged_in("kz.officer")
    assert cli("admin", "set-user", "kz.officer", "--clearance", "SECRET").code == 2  # no change
    assert cli("admin", "set-user", "kz.officer", "--clearance", "CONFIDENTIAL").code == 0
    result = cli("logout", user="kz.officer")
    assert result.code == 0, result.stderr
    assert "warning" in result.stderr
    assert "already ended" in result.stderr
    assert not session_file(tmp_path, "kz.officer").exists()


def test_logout_with_the_server_unreachable_forgets_it_and_says_it_was_not_ended(
    cli: CliRunner, tmp_path: Path
) -> None:
    folder = session_file(tmp_path, "kz.officer").parent
    folder.mkdir(parents=True, mode=0o700)
    write_session(
        tmp_path,
        "kz.officer",
        {
            "server": f"http://127.0.0.1:{free_port()}",  # nobody listens there
            "username": "kz.officer",
            "token": "x.y.z",
            "refresh_token": "",
            "access_expires_at": 0,
        },
    )
    result = cli("logout", user="kz.officer")
    assert result.code == 7, result.stderr
    assert "NOT ended" in result.stderr
    assert not session_file(tmp_path, "kz.officer").exists()


def test_an_expired_access_token_is_renewed_once_and_the_rotated_tokens_saved(
    cli: CliRunner, logged_in: LoggedIn, live_server: str, world: World, tmp_path: Path
) -> None:
    logged_in("uz.officer")
    saved = read_session(tmp_path, "uz.officer")
    spent_refresh = saved["refresh_token"]
    write_session(
        tmp_path,
        "uz.officer",
        {**saved, "token": expired_token(world, "uz.officer", saved["token"])},
    )
    before = ledger_head(world)
    result = cli("package", "list", "--json", user="uz.officer")
    assert result.code == 0, result.stderr
    assert "warning" not in result.stderr  # the rewritten file is still 0600
    renewed = read_session(tmp_path, "uz.officer")
    assert renewed["refresh_token"] not in ("", spent_refresh)
    assert sid_of(renewed["token"]) == sid_of(saved["token"])  # the same session goes on
    assert renewed["access_expires_at"] > time.time()
    assert os.stat(session_file(tmp_path, "uz.officer")).st_mode & 0o777 == 0o600
    story = [(e.action, e.decision, e.reason) for e in entries_after(world, before)]
    assert story[:3] == [
        ("authenticate", "deny", "bad_token"),
        ("refresh", "allow", "ok"),
        ("list", "allow", "ok"),
    ]
    # The refresh token the CLI spent, presented again, is taken as stolen: session over.
    reply = httpx.post(
        f"{live_server}/auth/refresh", json={"refresh_token": spent_refresh}, timeout=30
    )
    assert reply.status_code == 401
    result = cli("package", "list", user="uz.officer")
    assert result.code == 3
    assert "run 'blovault login'" in result.stderr


def test_an_upload_renews_an_expiring_token_before_it_starts(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> None:
    """The body of an upload streams from disk and can't be sent twice, so the renewal
    can't wait for a 401."""
    logged_in("uz.officer")
    saved = read_session(tmp_path, "uz.officer")
    write_session(
        tmp_path,
        "uz.officer",
        {
            **saved,
            "token": expired_token(world, "uz.officer", saved["token"]),
            "access_expires_at": time.time() - 5,
        },
    )
    report = tmp_path / "report.txt"
    report.write_bytes(b"15 kg heroin at Oybek")
    before = ledger_head(world)
    result = cli("package", "upload", report, "--title", "Seizure", "--json", user="uz.officer")
    assert result.code == 0, result.stderr
    assert read_session(tmp_path, "uz.officer")["refresh_token"] != saved["refresh_token"]
    story = [(e.action, e.decision) for e in entries_after(world, before)]
    assert story[:2] == [("refresh", "allow"), ("upload", "allow")]


def test_passwd_ends_every_other_session_and_this_one_goes_on(
    cli: CliRunner, logged_in: LoggedIn, live_server: str, tmp_path: Path
) -> None:
    logged_in("uz.officer")
    elsewhere = httpx.post(
        f"{live_server}/auth/login",
        json={"username": "uz.officer", "password": PASSWORD},
        timeout=30,
    ).json()["access_token"]
    wrong = cli(
        "passwd", "--password-stdin", user="uz.officer", stdin=f"wrong guess!!\n{NEW_PASSWORD}\n"
    )
    assert wrong.code == 5, wrong.stderr
    assert "current password is wrong" in wrong.stderr
    assert status(live_server, elsewhere) == 200  # a failed change ends nothing

    result = cli(
        "passwd", "--password-stdin", user="uz.officer", stdin=f"{PASSWORD}\n{NEW_PASSWORD}\n"
    )
    assert result.code == 0, result.stderr
    assert "password changed" in result.stderr
    assert status(live_server, elsewhere) == 401
    assert cli("package", "list", user="uz.officer").code == 0  # the new session was saved
    args = ("login", "--server", live_server, "--username", "uz.officer", "--password-stdin")
    assert cli(*args, user="uz.officer", stdin=PASSWORD + "\n").code == 3
    assert cli(*args, user="uz.officer", stdin=NEW_PASSWORD + "\n").code == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("--disable",), "user_disabled"),
        (("--role", "supervisor"), "role_changed"),
        (("--clearance", "RESTRICTED"), "clearance_changed"),
    ],
    ids=["disable", "role", "clearance"],
)
def test_admin_set_user_ends_every_session_of_the_user(
    cli: CliRunner,
    logged_in: LoggedIn,
    live_server: str,
    world: World,
    tmp_path: Path,
    change: tuple[str, ...],
    reason: str,
) -> None:
    logged_in("kz.officer")
    token = read_session(tmp_path, "kz.officer")["token"]
    assert status(live_server, token) == 200
    before = ledger_head(world)
    result = cli("admin", "set-user", "kz.officer", *change)
    assert result.code == 0, result.stderr
    ended = [e for e in entries_after(world, before) if e.action == "end-session"]
    # The seeded login and the CLI's: two sessions, each ended on the record.
    assert len(ended) == 2
    assert {(e.reason, e.actor_user.startswith("local:")) for e in ended} == {(reason, True)}
    assert all(e.subject.startswith("user:kz.officer session:") for e in ended)
    assert status(live_server, token) == 401
    # and the CLI can't renew its way back in
    result = cli("package", "list", user="kz.officer")
    assert result.code == 3, result.stderr


def test_the_cli_warns_about_a_session_file_others_can_read(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path
) -> None:
    logged_in("kz.officer")
    os.chmod(session_file(tmp_path, "kz.officer"), 0o644)
    result = cli("package", "list", user="kz.officer")
    assert result.code == 0, result.stderr
    assert "warning" in result.stderr
    assert f"chmod 600 {session_file(tmp_path, 'kz.officer')}" in result.stderr
