"""Access control end to end through ``blovault`` against a live server.

H2 onward release and its request/approve path, four-eyes, H3 acknowledgement, timed releases,
revocation, ``authz explain`` and disabling a user, each as the officers of the seeded world
would run them. Exit codes: 2 invalid input, 3 authentication, 4 not found, 5 access denied,
8 conflict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from blo_vault.cli import main as cli_main
from tests.conftest import PASSWORD, CliResult, CliRunner, World
from vault.models import Classification, Role
from vault.service import local_operator

LoggedIn = Callable[[str], None]
CONTENT = b"42 kg of cannabis resin, truck KZ 123 ABC, Zhibek Zholy crossing\n"


# --- helpers ------------------------------------------------------------------------------------


def ok_json(result: CliResult) -> Any:
    assert result.code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def assert_one_line_error(result: CliResult, code: int) -> None:
    assert result.code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")


def refused(result: CliResult, code: int) -> str:
    """Assert a one-line ``error:`` refusal with exit ``code``; return the message."""
    assert_one_line_error(result, code)
    return result.stderr.strip()


def write_source(tmp_path: Path, name: str = "report.txt", data: bytes = CONTENT) -> Path:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def upload(
    cli: CliRunner,
    user: str,
    path: Path,
    *,
    classification: str = "UNCLASSIFIED",
    handling: str = "H0",
    note: str = "",
) -> str:
    args: list[str | Path] = [
        "package",
        "upload",
        path,
        "--title",
        "Seizure at Zhibek Zholy",
        "--classification",
        classification,
        "--handling",
        handling,
        "--json",
    ]
    if note:
        args += ["--handling-note", note]
    package_id: str = ok_json(cli(*args, user=user))["id"]
    return package_id


def release(cli: CliRunner, user: str, package_id: str, *args: str) -> dict[str, Any]:
    result = cli("package", "release", package_id, *args, "--json", user=user)
    made: dict[str, Any] = ok_json(result)["release"]
    return made


def download(cli: CliRunner, user: str, package_id: str, dest: Path) -> CliResult:
    return cli("package", "download", package_id, "-o", dest, "--force", "--json", user=user)


def downloaded_ok(
    cli: CliRunner, user: str, package_id: str, dest: Path, name: str = "report.txt"
) -> None:
    result = download(cli, user, package_id, dest)
    assert result.code == 0, result.stderr
    assert (dest / name).read_bytes() == CONTENT


def ledger(world: World, **filters: str) -> list[dict[str, Any]]:
    """What the ledger recorded, every entry opened (the server-side operator's unscoped view,
    not a user's), filtered like ``ledger show`` (actor, package, action, decision), as dicts."""
    fields = {
        "actor": "actor_user",
        "package": "package",
        "action": "action",
        "decision": "decision",
    }
    return [
        entry.__dict__
        for entry in world.vault.unscoped_entries()
        if all(getattr(entry, fields[k]) == v for k, v in filters.items())
    ]


def iso(moment: datetime) -> str:
    return moment.isoformat()


# --- H2 -----------------------------------------------------------------------------------------


def test_h2_onward_release_needs_the_originators_consent(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path, world: World
) -> None:
    for user in ("uz.officer", "uz.supervisor", "kz.officer", "tj.officer"):
        logged_in(user)
    # RESTRICTED is below the four-eyes threshold, so the first release is direct.
    package_id = upload(
        cli, "uz.officer", write_source(tmp_path), classification="RESTRICTED", handling="H2"
    )
    assert release(cli, "uz.officer", package_id, "--country", "KZ")["status"] == "active"
    downloaded_ok(cli, "kz.officer", package_id, tmp_path / "kz")

    # The recipient may not pass it on ...
    onward = cli("package", "release", package_id, "--country", "TJ", user="kz.officer")
    message = refused(onward, 5)
    assert "H2" in message
    assert "request-release" in message
    [entry] = [e for e in ledger(world, package=package_id, action="release", decision="deny")]
    assert (entry["actor_user"], entry["reason"]) == ("kz.officer", "h2_onward_release")
    refused(cli("package", "show", package_id, user="tj.officer"), 4)

    # ... but may ask the originating agency, whose supervisor decides.
    asked = ok_json(
        cli(
            "package", "request-release", package_id, "--country", "TJ", "--json", user="kz.officer"
        )
    )
    request_id = asked["id"]
    assert (asked["release"]["status"], asked["release"]["kind"]) == ("pending", "onward-request")
    refused(cli("package", "show", package_id, user="tj.officer"), 4)
    # Neither the requester nor an originating officer who is not a supervisor may approve.
    refused(cli("package", "approve", request_id, user="kz.officer"), 5)
    refused(cli("package", "approve", request_id, user="uz.officer"), 5)
    # The third country can't even learn the request exists.
    refused(cli("package", "approve", request_id, user="tj.officer"), 4)

    approved = ok_json(cli("package", "approve", request_id, "--json", user="uz.supervisor"))
    assert approved["release"]["status"] == "active"
    downloaded_ok(cli, "tj.officer", package_id, tmp_path / "tj")
    # H2 binds the new recipient too.
    onward = cli("package", "release", package_id, "--country", "KG", user="tj.officer")
    message = refused(onward, 5)
    assert "H2" in message


# --- four-eyes ----------------------------------------------------------------------------------


def test_four_eyes_confidential_release_waits_for_a_supervisor(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> None:
    for user in ("uz.officer", "uz.supervisor", "kz.officer", "tj.officer"):
        logged_in(user)
    package_id = upload(cli, "uz.officer", write_source(tmp_path), classification="CONFIDENTIAL")
    pending = release(cli, "uz.officer", package_id, "--country", "KZ")
    assert (pending["status"], pending["kind"]) == ("pending", "four-eyes")
    assert pending["in_force"] is False

    refused(cli("package", "show", package_id, user="kz.officer"), 4)
    refused(download(cli, "kz.officer", package_id, tmp_path / "kz"), 4)
    assert not (tmp_path / "kz" / "report.txt").exists()
    refused(cli("package", "approve", pending["id"], user="uz.officer"), 5)
    refused(cli("package", "approve", pending["id"], user="kz.officer"), 4)

    approved = ok_json(cli("package", "approve", pending["id"], "--json", user="uz.supervisor"))
    assert approved["release"]["status"] == "active"
    assert approved["release"]["decided_by"] == world["uz.supervisor"].user_id
    downloaded_ok(cli, "kz.officer", package_id, tmp_path / "kz")
    refused(cli("package", "approve", pending["id"], user="uz.supervisor"), 8)  # not pending

    # Rejected is final: the recipient never gets it and it can't be approved afterwards.
    to_tj = release(cli, "uz.officer", package_id, "--country", "TJ")
    assert to_tj["status"] == "pending"
    rejected = ok_json(cli("package", "reject", to_tj["id"], "--json", user="uz.supervisor"))
    assert rejected["release"]["status"] == "rejected"
    refused(cli("package", "show", package_id, user="tj.officer"), 4)
    refused(cli("package", "approve", to_tj["id"], user="uz.supervisor"), 8)


def test_four_eyes_a_supervisor_cannot_approve_their_own_release(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> None:
    world.vault.add_user(
        local_operator(),
        username="uz.supervisor2",
        agency="UZ-CUSTOMS",
        role=Role.SUPERVISOR,
        password=PASSWORD,
        clearance=Classification.SECRET,
    )
    for user in ("uz.supervisor", "uz.supervisor2", "tj.officer"):
        logged_in(user)
    package_id = upload(cli, "uz.supervisor", write_source(tmp_path), classification="SECRET")
    pending = release(cli, "uz.supervisor", package_id, "--country", "TJ")
    assert pending["status"] == "pending"

    message = refused(cli("package", "approve", pending["id"], user="uz.supervisor"), 5)
    assert "four-eyes" in message
    refused(cli("package", "reject", pending["id"], user="uz.supervisor"), 5)
    denials = ledger(world, package=package_id, action="approve", decision="deny")
    assert [(e["actor_user"], e["reason"], e["release"]) for e in denials] == [
        ("uz.supervisor", "four_eyes_same_person", pending["id"])
    ] * 2
    refused(cli("package", "show", package_id, user="tj.officer"), 4)

    approved = ok_json(cli("package", "approve", pending["id"], "--json", user="uz.supervisor2"))
    assert approved["release"]["status"] == "active"
    downloaded_ok(cli, "tj.officer", package_id, tmp_path / "tj")


# --- H3 -----------------------------------------------------------------------------------------


def test_h3_download_needs_an_acknowledgement_first(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path, world: World
) -> None:
    for user in ("uz.officer", "kz.officer", "kz.interior"):
        logged_in(user)
    note = "Not for use in court; no onward sharing"
    package_id = upload(cli, "uz.officer", write_source(tmp_path), handling="H3", note=note)
    release(cli, "uz.officer", package_id, "--country", "KZ")
    downloaded_ok(cli, "uz.officer", package_id, tmp_path / "uz")  # the originator needs none

    message = refused(download(cli, "kz.officer", package_id, tmp_path / "kz"), 5)
    assert "H3" in message
    assert "acknowledge" in message
    assert not (tmp_path / "kz" / "report.txt").exists()
    shown = ok_json(cli("package", "show", package_id, "--json", user="kz.officer"))
    assert shown["handling_note"] == note  # readable, so the restrictions can be read first

    acked = cli("package", "acknowledge", package_id, user="kz.officer")
    assert acked.code == 0, acked.stderr
    assert f"restrictions: {note}" in acked.stdout
    downloaded_ok(cli, "kz.officer", package_id, tmp_path / "kz")
    # The acknowledgement is personal: a colleague in the same country still has to give one.
    refused(download(cli, "kz.interior", package_id, tmp_path / "kzi"), 5)

    [entry] = ledger(world, package=package_id, action="acknowledge")
    assert (entry["actor_user"], entry["decision"], entry["reason"], entry["handling"]) == (
        "kz.officer",
        "allow",
        "ok",
        "H3",
    )
    downloads = ledger(world, package=package_id, action="download", actor="kz.officer")
    assert [(e["decision"], e["reason"]) for e in downloads] == [
        ("deny", "h3_not_acknowledged"),
        ("allow", "ok"),
    ]
    assert downloads[0]["seq"] < entry["seq"] < downloads[1]["seq"]


def test_long_refusals_are_one_line(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_main.err, "_width", 80)  # as for a log file or an 80-column tty
    for user in ("uz.officer", "kz.officer"):
        logged_in(user)
    h2 = upload(cli, "uz.officer", write_source(tmp_path), handling="H2")
    h3 = upload(cli, "uz.officer", write_source(tmp_path), handling="H3")
    for package_id in (h2, h3):
        release(cli, "uz.officer", package_id, "--country", "KZ")
    assert_one_line_error(download(cli, "kz.officer", h3, tmp_path / "kz"), 5)
    assert_one_line_error(cli("package", "release", h2, "--country", "TJ", user="kz.officer"), 5)


# --- timed releases and revocation ------------------------------------------------------------


def test_release_window_expires_and_starts_on_time(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path
) -> None:
    for user in ("uz.officer", "kz.officer", "kz.interior", "tj.officer"):
        logged_in(user)
    package_id = upload(cli, "uz.officer", write_source(tmp_path))
    switch = datetime.now(UTC) + timedelta(seconds=4)
    to_kz = release(cli, "uz.officer", package_id, "--country", "KZ", "--expires", iso(switch))
    to_tj = release(
        cli,
        "uz.officer",
        package_id,
        "--country",
        "TJ",
        "--not-before",
        iso(switch.astimezone(timezone(timedelta(hours=5)))),
    )  # any zone
    assert (to_kz["in_force"], to_tj["in_force"]) == (True, False)

    ok_json(cli("package", "show", package_id, "--json", user="kz.officer"))
    refused(cli("package", "show", package_id, user="tj.officer"), 4)
    assert datetime.now(UTC) < switch, "too slow to observe the window before it switched"

    time.sleep(max(0.0, (switch - datetime.now(UTC)).total_seconds()) + 0.3)
    refused(cli("package", "show", package_id, user="kz.officer"), 4)
    refused(download(cli, "kz.officer", package_id, tmp_path / "kz"), 4)
    downloaded_ok(cli, "tj.officer", package_id, tmp_path / "tj")

    # A window that has already ended is refused as invalid, and grants nothing.
    past = datetime.now(UTC) - timedelta(hours=1)
    refused(
        cli(
            "package",
            "release",
            package_id,
            "--country",
            "KZ",
            "--agency",
            "KZ-INTERIOR",
            "--expires",
            iso(past),
            user="uz.officer",
        ),
        2,
    )
    refused(cli("package", "show", package_id, user="kz.interior"), 4)

    # Windows that can never open, and times without a zone, are refused as invalid.
    soon = datetime.now(UTC) + timedelta(hours=1)
    refused(
        cli(
            "package",
            "release",
            package_id,
            "--country",
            "KZ",
            "--not-before",
            iso(soon),
            "--expires",
            iso(soon - timedelta(minutes=1)),
            user="uz.officer",
        ),
        2,
    )
    refused(
        cli(
            "package",
            "release",
            package_id,
            "--country",
            "KZ",
            "--expires",
            "2030-01-01T00:00:00",
            user="uz.officer",
        ),
        2,
    )


def test_revocation_takes_effect_on_the_next_request(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path
) -> None:
    for user in ("uz.officer", "kz.officer"):
        logged_in(user)
    package_id = upload(cli, "uz.officer", write_source(tmp_path))
    granted = release(cli, "uz.officer", package_id, "--country", "KZ")
    downloaded_ok(cli, "kz.officer", package_id, tmp_path / "kz")
    # A recipient can't withdraw the originator's release.
    refused(cli("package", "revoke", package_id, "--release", granted["id"], user="kz.officer"), 5)

    revoked = ok_json(
        cli(
            "package", "revoke", package_id, "--release", granted["id"], "--json", user="uz.officer"
        )
    )
    assert (revoked["release"]["status"], revoked["release"]["in_force"]) == ("revoked", False)
    refused(cli("package", "show", package_id, user="kz.officer"), 4)
    refused(download(cli, "kz.officer", package_id, tmp_path / "kz2"), 4)
    listed = ok_json(cli("package", "list", "--json", user="kz.officer"))
    assert package_id not in [p["id"] for p in listed["items"]]
    refused(cli("package", "revoke", package_id, "--release", granted["id"], user="uz.officer"), 8)


# --- authz explain ------------------------------------------------------------------------------


def test_authz_explain_for_auditors_and_not_for_officers(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> None:
    for user in ("uz.officer", "uz.auditor"):
        logged_in(user)
    package_id = upload(cli, "uz.officer", write_source(tmp_path), classification="RESTRICTED")
    release(cli, "uz.officer", package_id, "--country", "KZ")
    policy_hash = world.vault.authz.policy_hash

    full = ok_json(
        cli(
            "authz",
            "explain",
            "--user",
            "kz.officer",
            "--package",
            package_id,
            "--action",
            "download",
            "--json",
            user="uz.auditor",
        )
    )
    assert (full["allowed"], full["relation"], full["policy_hash"]) == (
        True,
        "released-country",
        policy_hash,
    )
    facts = full["facts"]
    assert facts["relations"] == ["none", "released-country"]
    assert (facts["role"], facts["country"], facts["cleared"]) == ("officer", "KZ", True)
    assert (facts["classification"], facts["handling"]) == ("RESTRICTED", "H0")
    assert facts["originating_agency"] == "UZ-CUSTOMS"
    assert ["officer", "released-country", "*", "*", "*", "download", "allow"] in full["rules"]
    assert len(full["grants"]) == 1

    text = cli(
        "authz",
        "explain",
        "--user",
        "tj.officer",
        "--package",
        package_id,
        "--action",
        "read",
        user="uz.auditor",
    )
    assert text.code == 0, text.stderr
    assert "DENY" in text.stdout
    assert f"policy version {policy_hash}" in text.stdout
    assert "relations: ['none']" in text.stdout
    assert "deciding relation: (none)" in text.stdout

    # An officer may not ask about someone else ...
    message = refused(
        cli(
            "authz",
            "explain",
            "--user",
            "kz.officer",
            "--package",
            package_id,
            "--action",
            "download",
            user="uz.officer",
        ),
        5,
    )
    assert "auditors and admins" in message
    [entry] = ledger(world, action="explain", decision="deny")
    assert (entry["actor_user"], entry["subject"]) == ("uz.officer", "user:kz.officer")
    # ... only about themselves, and then gets the bare answer without facts or rules.
    own = ok_json(
        cli(
            "authz",
            "explain",
            "--user",
            "uz.officer",
            "--package",
            package_id,
            "--action",
            "release",
            "--json",
            user="uz.officer",
        )
    )
    assert own["allowed"] is True
    assert own.get("facts") is None
    assert own.get("rules") is None


# --- disabling a user ---------------------------------------------------------------------------


def test_disabling_a_user_invalidates_their_existing_token(
    cli: CliRunner, logged_in: LoggedIn, live_server: str, world: World
) -> None:
    logged_in("kz.officer")
    assert cli("package", "list", user="kz.officer").code == 0

    changed = cli("admin", "set-user", "kz.officer", "--disable", "--json")
    assert ok_json(changed)["disabled"] is True
    message = refused(cli("package", "list", user="kz.officer"), 3)
    assert "invalid or expired token" in message
    [entry] = [e for e in ledger(world, action="authenticate") if e["reason"] == "user_disabled"]
    assert (entry["actor_user"], entry["decision"]) == ("kz.officer", "deny")
    # Logging in again doesn't help while disabled ...
    again = cli(
        "login",
        "--server",
        live_server,
        "--username",
        "kz.officer",
        "--password-stdin",
        user="kz.officer",
        stdin=PASSWORD + "\n",
    )
    refused(again, 3)
    # ... and re-enabling restores access.
    enabled = cli("admin", "set-user", "kz.officer", "--enable", "--json")
    assert ok_json(enabled)["disabled"] is False
    logged_in("kz.officer")
    assert cli("package", "list", user="kz.officer").code == 0


def test_a_download_reads_the_package_once(
    cli: CliRunner, logged_in: Callable[[str], None], tmp_path: Path, world: World
) -> None:
    """One download is one read of the package's details and one entry per file: the ledger
    must say what happened, not what the client happened to ask twice."""
    logged_in("uz.officer")
    package_id = upload(cli, "uz.officer", write_source(tmp_path))
    reads_before = len(ledger(world, package=package_id, action="read"))
    downloaded_ok(cli, "uz.officer", package_id, tmp_path / "out")
    assert len(ledger(world, package=package_id, action="read")) == reads_before + 1
    assert len(ledger(world, package=package_id, action="download")) == 1


# --- seizure statistics (issue 16) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "code"), [("uz.officer", 0), ("uz.supervisor", 0), ("uz.auditor", 5), ("uz.admin", 5)]
)
def test_stats_commands_follow_the_listing(
    cli: CliRunner, logged_in: LoggedIn, user: str, code: int
) -> None:
    """Whoever may list packages may read statistics over them; auditors and admins, who
    never see package contents, are refused (exit 5) and the refusal recorded."""
    logged_in(user)
    for args in (["stats", "seizures", "--json"], ["stats", "before-after", "--json"]):
        result = cli(*args, user=user)
        if code:
            assert "may not read statistics" in refused(result, code)
        else:
            assert ok_json(result) == []


def test_keys_commands_follow_roles_and_agencies(
    cli: CliRunner, logged_in: LoggedIn, world: World
) -> None:
    """Issue 13: officers register and revoke their own keys; an auditor reads the key history
    of their own agency's officers only; everyone else's is hidden like a missing user."""
    for user in ("uz.officer", "uz.auditor", "kz.officer"):
        logged_in(user)
        ok_json(cli("keys", "init", "--no-passphrase", "--json", user=user))
    mine = ok_json(cli("keys", "register", "--json", user="uz.officer"))
    assert "role may not" in refused(cli("keys", "register", user="uz.auditor"), 5)
    audited = ok_json(cli("keys", "audit", "--user", "uz.officer", "--json", user="uz.auditor"))
    assert [e["key_id"] for e in audited["entries"]] == [mine["id"]]
    assert all(e["created_here"] is None for e in audited["entries"])
    assert "not found" in refused(
        cli("keys", "audit", "--user", "uz.officer", user="kz.officer"), 4
    )
    assert "not found" in refused(cli("keys", "revoke", mine["id"], user="kz.officer"), 4)
    own = ok_json(cli("keys", "audit", "--json", user="uz.officer"))
    assert [e["flag"] for e in own["entries"]] == [""]
    ok_json(cli("keys", "revoke", "--json", user="uz.officer"))
    assert "already revoked" in refused(cli("keys", "revoke", mine["id"], user="uz.officer"), 8)


def test_ledger_export_remote_is_the_callers_scoped_export(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> None:
    """``ledger export --remote --scoped`` is GET /ledger/export as the logged-in user: an
    auditor gets their country's openings, an admin none about a package (both verifiable
    offline); an officer is refused, and no file is left."""
    for user in ("uz.officer", "uz.auditor", "uz.admin"):
        logged_in(user)
    package_id = upload(cli, "uz.officer", write_source(tmp_path), classification="RESTRICTED")
    release(cli, "uz.officer", package_id, "--country", "KZ")
    vkey = world.vault.ledger_vkey
    for user, sees in (("uz.auditor", True), ("uz.admin", False)):
        path = tmp_path / f"{user}.json"
        args = ("ledger", "export", "-o", path, "--remote", "--scoped", "--json")
        done = ok_json(cli(*args, user=user))
        assert (done["file"], done["vkey"]) == (str(path), vkey)
        document = json.loads(path.read_text("utf-8"))
        assert (package_id in path.read_text("utf-8")) == sees
        assert document["openings"]
        verified = cli("ledger", "verify", "--export", path, "--vkey", vkey)
        assert verified.code == 0, verified.stdout + verified.stderr
    path = tmp_path / "officer.json"
    refused(cli("ledger", "export", "-o", path, "--remote", "--scoped", user="uz.officer"), 5)
    assert not path.exists()
    assert not path.with_name(f".{path.name}.part").exists()
    [entry] = ledger(world, action="ledger", decision="deny")
    assert (entry["actor_user"], entry["subject"]) == ("uz.officer", "export:scoped")
