"""The access matrix, table-driven, through the HTTP API.

Every package route is tried by every role, from every relation a caller can have to a package,
for every state the release can be in, at clearances below, at and above the package's
classification; the status is compared with the decision of ``expected_allowed`` below, an
independent statement of what ``policies/policy.csv`` means (``vault.authz`` is never asked).

Dimensions and how the world realises them (all packages originate in UZ-CUSTOMS):

* relation: ``own-agency`` (a UZ-CUSTOMS caller), ``same-country`` (UZ-BORDER),
  ``released-country`` (KZ-INTERIOR, package released to KZ), ``released-agency`` (KZ-BORDER,
  package released to KZ-BORDER only), ``sibling-agency`` (KZ-INTERIOR, package released to
  KZ-BORDER only) and ``unreleased-country`` (TJ-CUSTOMS);
* release state: active, expired, not yet valid, revoked and pending (four-eyes, undecided);
* clearance: below / at / above the classification;
* role: officer, supervisor, auditor, admin.

The full product (route x role x relation x clearance) is tried for active releases. A release
in any other state must grant nothing; that is tried for every role and package route from the
two recipient relations at the highest clearance, where a leaked grant would show (for the
other relations the release state can't matter, and approve / reject / revoke concern the
originator's releases, not the recipient's). H2 (onward release) and H3 (acknowledge, then
download) get their own slices at RESTRICTED for officers and supervisors. Listing membership
is checked per user against every package of the world. (Each request costs the service a few
transactions and ledger appends, so the product is kept to about a thousand requests.)

Denials must be 403 when the caller may see the package (may read or audit it) and 404 shaped
exactly like a missing id otherwise, and every denial must be in the ledger as a ``deny``
entry under the receipt the caller was given.

``explain`` is a route of the matrix too. Auditors and admins (the roles the policy lets
explain globally) ask about another user and get the full answer exactly where the audit view
answers 200 for them; everywhere else they get the missing-id 404. Other roles may only ask
about themselves, and only about packages they may read. Where explain answers, its verdict
must agree with ``expected_allowed`` for the user asked about.

Approve, reject and revoke act on releases made for the cell (to KG, which has no agencies or
users, so granting or withdrawing them changes nobody's access); release and request-release
also target KG for the same reason.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from tests.conftest import AGENCIES, FAST_ARGON2, PASSWORD, seed
from vault.config import load_settings
from vault.errors import InvalidInput, NotFound
from vault.ledger.entry import Entry
from vault.models import (
    Classification,
    Release,
    ReleaseKind,
    ReleaseStatus,
    Role,
    utcnow,
)
from vault.schemas import NewPackage
from vault.service import IncomingFile, Principal, Vault, local_operator

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette: the httpx-backed TestClient is deprecated
    from fastapi.testclient import TestClient

from blo_vault.api.app import create_app

# --- the policy, stated independently ---------------------------------------------------------

ORIGINATOR, SAME_COUNTRY = "originator", "same-country"
RELEASED_COUNTRY, RELEASED_AGENCY, NONE = "released-country", "released-agency", "none"
RECIPIENT = frozenset({RELEASED_COUNTRY, RELEASED_AGENCY})

_OFFICER = {
    ORIGINATOR: {"read", "download", "release", "revoke"},
    RELEASED_COUNTRY: {"read", "download", "acknowledge", "request-release", "release"},
    RELEASED_AGENCY: {"read", "download", "acknowledge", "request-release", "release"},
}
# What each role may do to a package, by relation, before the deny rules. Supervisors may do
# everything officers may, and approve (decide) releases of their own agency. Auditors see
# metadata (audit) of packages of their own country or released to them; admins of their own
# country only. Nobody may do anything by relation "none" (upload and list are global).
GRANTS: dict[str, dict[str, set[str]]] = {
    "officer": _OFFICER,
    "supervisor": {**_OFFICER, ORIGINATOR: _OFFICER[ORIGINATOR] | {"approve"}},
    "auditor": {rel: {"audit"} for rel in (ORIGINATOR, SAME_COUNTRY, *RECIPIENT)},
    "admin": {rel: {"audit"} for rel in (ORIGINATOR, SAME_COUNTRY)},
}
# Actions on no package in particular (relation "none"): upload and list for officers, and so
# supervisors; a full explain (about anyone) for auditors and admins.
GLOBAL_GRANTS: dict[str, set[str]] = {
    "officer": {"upload", "list"},
    "supervisor": {"upload", "list"},
    "auditor": {"explain"},
    "admin": {"explain"},
}
# Below the classification these are denied whatever else allows (audit and revoke are not).
CLEARANCE_GATED = {
    "read",
    "download",
    "release",
    "revoke",
    "approve",
    "acknowledge",
    "request-release",
}


def expected_allowed(
    role: str, relations: set[str], cleared: bool, handling: str, acked: bool, action: str
) -> bool:
    """Allowed iff some relation that holds grants the action and no deny rule removes it."""
    for rel in relations:
        if action not in GRANTS[role].get(rel, set()):
            continue
        if action in CLEARANCE_GATED and not cleared:
            continue
        if rel in RECIPIENT and handling == "H2" and action == "release":
            continue  # H2: no onward release without the originator's consent
        if rel in RECIPIENT and handling == "H3" and action == "download" and not acked:
            continue  # H3: acknowledge the restrictions before the first download
        return True
    return False


# --- the world ----------------------------------------------------------------------------------

ORIGIN_AGENCY, ORIGIN_COUNTRY = "UZ-CUSTOMS", "UZ"
RELEASE_COUNTRY, RELEASE_AGENCY = "KZ", "KZ-BORDER"
HARMLESS_TARGET = "KG"  # a country with no agencies and no users

# relation label -> (caller's agency, how the package is released)
RELATIONS: dict[str, tuple[str, str]] = {
    "own-agency": ("UZ-CUSTOMS", "country"),
    "same-country": ("UZ-BORDER", "country"),
    "released-country": ("KZ-INTERIOR", "country"),
    "released-agency": ("KZ-BORDER", "agency"),
    "sibling-agency": ("KZ-INTERIOR", "agency"),
    "unreleased-country": ("TJ-CUSTOMS", "country"),
}
ROLES = ("officer", "supervisor", "auditor", "admin")
LEVELS = ("below", "at", "above")
ORDER = list(Classification)
MAIN_CLASS, SLICE_CLASS = Classification.CONFIDENTIAL, Classification.RESTRICTED
STATES = ("active", "expired", "not-yet-valid", "revoked", "pending")


def clearance_for(classification: Classification, level: str) -> Classification:
    i = ORDER.index(classification)
    return {"below": ORDER[i - 1], "at": ORDER[i], "above": ORDER[-1]}[level]


CLEARANCES = sorted(
    {clearance_for(c, lv) for c in (MAIN_CLASS, SLICE_CLASS) for lv in LEVELS},
    key=ORDER.index,
)


def username(agency: str, role: str, clearance: Classification) -> str:
    return f"m.{agency.lower()}.{role}.{clearance.value.lower()}"


@dataclass(frozen=True)
class PackageKey:
    classification: Classification
    handling: str
    state: str
    kind: str  # "country": released to KZ; "agency": released to KZ-BORDER only


@dataclass
class Pkg:
    key: PackageKey
    id: str
    file_id: str


@dataclass
class MatrixWorld:
    vault: Vault
    client: TestClient
    users: dict[str, Principal]
    headers: dict[str, dict[str, str]]
    packages: dict[PackageKey, Pkg]
    cell_releases: dict[str, str] = field(default_factory=dict)
    missing: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- the cells ------------------------------------------------------------------------------------

# route -> (policy action, status when allowed)
ROUTES: dict[str, tuple[str, int]] = {
    "show": ("read", 200),
    "download": ("download", 200),
    "audit": ("audit", 200),
    "release": ("release", 201),
    "request-release": ("request-release", 201),
    "acknowledge": ("acknowledge", 200),  # 422 for a package that is not H3 (nothing to accept)
    "revoke": ("revoke", 200),
    "approve": ("approve", 200),
    "reject": ("approve", 200),
    "explain": ("explain", 200),  # GET /authz/explain about the package (see expect())
}
# Whom auditors and admins ask explain about (others ask about themselves), and what action.
EXPLAIN_SUBJECT, EXPLAIN_ACTION = "kz.officer", "download"
RELEASE_ROUTES = ("revoke", "approve", "reject")


@dataclass(frozen=True)
class Cell:
    state: str
    relation: str
    role: str
    level: str
    route: str
    classification: Classification = MAIN_CLASS
    handling: str = "H0"

    @property
    def id(self) -> str:
        hnd = "" if self.handling == "H0" else f"{self.handling}-"
        return f"{hnd}{self.state}-{self.relation}-{self.role}-{self.level}-{self.route}"

    @property
    def package_key(self) -> PackageKey:
        kind = RELATIONS[self.relation][1]
        return PackageKey(self.classification, self.handling, self.state, kind)

    @property
    def user(self) -> str:
        agency = RELATIONS[self.relation][0]
        return username(agency, self.role, clearance_for(self.classification, self.level))


def _main_cells() -> list[Cell]:
    cells = []
    for state in STATES:
        if state == "active":
            relations, levels, routes = list(RELATIONS), list(LEVELS), list(ROUTES)
        else:
            # A release that is not in force must grant nothing: tried where a leaked grant
            # would show (the recipients, at the highest clearance), for the package routes.
            relations, levels = ["released-country", "released-agency"], ["above"]
            routes = [r for r in ROUTES if r not in RELEASE_ROUTES]
        for relation in relations:
            for role in ROLES:
                for level in levels:
                    cells += [Cell(state, relation, role, level, route) for route in routes]
    return cells


def _slice_cells(handling: str, routes: tuple[str, ...]) -> list[Cell]:
    # Handling codes only change what officers (and so supervisors) may do; the main matrix
    # already has auditors and admins refused release, acknowledge and download everywhere.
    return [
        Cell("active", relation, role, level, route, SLICE_CLASS, handling)
        for relation in RELATIONS
        for role in ("officer", "supervisor")
        for level in LEVELS
        for route in routes
    ]


MAIN_CELLS = _main_cells()
H2_CELLS = _slice_cells("H2", ("release", "request-release"))
H3_CELLS = _slice_cells("H3", ("download",))  # each runs download, acknowledge, download
PACKAGE_KEYS = sorted(
    {c.package_key for c in (*MAIN_CELLS, *H2_CELLS, *H3_CELLS)},
    key=lambda k: (k.classification.rank, k.handling, STATES.index(k.state), k.kind),
)
USERS = sorted({(agency, role, clr) for agency in AGENCIES for role in ROLES for clr in CLEARANCES})


# --- building the world -----------------------------------------------------------------------


def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path | None]:
    """A folder for the vault: on tmpfs when there is one (SQLite syncs every commit)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        scratch = Path(tempfile.mkdtemp(prefix="blovault-matrix-", dir=shm))
        return scratch / "vault-data", scratch
    return tmp_path_factory.mktemp("matrix") / "vault-data", None


def _make_package(vault: Vault, uploader: Principal, key: PackageKey) -> Pkg:
    meta = NewPackage(
        title=f"{key.classification.value} {key.handling} {key.state} {key.kind}",
        classification=key.classification,
        handling=key.handling,  # type: ignore[arg-type]
        handling_note="Not for court use" if key.handling == "H3" else "",
    )
    result = vault.upload(uploader, meta, [IncomingFile("note.txt", io.BytesIO(b"small"))])
    return Pkg(key=key, id=result.package.id, file_id=result.package.files[0].id)


def _release_for(vault: Vault, users: dict[str, Principal], pkg: Pkg) -> None:
    """Give ``pkg`` its release in the state its key names, through the service."""
    officer, supervisor = users["uz.officer"], users["uz.supervisor"]
    now = utcnow()
    window: dict[str, Any] = {
        "not-yet-valid": {"not_before": now + timedelta(days=1)},
    }.get(pkg.key.state, {})
    agency = RELEASE_AGENCY if pkg.key.kind == "agency" else None
    made = vault.release(officer, pkg.id, country=RELEASE_COUNTRY, agency=agency, **window).release
    four_eyes = pkg.key.classification.rank >= Classification.CONFIDENTIAL.rank
    assert made.status == (ReleaseStatus.PENDING if four_eyes else ReleaseStatus.ACTIVE)
    if four_eyes and pkg.key.state != "pending":
        vault.decide_release(supervisor, made.id, approve=True)
    if pkg.key.state == "revoked":
        vault.revoke_release(officer, pkg.id, made.id)
    if pkg.key.state == "expired":
        # The service refuses windows that already ended, so let this one age: move its
        # window into the past, as time would.
        with Session(vault.engine) as session:
            row = session.get(Release, made.id)
            assert row is not None
            row.not_before, row.expires_at = now - timedelta(days=2), now - timedelta(days=1)
            session.add(row)
            session.commit()


def _cell_releases(mw: MatrixWorld, requester: Principal) -> None:
    """One fresh release per approve / reject / revoke cell, to KG (inserted directly)."""
    now = utcnow()
    rows = []
    for cell in MAIN_CELLS:
        if cell.route not in RELEASE_ROUTES:
            continue
        pending = cell.route != "revoke"
        rid = secrets.token_hex(16)
        rows.append(
            Release(
                id=rid,
                package_id=mw.packages[cell.package_key].id,
                country_code=HARMLESS_TARGET,
                status=ReleaseStatus.PENDING if pending else ReleaseStatus.ACTIVE,
                kind=ReleaseKind.FOUR_EYES if pending else ReleaseKind.DIRECT,
                requested_by=requester.user_id,
                created_at=now,
                decided_by=None if pending else requester.user_id,
                decided_at=None if pending else now,
            )
        )
        mw.cell_releases[cell.id] = rid
    with Session(mw.vault.engine) as session:
        session.add_all(rows)
        session.commit()


@pytest.fixture(scope="module")
def mw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixWorld]:
    data_dir, scratch = _data_dir(tmp_path_factory)
    vault = Vault.open(load_settings(data_dir=data_dir, **FAST_ARGON2))
    try:
        users = seed(vault)
        op = local_operator()
        headers = {
            name: {
                "Authorization": f"Bearer {vault.tokens.issue(p.user_id, session_id=p.session_id)}"
            }
            for name, p in users.items()
        }
        for agency, role, clr in USERS:
            name = username(agency, role, clr)
            vault.add_user(
                op, username=name, agency=agency, role=Role(role), password=PASSWORD, clearance=clr
            )
            token = vault.login(name, PASSWORD).access_token
            users[name] = vault.authenticate(token)
            headers[name] = {"Authorization": f"Bearer {token}"}
        packages = {}
        for key in PACKAGE_KEYS:
            pkg = _make_package(vault, users["uz.officer"], key)
            _release_for(vault, users, pkg)
            packages[key] = pkg
        with TestClient(create_app(vault=vault)) as client:
            world = MatrixWorld(vault, client, users, headers, packages)
            _cell_releases(world, users["uz.officer"])
            world.missing = _missing_bodies(world)
            yield world
    finally:
        vault.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


# --- requests -----------------------------------------------------------------------------------


def request(
    mw: MatrixWorld,
    route: str,
    user: str,
    package_id: str,
    *,
    file_id: str = "",
    release_id: str = "",
) -> Any:
    client, headers = mw.client, mw.headers[user]
    target = {"country": HARMLESS_TARGET}
    if route == "show":
        return client.get(f"/packages/{package_id}", headers=headers)
    if route == "download":
        return client.get(f"/packages/{package_id}/files/{file_id}", headers=headers)
    if route == "audit":
        return client.get(f"/packages/{package_id}/audit", headers=headers)
    if route == "release":
        return client.post(f"/packages/{package_id}/releases", json=target, headers=headers)
    if route == "request-release":
        return client.post(f"/packages/{package_id}/release-requests", json=target, headers=headers)
    if route == "acknowledge":
        return client.post(f"/packages/{package_id}/acknowledge", headers=headers)
    if route == "revoke":
        return client.post(f"/packages/{package_id}/releases/{release_id}/revoke", headers=headers)
    if route in ("approve", "reject"):
        return client.post(f"/releases/{release_id}/{route}", headers=headers)
    if route == "explain":
        full = "explain" in GLOBAL_GRANTS.get(mw.users[user].role.value, set())
        params = {
            "user": EXPLAIN_SUBJECT if full else user,
            "package": package_id,
            "action": EXPLAIN_ACTION,
        }
        return client.get("/authz/explain", params=params, headers=headers)
    raise AssertionError(route)


def _missing_bodies(mw: MatrixWorld) -> dict[str, dict[str, Any]]:
    """Per route, the 404 body for ids that don't exist (what a hidden package must look like)."""
    user = username("TJ-CUSTOMS", "officer", Classification.SECRET)
    out = {}
    for route in ROUTES:
        reply = request(
            mw,
            route,
            user,
            secrets.token_hex(16),
            file_id=secrets.token_hex(16),
            release_id=secrets.token_hex(16),
        )
        assert reply.status_code == 404, (route, reply.text)
        out[route] = reply.json()
    return out


def ledger_entry(vault: Vault, seq: int) -> Entry:
    found = vault.unscoped_entries(seq, seq + 1)
    assert found, f"no ledger entry #{seq}"
    return found[0]


def relations_of(agency: str, pkg: PackageKey) -> set[str]:
    """The relations that hold, from how the world was built (not from the service)."""
    country = AGENCIES[agency][0]
    rels = {NONE}
    if agency == ORIGIN_AGENCY:
        rels.add(ORIGINATOR)
    elif country == ORIGIN_COUNTRY:
        rels.add(SAME_COUNTRY)
    if pkg.state == "active":  # the only state in which a release is in force
        if pkg.kind == "agency" and agency == RELEASE_AGENCY:
            rels.add(RELEASED_AGENCY)
        if pkg.kind == "country" and country == RELEASE_COUNTRY:
            rels.add(RELEASED_COUNTRY)
    return rels


@dataclass(frozen=True)
class Expectation:
    allowed: bool
    may_see: bool  # may read or audit, so a denial is 403 rather than 404
    action: str


def expect(user: Principal, key: PackageKey, route: str, *, acked: bool = False) -> Expectation:
    action = ROUTES[route][0]
    rels = relations_of(user.agency, key)
    cleared = user.clearance.rank >= key.classification.rank

    def ok(act: str) -> bool:
        return expected_allowed(user.role.value, rels, cleared, key.handling, acked, act)

    if route == "explain":
        # Full explainers see exactly what the audit view shows them; the others may ask
        # about themselves, for a package they may read.
        full = "explain" in GLOBAL_GRANTS.get(user.role.value, set())
        return Expectation(ok("audit" if full else "read"), ok("read") or ok("audit"), action)
    return Expectation(ok(action), ok("read") or ok("audit"), action)


def check_reply(
    mw: MatrixWorld,
    cell_id: str,
    route: str,
    user: Principal,
    pkg: Pkg,
    exp: Expectation,
    reply: Any,
) -> None:
    """Status from the expectation; denials are 403 or a missing-id 404, and in the ledger."""
    where = f"{cell_id}: {user.username} {route} -> {reply.status_code} {reply.text[:200]}"
    if exp.allowed:
        success = ROUTES[route][1]
        if route == "acknowledge" and pkg.key.handling != "H3":
            assert reply.status_code == 422, where  # allowed, but nothing to acknowledge
            assert reply.json()["error"]["code"] == "invalid_input", where
        else:
            assert reply.status_code == success, where
        if route == "download":
            assert reply.content == b"small", where
        if route == "explain":
            check_explanation(mw, user, pkg, reply.json(), where)
        return
    body = reply.json()
    assert set(body) == {"error"}, where
    assert set(body["error"]) == {"code", "message", "receipt"}, where
    if exp.may_see:
        assert reply.status_code == 403, where
        assert body["error"]["code"] == "access_denied", where
    else:
        assert reply.status_code == 404, where
        missing = mw.missing[route]["error"]
        assert (body["error"]["code"], body["error"]["message"]) == (
            missing["code"],
            missing["message"],
        ), where
    receipt = body["error"]["receipt"]
    assert isinstance(receipt, int), f"{where}: refusal without a ledger receipt"
    entry = ledger_entry(mw.vault, receipt)
    assert (entry.decision, entry.action, entry.actor_user) == (
        "deny",
        exp.action,
        user.username,
    ), where
    if exp.may_see:
        assert (entry.package, entry.handling) == (pkg.id, pkg.key.handling), where
        return
    # Recorded as a missing id is: the entry concerns the caller's country, whose auditor
    # must not tell the two apart either (the same reason, no handling code, and a release
    # route names the release, never its package).
    gone = ledger_entry(mw.vault, mw.missing[route]["error"]["receipt"])
    assert (entry.reason, entry.handling, bool(entry.package), bool(entry.release)) == (
        gone.reason,
        gone.handling,
        bool(gone.package),
        bool(gone.release),
    ), where
    assert entry.package in ("", pkg.id), where


def check_explanation(
    mw: MatrixWorld, user: Principal, pkg: Pkg, body: dict[str, Any], where: str
) -> None:
    """An explain answer: about the right user and package, with the policy's verdict."""
    full = "explain" in GLOBAL_GRANTS.get(user.role.value, set())
    subject = mw.users[EXPLAIN_SUBJECT] if full else user
    assert (body["user"], body["package"], body["action"]) == (
        subject.username,
        pkg.id,
        EXPLAIN_ACTION,
    ), where
    verdict = expect(subject, pkg.key, EXPLAIN_ACTION).allowed
    assert body["allowed"] is verdict, where
    # Only full explainers get the facts and rules; the others the bare verdict.
    assert (body.get("facts") is not None) is full, where


# --- tests --------------------------------------------------------------------------------------


def test_the_world_is_as_designed(mw: MatrixWorld) -> None:
    """Sanity of the fixture: each release is in the state its package key names."""
    for key, pkg in mw.packages.items():
        view = mw.client.get(f"/packages/{pkg.id}", headers=mw.headers["uz.officer"]).json()
        [main] = [r for r in view["releases"] if r["country"] == RELEASE_COUNTRY]
        status = {"revoked": "revoked", "pending": "pending"}.get(key.state, "active")
        assert main["status"] == status, key
        assert main["in_force"] is (key.state == "active"), key
        assert main["agency"] == (RELEASE_AGENCY if key.kind == "agency" else None), key


@pytest.mark.parametrize("cell", MAIN_CELLS, ids=[c.id for c in MAIN_CELLS])
def test_matrix(cell: Cell, mw: MatrixWorld) -> None:
    user = mw.users[cell.user]
    pkg = mw.packages[cell.package_key]
    exp = expect(user, pkg.key, cell.route)
    reply = request(
        mw,
        cell.route,
        cell.user,
        pkg.id,
        file_id=pkg.file_id,
        release_id=mw.cell_releases.get(cell.id, ""),
    )
    check_reply(mw, cell.id, cell.route, user, pkg, exp, reply)


@pytest.mark.parametrize("cell", H2_CELLS, ids=[c.id for c in H2_CELLS])
def test_h2_onward_release(cell: Cell, mw: MatrixWorld) -> None:
    user = mw.users[cell.user]
    pkg = mw.packages[cell.package_key]
    exp = expect(user, pkg.key, cell.route)
    reply = request(mw, cell.route, cell.user, pkg.id)
    check_reply(mw, cell.id, cell.route, user, pkg, exp, reply)
    recipient_release = (
        cell.route == "release"
        and relations_of(user.agency, pkg.key) & RECIPIENT
        and user.role.value in ("officer", "supervisor")
    )
    if recipient_release and user.clearance.rank >= pkg.key.classification.rank:
        assert "H2" in reply.json()["error"]["message"], reply.text
        entry = ledger_entry(mw.vault, reply.json()["error"]["receipt"])
        assert entry.reason == "h2_onward_release"


@pytest.mark.parametrize("cell", H3_CELLS, ids=[c.id.replace("-download", "") for c in H3_CELLS])
def test_h3_acknowledge_then_download(cell: Cell, mw: MatrixWorld) -> None:
    user = mw.users[cell.user]
    pkg = mw.packages[cell.package_key]
    acked = False
    for step, route in enumerate(("download", "acknowledge", "download")):
        exp = expect(user, pkg.key, route, acked=acked)
        reply = request(mw, route, cell.user, pkg.id, file_id=pkg.file_id)
        check_reply(mw, f"{cell.id}#{step}", route, user, pkg, exp, reply)
        if route == "acknowledge" and exp.allowed:
            acked = True
        if route == "download" and not exp.allowed and exp.may_see and not acked:
            needs_ack = expect(user, pkg.key, route, acked=True).allowed
            if needs_ack:
                assert "acknowledge" in reply.json()["error"]["message"], reply.text
                entry = ledger_entry(mw.vault, reply.json()["error"]["receipt"])
                assert entry.reason == "h3_not_acknowledged"


@pytest.mark.parametrize(
    "user", [username(*u) for u in USERS], ids=[username(*u)[2:] for u in USERS]
)
def test_listing_shows_exactly_the_readable_packages(user: str, mw: MatrixWorld) -> None:
    principal = mw.users[user]
    reply = mw.client.get("/packages", params={"limit": 200}, headers=mw.headers[user])
    if "list" not in GLOBAL_GRANTS.get(principal.role.value, set()):
        # Auditors and admins never see titles: listing is refused (and recorded) outright.
        assert reply.status_code == 403, reply.text
        entry = ledger_entry(mw.vault, reply.json()["error"]["receipt"])
        assert (entry.decision, entry.action, entry.actor_user) == ("deny", "list", user)
        assert not any(expect(principal, key, "show").allowed for key in mw.packages)
        return
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["items"]) < 200
    listed = {item["id"] for item in reply.json()["items"]}
    wrong = []
    for key, pkg in mw.packages.items():
        readable = expect(principal, key, "show").allowed
        if (pkg.id in listed) != readable:
            wrong.append(f"{key} listed={pkg.id in listed} readable={readable}")
    assert not wrong, "\n".join(wrong)


def fresh_release(mw: MatrixWorld, pkg: Pkg) -> str:
    """A pending release of ``pkg`` to KG, asked for by uz.officer."""
    rid = secrets.token_hex(16)
    with Session(mw.vault.engine) as session:
        session.add(
            Release(
                id=rid,
                package_id=pkg.id,
                country_code=HARMLESS_TARGET,
                status=ReleaseStatus.PENDING,
                kind=ReleaseKind.FOUR_EYES,
                requested_by=mw.users["uz.officer"].user_id,
                created_at=utcnow(),
            )
        )
        session.commit()
    return rid


@pytest.mark.parametrize("route", RELEASE_ROUTES)
def test_hidden_release_refusals_are_recorded_like_missing_ones(
    route: str, mw: MatrixWorld
) -> None:
    user = username("TJ-CUSTOMS", "supervisor", Classification.SECRET)
    pkg = mw.packages[PackageKey(MAIN_CLASS, "H0", "active", "country")]
    rid = fresh_release(mw, pkg)
    reply = request(mw, route, user, pkg.id, release_id=rid)
    assert reply.status_code == 404
    body, missing = reply.json()["error"], mw.missing[route]["error"]
    assert (body["code"], body["message"]) == (missing["code"], missing["message"])
    assert isinstance(body["receipt"], int), "the refusal has no ledger receipt"
    entry = ledger_entry(mw.vault, body["receipt"])
    assert (entry.decision, entry.action, entry.actor_user) == (
        "deny",
        ROUTES[route][0],
        user,
    )
    # As for a missing release: the release id typed, not the package it belongs to.
    assert (entry.reason, entry.release, entry.package, entry.handling) == (
        "not_found",
        rid,
        "",
        "",
    )


def test_an_unrelated_error_never_carries_someone_elses_refusal(mw: MatrixWorld) -> None:
    """Service level: a refusal once leaked through id() reuse; now it travels with its error."""
    pkg = mw.packages[PackageKey(MAIN_CLASS, "H0", "active", "country")]
    rid = fresh_release(mw, pkg)
    outsider, recipient = mw.users["tj.officer"], mw.users["kz.officer"]
    for _ in range(60):
        with pytest.raises(NotFound):
            mw.vault.decide_release(outsider, rid, approve=True)
        with pytest.raises(InvalidInput) as info:  # allowed, but H0 has nothing to acknowledge
            mw.vault.acknowledge(recipient, pkg.id)
        # Recorded too, but as kz.officer's own refusal, never as the outsider's.
        assert info.value.receipt is not None, "kz.officer's refusal was not recorded"
        entry = ledger_entry(mw.vault, info.value.receipt)
        assert (entry.actor_user, entry.action, entry.decision) == (
            "kz.officer",
            "acknowledge",
            "deny",
        ), f"kz.officer's InvalidInput carries receipt #{entry.seq}: {entry}"


def test_a_pending_four_eyes_release_grants_nothing_until_approved(mw: MatrixWorld) -> None:
    """The pending rows above, driven through approval over HTTP."""
    uz, sup = mw.headers["uz.officer"], mw.headers["uz.supervisor"]
    kz = username("KZ-BORDER", "officer", Classification.SECRET)
    pkg = _make_package(
        mw.vault, mw.users["uz.officer"], PackageKey(MAIN_CLASS, "H0", "pending", "agency")
    )
    made = mw.client.post(
        f"/packages/{pkg.id}/releases", json={"country": "KZ", "agency": "KZ-BORDER"}, headers=uz
    )
    assert made.status_code == 201, made.text
    assert (made.json()["release"]["status"], made.json()["release"]["kind"]) == (
        "pending",
        "four-eyes",
    )
    rid = made.json()["release"]["id"]
    assert request(mw, "show", kz, pkg.id).status_code == 404
    own = mw.client.post(f"/releases/{rid}/approve", headers=uz)
    assert own.status_code == 403, own.text
    approved = mw.client.post(f"/releases/{rid}/approve", headers=sup)
    assert approved.status_code == 200, approved.text
    assert request(mw, "download", kz, pkg.id, file_id=pkg.file_id).content == b"small"


# --- ledger doors that concern no package -----------------------------------------------------

# route -> the route whose access rule it shares. The witnessed checkpoint is a ledger read
# like the signed one (policy action "ledger"); nothing is witnessed in this world, so where
# the signed checkpoint answers 200 the witnessed one answers 404, recorded all the same.
LEDGER_DOORS = {"/ledger/witnessed-checkpoint": "/ledger/checkpoint"}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("door", sorted(LEDGER_DOORS))
def test_ledger_doors_follow_the_signed_checkpoint(door: str, role: str, mw: MatrixWorld) -> None:
    user = username(ORIGIN_AGENCY, role, Classification.SECRET)
    like = mw.client.get(LEDGER_DOORS[door], headers=mw.headers[user])
    reply = mw.client.get(door, headers=mw.headers[user])
    assert like.status_code in (200, 403), like.text
    assert reply.status_code == (404 if like.status_code == 200 else 403), reply.text
    entry = ledger_entry(mw.vault, reply.json()["error"]["receipt"])
    assert (entry.actor_user, entry.action, entry.decision) == (user, "ledger", "deny")
    assert entry.reason == ("not_found" if like.status_code == 200 else "role_not_permitted")


# The ledger export over HTTP (issue 18): public and scoped, a ledger read like the signed
# checkpoint; refused exactly where it is, and the refusal recorded.
EXPORT_DOORS = ("/ledger/export", "/ledger/export?scoped=true")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("door", EXPORT_DOORS)
def test_ledger_export_follows_the_signed_checkpoint(door: str, role: str, mw: MatrixWorld) -> None:
    user = username(ORIGIN_AGENCY, role, Classification.SECRET)
    like = mw.client.get("/ledger/checkpoint", headers=mw.headers[user])
    reply = mw.client.get(door, headers=mw.headers[user])
    assert like.status_code in (200, 403), like.text
    assert reply.status_code == like.status_code, reply.text
    if reply.status_code == 403:
        entry = ledger_entry(mw.vault, reply.json()["error"]["receipt"])
        assert (entry.actor_user, entry.action, entry.decision) == (user, "ledger", "deny")
        assert entry.reason == "role_not_permitted"
        return
    document = reply.json()
    assert document["vkey"] == like.json()["vkey"]
    assert len(document["entries"]) >= like.json()["size"]
    assert ("openings" in document) == door.endswith("scoped=true")


# --- seizure statistics (issue 16): the figures follow the same matrix as the listing ---------

STATS_POINT = "MATRIX-BCP"


@pytest.fixture(scope="module")
def seizure_packages(mw: MatrixWorld) -> dict[PackageKey, int]:
    """One package per key with one record of 2**i units, released as its key says: a total
    of units then names exactly the set of packages that counted."""
    from datetime import date, datetime

    from vault.seizures.schema import SeizureRecord

    mw.vault.add_crossing_point(
        local_operator(), STATS_POINT, country="UZ", name="Matrix", blo_opened=date(2015, 1, 1)
    )
    weights = {}
    for i, key in enumerate(PACKAGE_KEYS):
        meta = NewPackage(
            title="with records",
            classification=key.classification,
            handling=key.handling,  # type: ignore[arg-type]
            handling_note="Not for court use" if key.handling == "H3" else "",
        )
        record = SeizureRecord(
            date=datetime(2015, 1, 1 + i % 28),
            crossing_point=STATS_POINT,
            direction="entry",
            commodity="heroin",
            quantity=float(2**i),
            unit="units",
        )
        result = mw.vault.upload(
            mw.users["uz.officer"],
            meta,
            [IncomingFile("note.txt", io.BytesIO(b"small"))],
            records=[record],
        )
        _release_for(mw.vault, mw.users, Pkg(key=key, id=result.package.id, file_id=""))
        weights[key] = 2**i
    return weights


@pytest.mark.parametrize(
    "user", [username(*u) for u in USERS], ids=[username(*u)[2:] for u in USERS]
)
def test_seizure_stats_count_exactly_the_readable_packages(
    user: str, mw: MatrixWorld, seizure_packages: dict[PackageKey, int]
) -> None:
    principal = mw.users[user]
    for path in ("/stats/seizures", "/stats/before-after"):
        reply = mw.client.get(path, headers=mw.headers[user])
        if "list" not in GLOBAL_GRANTS.get(principal.role.value, set()):
            assert reply.status_code == 403, reply.text
            entry = ledger_entry(mw.vault, reply.json()["error"]["receipt"])
            assert (entry.decision, entry.action, entry.actor_user) == ("deny", "stats.read", user)
            continue
        assert reply.status_code == 200, reply.text
        entry = ledger_entry(mw.vault, int(reply.headers["X-Vault-Receipt"]))
        assert (entry.decision, entry.action, entry.actor_user) == ("allow", "stats.read", user)
    if "list" not in GLOBAL_GRANTS.get(principal.role.value, set()):
        return
    readable = [k for k in seizure_packages if expect(principal, k, "show").allowed]
    reply = mw.client.get("/stats/seizures", params={"by": ""}, headers=mw.headers[user])
    rows = reply.json()["rows"]
    units = sum(seizure_packages[k] for k in readable)
    assert rows == ([{"records": len(readable), "quantity_kg": 0.0, "quantity_l": 0.0}
                     | {"quantity_units": float(units)}] if readable else [])  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
def test_crossing_points_are_added_by_admins_only(role: str, mw: MatrixWorld) -> None:
    user = username(ORIGIN_AGENCY, role, Classification.SECRET)
    code = f"M-{role.upper()}"
    body = {"code": code, "country": "UZ", "name": "Matrix", "blo_opened": "2015-01-01"}
    reply = mw.client.post("/crossing-points", json=body, headers=mw.headers[user])
    assert reply.status_code == (201 if role == "admin" else 403), reply.text
    receipt = reply.json()["receipt"] if role == "admin" else reply.json()["error"]["receipt"]
    entry = ledger_entry(mw.vault, receipt)
    assert (entry.action, entry.actor_user, entry.subject) == (
        "manage",
        user,
        f"crossing_point:{code}",
    )
    assert entry.decision == ("allow" if role == "admin" else "deny")
    listed = mw.client.get("/crossing-points", headers=mw.headers[user])
    assert listed.status_code == 200
    assert (code in {p["code"] for p in listed.json()}) == (role == "admin")


# --- officers' signing keys (issue 13): policy actions key.register, key.revoke, key.read -----

KEY_GRANTS = {
    "officer": {"key.register", "key.revoke", "key.read"},
    "supervisor": {"key.register", "key.revoke", "key.read"},
    "auditor": {"key.read"},
    "admin": {"key.read"},
}


def _fresh_public_key() -> str:
    import base64

    from vault import crypto

    key = crypto.new_ed25519_private_key()
    return base64.b64encode(crypto.ed25519_public_bytes(key.public_key())).decode()


@pytest.mark.parametrize("role", ROLES)
def test_key_doors_by_role(role: str, mw: MatrixWorld) -> None:
    user = username(ORIGIN_AGENCY, role, Classification.SECRET)
    headers = mw.headers[user]
    grants = KEY_GRANTS[role]
    made = mw.client.post("/keys", json={"public_key": _fresh_public_key()}, headers=headers)
    if "key.register" in grants:
        assert made.status_code in (201, 409), made.text  # 409: a second run of the cell
    else:
        assert made.status_code == 403, made.text
        entry = ledger_entry(mw.vault, made.json()["error"]["receipt"])
        assert (entry.action, entry.decision, entry.actor_user) == ("key.register", "deny", user)
    history = mw.client.get("/keys/history", headers=headers)
    assert history.status_code == 200, history.text
    # Another agency's officer's key history: hidden like a missing user, for every role.
    other = username("TJ-CUSTOMS", "officer", Classification.SECRET)
    hidden = mw.client.get("/keys/history", params={"user": other}, headers=headers)
    missing = mw.client.get("/keys/history", params={"user": "no.such.user"}, headers=headers)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["message"] == missing.json()["error"]["message"]
    # Same agency: only its auditor sees an officer's key history.
    colleague = username(ORIGIN_AGENCY, "officer", Classification.SECRET)
    seen = mw.client.get("/keys/history", params={"user": colleague}, headers=headers)
    assert seen.status_code == (200 if role in ("auditor", "officer") else 404), seen.text
    registered = mw.client.post(
        "/keys", json={"public_key": _fresh_public_key()}, headers=mw.headers[colleague]
    )
    # The colleague's key: registered now, or by an earlier cell (one active key each).
    key_id = (
        registered.json()["id"] if registered.status_code == 201 else _colleague_key(mw, colleague)
    )
    shown = mw.client.get(f"/keys/{key_id}", headers=headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["proof"]["leaf_index"] == shown.json()["registered_seq"]
    if role != "officer":
        revoke = mw.client.post(f"/keys/{key_id}/revoke", headers=headers)
        assert revoke.status_code == (404 if "key.revoke" in grants else 403), revoke.text


def _colleague_key(mw: MatrixWorld, colleague: str) -> str:
    from sqlmodel import select

    from vault.models import OfficerKey

    with Session(mw.vault.engine) as session:
        row = session.exec(
            select(OfficerKey).where(
                OfficerKey.user_id == mw.users[colleague].user_id,
                OfficerKey.revoked_at == None,  # noqa: E711 - SQL IS NULL
            )
        ).one()
    return row.id
