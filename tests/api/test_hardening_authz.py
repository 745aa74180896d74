"""Issue 17, second pass, the authorisation side: explain's visibility, uploads above one's
clearance, rules that would hand content to admins or auditors, refusals the ledger missed,
and usernames of failed logins.

Everything runs against the real app (in-process TestClient) over a seeded vault, on SQLite or,
with ``VAULT_TEST_BACKEND=postgres``, on PostgreSQL.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from tests.conftest import FAST_ARGON2, PASSWORD, CliRunner, World
from vault.config import default_policy_dir, load_settings
from vault.errors import AccessDenied, AuthenticationFailed, ConfigError
from vault.ledger.entry import Entry
from vault.models import Classification, PolicyRule, Role, utcnow
from vault.schemas import NewPackage
from vault.service import IncomingFile, Principal, Vault, local_operator

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette: the httpx-backed TestClient is deprecated
    from fastapi.testclient import TestClient

from blo_vault.api.app import create_app

Headers = dict[str, str]

# Users beyond the seeded world: auditors and admins of other countries than the originator's.
EXTRA_USERS = {
    "kz.auditor": ("KZ-BORDER", Role.AUDITOR, Classification.SECRET),
    "kz.admin": ("KZ-BORDER", Role.ADMIN, Classification.SECRET),
    "tj.auditor": ("TJ-CUSTOMS", Role.AUDITOR, Classification.SECRET),
    "tj.admin": ("TJ-CUSTOMS", Role.ADMIN, Classification.SECRET),
    "uz.low": ("UZ-CUSTOMS", Role.OFFICER, Classification.RESTRICTED),
    "uz.content.admin": ("UZ-CUSTOMS", Role.ADMIN, Classification.SECRET),
}


@dataclass
class Api:
    """The seeded world behind its HTTP API, with a token per user."""

    world: World
    client: TestClient
    headers: dict[str, Headers]

    @property
    def vault(self) -> Vault:
        return self.world.vault

    def user(self, name: str) -> Principal:
        return self.world.users[name]


@pytest.fixture
def api(world: World) -> Iterator[Api]:
    op = local_operator()
    for name, (agency, role, clearance) in EXTRA_USERS.items():
        info = world.vault.add_user(
            op, username=name, agency=agency, role=role, password=PASSWORD, clearance=clearance
        )
        assert info.username == name
        world.users[name] = world.vault.authenticate(world.vault.login(name, PASSWORD).access_token)
    headers = {
        name: {
            "Authorization": "Bearer "
            + world.vault.tokens.issue(p.user_id, session_id=p.session_id)
        }
        for name, p in world.users.items()
    }
    with TestClient(create_app(vault=world.vault)) as client:
        yield Api(world, client, headers)


def upload(
    vault: Vault,
    who: Principal,
    *,
    classification: Classification = Classification.RESTRICTED,
    handling: str = "H0",
) -> tuple[str, str]:
    """A small package through the service; returns (package id, file id)."""
    meta = NewPackage(
        title="Seizure at Oybek",
        classification=classification,
        handling=handling,  # type: ignore[arg-type]
        handling_note="Not for court use" if handling == "H3" else "",
    )
    result = vault.upload(who, meta, [IncomingFile("note.txt", io.BytesIO(b"small"))])
    return result.package.id, result.package.files[0].id


def entry_at(vault: Vault, seq: int) -> Entry:
    found = vault.unscoped_entries(seq, seq + 1)
    assert found, f"no ledger entry #{seq}"
    return found[0]


def all_entries(vault: Vault) -> list[Entry]:
    return vault.unscoped_entries()


def refusal(reply: Any, status: int) -> dict[str, Any]:
    """The one error shape, with a receipt in body and header."""
    assert reply.status_code == status, reply.text
    error: dict[str, Any] = reply.json()["error"]
    assert isinstance(error["receipt"], int), f"no receipt: {reply.text}"
    assert reply.headers["X-Vault-Receipt"] == str(error["receipt"])
    return error


def explain(api: Api, caller: str, user: str, package: str, action: str = "read") -> Any:
    return api.client.get(
        "/authz/explain",
        params={"user": user, "package": package, "action": action},
        headers=api.headers[caller],
    )


# --- 1. explain obeys the audit view's visibility ---------------------------------------------


def test_explain_answers_404_like_a_random_id_outside_the_audit_scope(api: Api) -> None:
    """A UZ package not released anywhere: KZ and TJ auditors and admins may not audit it, so
    explain must look exactly like a missing id to them (and be recorded as a refusal)."""
    package, _ = upload(api.vault, api.user("uz.officer"))
    for caller in ("kz.auditor", "kz.admin", "tj.auditor", "tj.admin"):
        audit = api.client.get(f"/packages/{package}/audit", headers=api.headers[caller])
        assert audit.status_code == 404, (caller, audit.text)
        missing = refusal(explain(api, caller, "uz.officer", secrets.token_hex(16)), 404)
        hidden = refusal(explain(api, caller, "uz.officer", package), 404)
        assert (hidden["code"], hidden["message"]) == (missing["code"], missing["message"])
        assert (hidden["code"], hidden["message"]) == ("not_found", "package not found")
        recorded = entry_at(api.vault, hidden["receipt"])
        assert (recorded.actor_user, recorded.action, recorded.decision) == (
            caller,
            "explain",
            "deny",
        )
        assert recorded.package == package
        # An unknown user makes no difference: the package is checked first.
        other = refusal(explain(api, caller, "no.such.user", package), 404)
        assert (other["code"], other["message"]) == (missing["code"], missing["message"])


def test_explain_follows_the_audit_scope_when_the_package_is_released(api: Api) -> None:
    """Released to KZ: the KZ auditor may audit, so explain answers; the KZ admin may not
    (admins audit their own country's packages only), so explain is 404 for them."""
    package, _ = upload(api.vault, api.user("uz.officer"))
    api.vault.release(api.user("uz.officer"), package, country="KZ")
    for caller, status in (("kz.auditor", 200), ("kz.admin", 404), ("uz.admin", 200)):
        audit = api.client.get(f"/packages/{package}/audit", headers=api.headers[caller])
        assert audit.status_code == status, (caller, audit.text)
        reply = explain(api, caller, "kz.officer", package, "download")
        assert reply.status_code == status, (caller, reply.text)
        if status == 200:
            body = reply.json()
            assert body["allowed"] is True
            recorded = entry_at(api.vault, int(reply.headers["X-Vault-Receipt"]))
            assert (recorded.actor_user, recorded.action, recorded.decision) == (
                caller,
                "explain",
                "allow",
            )


def test_explain_tells_another_countrys_auditor_nothing_of_a_third_countrys_users(
    api: Api,
) -> None:
    """Released to KZ and TJ: the KZ auditor's audit view shows only the release to KZ, so
    explain must not answer about TJ's officer either (it would tell where else the package
    went, and that the user exists): the same 404 as for no such user. About KZ's own officer
    it answers, with KZ's release only; the originator's auditor may ask about anyone."""
    uz = api.user("uz.officer")
    package, _ = upload(api.vault, uz)
    to_kz = api.vault.release(uz, package, country="KZ").release.id
    api.vault.release(uz, package, country="TJ")
    view = api.client.get(f"/packages/{package}/audit", headers=api.headers["kz.auditor"])
    assert [r["country"] for r in view.json()["releases"]] == ["KZ"]
    hidden = refusal(explain(api, "kz.auditor", "tj.officer", package), 404)
    missing = refusal(explain(api, "kz.auditor", "no.such.user", package), 404)
    assert (hidden["code"], hidden["message"]) == (
        missing["code"],
        missing["message"].replace("no.such.user", "tj.officer"),
    )
    recorded = entry_at(api.vault, hidden["receipt"])
    assert (recorded.actor_user, recorded.action, recorded.decision) == (
        "kz.auditor",
        "explain",
        "deny",
    )
    own = explain(api, "kz.auditor", "kz.officer", package)
    assert own.status_code == 200, own.text
    assert own.json()["grants"] == [to_kz]
    origin = explain(api, "uz.auditor", "tj.officer", package)
    assert origin.status_code == 200, origin.text
    assert origin.json()["relation"] == "released-country"


def test_explain_about_oneself_keeps_the_read_visibility(api: Api) -> None:
    package, _ = upload(api.vault, api.user("uz.officer"))
    assert explain(api, "uz.officer", "uz.officer", package).json()["allowed"] is True
    hidden = refusal(explain(api, "kz.officer", "kz.officer", package), 404)
    missing = refusal(explain(api, "kz.officer", "kz.officer", secrets.token_hex(16)), 404)
    assert (hidden["code"], hidden["message"]) == (missing["code"], missing["message"])
    assert entry_at(api.vault, hidden["receipt"]).action == "explain"


# --- 2b. release times a page can show ----------------------------------------------------------


@pytest.mark.parametrize(
    "times",
    [
        {"expires_at": "9999-12-31T23:59:59Z"},  # past year 9999 in Tashkent: pages failed
        {"expires_at": "9999-12-31T23:59:59-05:00"},  # off the calendar in UTC: the INSERT failed
        {"not_before": "0001-01-01T00:00:00+05:00"},
        {"not_before": "1999-12-31T23:59:59Z"},
        {"expires_at": "+11y"},  # more than ten years ahead
        {"not_before": "+11y"},
    ],
)
def test_release_times_beyond_the_horizon_are_refused_and_recorded(
    api: Api, times: dict[str, str]
) -> None:
    package, _ = upload(api.vault, api.user("uz.officer"))
    later = (utcnow() + timedelta(days=11 * 366)).isoformat()
    body = {k: later if v == "+11y" else v for k, v in times.items()}
    reply = api.client.post(
        f"/packages/{package}/releases",
        json={"country": "KZ", **body},
        headers=api.headers["uz.officer"],
    )
    error = refusal(reply, 422)
    assert error["code"] == "invalid_input"
    recorded = entry_at(api.vault, error["receipt"])
    assert (recorded.action, recorded.decision, recorded.reason) == (
        "release",
        "deny",
        "invalid_input",
    )
    detail, _ = api.vault.get_package(api.user("uz.officer"), package)
    assert detail.releases == []
    # Nine years ahead is a plan, and allowed.
    nine = (utcnow() + timedelta(days=9 * 365)).isoformat()
    ok = api.client.post(
        f"/packages/{package}/releases",
        json={"country": "KZ", "expires_at": nine},
        headers=api.headers["uz.officer"],
    )
    assert ok.status_code == 201, ok.text


# --- 2c. allowed reads of reference data are recorded too -------------------------------------


def test_reading_the_rules_and_the_crossing_points_is_recorded(api: Api) -> None:
    size = api.vault.ledger_size()
    assert api.vault.rules(local_operator()) == []
    reply = api.client.get("/crossing-points", headers=api.headers["kz.officer"])
    assert reply.status_code == 200, reply.text
    entries = api.vault.unscoped_entries(size)
    assert reply.headers["X-Vault-Receipt"] == str(entries[-1].seq)
    assert [(e.actor_user, e.action, e.decision, e.subject) for e in entries] == [
        ("local:root", "manage", "allow", "rules"),
        ("kz.officer", "list", "allow", f"crossing-points:{len(reply.json())}"),
    ]


# --- 3. no upload above one's own clearance ----------------------------------------------------


def test_upload_above_ones_clearance_is_refused_before_anything_is_stored(api: Api) -> None:
    vault = api.vault
    store_before = sorted(vault.store.keys())
    size_before = vault.ledger_size()
    files = [("file", ("note.txt", b"secret bytes", "text/plain"))]
    metadata = '{"title": "above", "classification": "SECRET"}'
    reply = api.client.post(
        "/packages",
        files=[("metadata", (None, metadata, "application/json")), *files],
        headers=api.headers["uz.low"],
    )
    error = refusal(reply, 403)
    assert error["code"] == "access_denied"
    assert error["message"] == "classification SECRET is above your clearance RESTRICTED"
    recorded = entry_at(vault, error["receipt"])
    assert (recorded.actor_user, recorded.action, recorded.decision, recorded.reason) == (
        "uz.low",
        "upload",
        "deny",
        "clearance_below_classification",
    )
    assert vault.ledger_size() == size_before + 1
    assert sorted(vault.store.keys()) == store_before
    # A refusal of the upload itself is a deny too (not an "error": nothing failed on our side).
    empty = api.client.post(
        "/packages",
        files=[("metadata", (None, '{"title": "no files"}', "application/json"))],
        headers=api.headers["uz.low"],
    )
    error = refusal(empty, 422)
    recorded = entry_at(vault, error["receipt"])
    assert (recorded.actor_user, recorded.action, recorded.decision) == ("uz.low", "upload", "deny")
    assert vault.ledger_size() == size_before + 2
    # At or below the clearance is fine, and the creator can then read it.
    metadata = '{"title": "at", "classification": "RESTRICTED"}'
    made = api.client.post(
        "/packages",
        files=[("metadata", (None, metadata, "application/json")), *files],
        headers=api.headers["uz.low"],
    )
    assert made.status_code == 201, made.text
    shown = api.client.get(
        f"/packages/{made.json()['package']['id']}", headers=api.headers["uz.low"]
    )
    assert shown.status_code == 200, shown.text


# --- 4. no rule gives admins or auditors content ------------------------------------------------

CONTENT_RULES = [
    "p, admin, originator, *, *, *, read, allow",
    "p, admin, same-country, *, *, *, download, allow",
    "p, auditor, released-country, cleared, *, *, read, allow",
    "p, auditor, none, *, *, *, list, allow",
    "p, admin, none, *, *, *, list, allow",
    # A wildcard role matches admins and auditors too.
    "p, *, originator, *, *, *, download, allow",
    "p, *, none, *, *, *, list, allow",
]
HARMLESS_RULES = [
    "p, supervisor, released-country, *, *, *, approve, allow",
    "p, *, *, *, H1, *, download, deny",
    "p, admin, *, *, *, *, read, deny",
    "p, auditor, released-agency, *, *, *, audit, allow",
]


def _refused_rule(api: Api, line: str, message: str, reason: str) -> None:
    """Adding ``line`` is refused with ``message``, recorded with ``reason``; nothing stored."""
    vault = api.vault
    before = vault.authz.policy_hash
    with pytest.raises(AccessDenied) as info:
        vault.change_rule(local_operator(), line, add=True)
    assert message in info.value.message
    assert info.value.receipt is not None
    recorded = entry_at(vault, info.value.receipt)
    assert (recorded.action, recorded.decision, recorded.reason) == ("manage", "deny", reason)
    assert vault.authz.policy_hash == before
    assert vault.rules(local_operator()) == []  # and admins still manage
    with Session(vault.engine) as session:
        assert session.exec(select(PolicyRule)).all() == []


@pytest.mark.parametrize("line", CONTENT_RULES)
def test_a_rule_giving_admins_or_auditors_content_is_refused(line: str, api: Api) -> None:
    _refused_rule(api, line, "separation of duties", "separation_of_duties")


LOCKOUT_RULES = [
    "p, admin, none, *, *, *, manage, deny",
    "p, *, none, *, *, *, manage, deny",
    "p, admin, *, *, *, *, manage, deny",
]


@pytest.mark.parametrize("line", LOCKOUT_RULES)
def test_a_rule_locking_every_admin_out_of_administration_is_refused(line: str, api: Api) -> None:
    """Accepted, it refused every admin command from then on, removing it included: only an
    edit of the database by hand undid it."""
    _refused_rule(api, line, "no administrator able to manage", "locks_out_admins")


@pytest.mark.parametrize("line", HARMLESS_RULES)
def test_rules_that_give_no_content_to_admins_or_auditors_still_work(line: str, api: Api) -> None:
    vault = api.vault
    vault.change_rule(local_operator(), line, add=True)
    assert len(vault.rules(local_operator())) == 1
    vault.change_rule(local_operator(), line, add=False)
    assert vault.rules(local_operator()) == []


def test_the_cli_refuses_such_a_rule_too(cli: CliRunner) -> None:
    result = cli("admin", "add-rule", "p, *, originator, *, *, *, read, allow")
    assert result.code == 5, result.stderr  # AccessDenied
    assert "separation of duties" in result.stderr
    assert json.loads(cli("admin", "rules", "--json").stdout)["rules"] == []


def test_a_content_rule_already_in_the_database_is_not_enforced(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A row written before this check existed (or behind the service's back) grants nothing;
    the vault warns about it, and an admin can still remove it."""
    vault = world.vault
    admin = world["uz.admin"]
    package, _ = upload(vault, world["uz.officer"], classification=Classification.UNCLASSIFIED)
    line = "p, admin, originator, *, *, *, read, allow"
    with Session(vault.engine) as session:
        session.add(
            PolicyRule(id=secrets.token_hex(16), rule=line, created_by="x", created_at=utcnow())
        )
        session.commit()
    settings = world.settings
    with caplog.at_level(logging.WARNING, logger="vault"):
        reopened = Vault.open(settings)
    try:
        assert any("separation of duties" in r.getMessage() for r in caplog.records)
        with TestClient(create_app(vault=reopened)) as client:
            token = reopened.tokens.issue(admin.user_id, session_id=admin.session_id)
            shown = client.get(f"/packages/{package}", headers={"Authorization": f"Bearer {token}"})
            assert shown.status_code in (403, 404), shown.text
        assert reopened.rules(local_operator()) == []
        assert reopened.authz.policy_hash == vault.authz.policy_hash
        reopened.change_rule(local_operator(), line, add=False)
        with Session(vault.engine) as session:
            assert session.exec(select(PolicyRule)).all() == []
    finally:
        reopened.close()


def test_a_policy_file_giving_admins_content_does_not_load(world: World, tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    shutil.copytree(default_policy_dir(), policy_dir)
    with (policy_dir / "policy.csv").open("a") as out:
        out.write("g, admin, officer\n")  # admins inherit the officers' reads
    settings = load_settings(
        data_dir=world.settings.data_dir,
        database_url=world.settings.database_url,
        policy_dir=policy_dir,
        **FAST_ARGON2,
    )
    with pytest.raises(ConfigError, match="separation of duties"):
        Vault.open(settings).close()


# --- 5. every refusal of an authenticated request is in the ledger, once ------------------------


def test_every_refusal_on_the_package_routes_is_recorded_once(api: Api) -> None:
    vault = api.vault
    uz = api.user("uz.officer")
    h0, h0_file = upload(vault, uz)
    other, other_file = upload(vault, uz)
    vault.release(uz, h0, country="KZ")
    revoked = vault.release(uz, other, country="KZ").release.id
    vault.revoke_release(uz, other, revoked)
    secret, _ = upload(vault, uz, classification=Classification.SECRET)
    pending = vault.release(uz, secret, country="TJ").release.id  # four-eyes: pending
    rejected = vault.release(uz, secret, country="KZ").release.id
    vault.decide_release(api.user("uz.supervisor"), rejected, approve=False)
    active = vault.release(uz, h0, country="TJ").release.id
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    random_id = secrets.token_hex(16)
    wrong_agency = {"country": "KZ", "agency": "TJ-CUSTOMS"}
    expired = {"country": "KZ", "expires_at": past}
    explain_url = "/authz/explain?user={}&action={}&package={}".format
    # (caller, method, path, body, status)
    cases: list[tuple[str, str, str, dict[str, Any] | None, int]] = [
        ("uz.officer", "POST", f"/packages/{h0}/releases", {"country": "ZZ"}, 422),
        ("uz.officer", "POST", f"/packages/{h0}/releases", wrong_agency, 422),
        ("uz.officer", "POST", f"/packages/{h0}/releases", expired, 422),
        ("kz.officer", "POST", f"/packages/{h0}/release-requests", {"country": "ZZ"}, 422),
        ("kz.officer", "POST", f"/packages/{h0}/acknowledge", None, 422),
        ("uz.supervisor", "POST", f"/releases/{active}/approve", None, 409),
        ("uz.supervisor", "POST", f"/releases/{rejected}/reject", None, 409),
        ("uz.officer", "POST", f"/packages/{other}/releases/{revoked}/revoke", None, 409),
        ("uz.officer", "POST", f"/packages/{h0}/releases/{pending}/revoke", None, 404),
        ("uz.officer", "POST", f"/releases/{pending}/approve", None, 403),  # four-eyes
        ("kz.officer", "GET", f"/packages/{h0}/files/{random_id}", None, 404),
        ("kz.officer", "GET", f"/packages/{h0}/files/{other_file}", None, 404),
        ("uz.officer", "GET", f"/packages/{other}/files/{h0_file}", None, 404),
        ("tj.officer", "GET", f"/packages/{other}", None, 404),  # recorded before: still once
        ("uz.officer", "GET", "/packages/not-an-id", None, 422),
        ("uz.officer", "GET", f"/packages/{h0}/files/not-an-id", None, 422),
        ("uz.auditor", "GET", explain_url("no.such.user", "read", h0), None, 404),
        ("uz.auditor", "GET", explain_url("kz.officer", "read", random_id), None, 404),
        ("uz.auditor", "GET", explain_url("kz.officer", "fly", h0), None, 422),
        ("uz.officer", "GET", explain_url("kz.officer", "read", h0), None, 403),
        ("kz.officer", "GET", explain_url("kz.officer", "read", random_id), None, 404),
        # Refused by the API before any operation runs: the schema, the query's names.
        ("uz.officer", "POST", f"/packages/{h0}/releases", {"country": "KZZ"}, 422),
        ("uz.officer", "POST", f"/packages/{h0}/releases", {"agency": "KZ-BORDER"}, 422),
        ("uz.officer", "GET", "/packages?limit=0", None, 422),
        ("uz.officer", "GET", "/packages?bogus=1", None, 422),
        ("uz.auditor", "GET", "/ledger/entries?start=-1&end=2", None, 422),
    ]
    problems = []
    for caller, method, path, body, status in cases:
        size = vault.ledger_size()
        reply = api.client.request(method, path, json=body, headers=api.headers[caller])
        where = f"{caller} {method} {path} -> {reply.status_code} {reply.text[:160]}"
        if reply.status_code != status:
            problems.append(f"{where}: expected {status}")
            continue
        receipt = reply.json()["error"]["receipt"]
        added = vault.ledger_size() - size
        if not isinstance(receipt, int) or added != 1:
            problems.append(f"{where}: receipt {receipt}, {added} ledger entries added")
            continue
        recorded = entry_at(vault, receipt)
        if (recorded.actor_user, recorded.decision) != (caller, "deny") or not recorded.reason:
            problems.append(f"{where}: recorded {recorded}")
        if reply.headers.get("X-Vault-Receipt") != str(receipt):
            problems.append(f"{where}: no receipt header")
        if "not-an-id" in path and b"not-an-id" in recorded.encode():
            problems.append(f"{where}: a malformed id went into the ledger")
    assert not problems, "\n".join(problems)


# --- 6. failed logins don't keep what was typed as a username ---------------------------------


def failed_login(vault: Vault, name: str, password: str = "whatever") -> Entry:
    """The ledger entry of one refused login."""
    with pytest.raises(AuthenticationFailed) as info:
        vault.login(name, password)
    assert isinstance(info.value.receipt, int)
    recorded = entry_at(vault, info.value.receipt)
    assert (recorded.action, recorded.decision) == ("login", "deny")
    return recorded


def test_an_unknown_username_is_recorded_as_a_keyed_hash(world: World) -> None:
    vault = world.vault
    typed = "Tr0ub4dor&3-correct-horse"  # a password typed into the username field
    first, second = (failed_login(vault, typed).actor_user for _ in range(2))
    assert first == second, "the same name must give the same hash (to correlate attempts)"
    assert first.startswith("unknown:")
    assert len(first) >= len("unknown:") + 32
    assert typed not in first
    # A different unknown name gives a different hash; a known user stays readable.
    assert failed_login(vault, typed + "x").actor_user not in (first, typed + "x")
    assert failed_login(vault, "uz.officer").actor_user == "uz.officer"
    needle = typed.encode()
    for entry in all_entries(vault):
        assert needle not in entry.encode(), f"typed name in ledger entry #{entry.seq}"
    if world.settings.database_url is None:  # SQLite: the database and WAL files themselves
        leaks = [
            str(path)
            for path in world.settings.data_dir.rglob("*")
            if path.is_file() and needle in path.read_bytes()
        ]
        assert not leaks, leaks


def test_rate_limited_logins_of_unknown_users_are_hashed_too(
    tmp_path: Path, database_url: str | None
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "vault-data",
        database_url=database_url,
        login_failures_per_user=2,
        login_failures_per_address=1000,
        lockout_base_seconds=600,
        **FAST_ARGON2,
    )
    typed = "hunter2-is-my-password"
    vault = Vault.open(settings)
    try:
        entries = [failed_login(vault, typed) for _ in range(3)]
        assert [e.reason for e in entries] == ["bad_credentials", "bad_credentials", "rate_limited"]
        pseudonym = entries[0].actor_user
        assert pseudonym.startswith("unknown:")
        assert {e.actor_user for e in entries} == {pseudonym}
    finally:
        vault.close()
    # The same key after a restart: correlation survives it.
    vault = Vault.open(settings)
    try:
        assert failed_login(vault, typed).actor_user == pseudonym
    finally:
        vault.close()


def test_a_validation_error_names_known_fields_but_echoes_no_made_up_name(api: Api) -> None:
    package, _ = upload(api.vault, api.user("uz.officer"))
    made_up = "evil\u202e\x1b]0;title\x07"
    reply = api.client.post(
        f"/packages/{package}/releases",
        json={"country": "KZ", made_up: 1},
        headers=api.headers["uz.officer"],
    )
    message = refusal(reply, 422)["message"]
    assert message == "invalid request: body.?"
    # A made-up key that looks like any field name is the client's own words too.
    plain = api.client.post(
        f"/packages/{package}/releases",
        json={"country": "KZ", "informant_ivanov": 1},
        headers=api.headers["uz.officer"],
    )
    assert refusal(plain, 422)["message"] == "invalid request: body.?"
    missing = api.client.post(
        f"/packages/{package}/releases", json={}, headers=api.headers["uz.officer"]
    )
    assert refusal(missing, 422)["message"] == "invalid request: body.country"


def test_a_rule_another_process_added_decides_the_next_request_before_any_transaction(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`blovault admin add-rule` runs in another process. An upload's role check comes before
    its first transaction, where the rules used to be picked up: the first upload after the
    rule was allowed, and its entry stamped with the policy that forbade it."""
    from vault.service import _core

    monkeypatch.setattr(_core, "POLICY_REFRESH_SECONDS", 0.0)  # "half a second has passed"
    server = world.vault
    other = Vault.open(world.settings)
    try:
        digest = other.change_rule(
            local_operator(), "p, officer, none, *, *, *, upload, deny", add=True
        )
        before = len(other.unscoped_entries())  # not the server's: a read would refresh it
    finally:
        other.close()
    with pytest.raises(AccessDenied):
        server.upload(
            world["uz.officer"],
            NewPackage(title="t"),
            [IncomingFile("a.txt", io.BytesIO(b"x"))],
        )
    (refusal,) = server.unscoped_entries()[before:]
    assert (refusal.action, refusal.decision, refusal.policy) == ("upload", "deny", digest)
