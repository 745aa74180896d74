"""The state-changing pages against the JSON routes, for every seeded user, every relation to
the package and every action (acknowledge, release, request-release, revoke, approve, reject,
upload): the page is done, not found or forbidden exactly where the route is, and a refused
POST changes nothing and is recorded in the ledger as the route's refusal is.

Each cell acts on two twins built the same way, one through the page and one through the route,
so neither answer depends on what the other changed. One world for the module keeps it fast."""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from blo_vault.api.app import create_app
from tests.conftest import (
    FAST_ARGON2,
    ON_POSTGRES,
    PASSWORD,
    USERS,
    postgres_schema_url,
    seed,
)
from tests.ui.conftest import Browser
from vault.config import load_settings
from vault.ledger.entry import Entry
from vault.models import Acknowledgement, Classification, Handling, Release
from vault.schemas import NewPackage
from vault.service import IncomingFile, Principal, Vault

ACTIONS = ("acknowledge", "release", "request-release", "revoke", "approve", "reject")
# How uz.officer (UZ-CUSTOMS) shares each twin: every user then stands in some relation to it
# (originator, same country, released to their country or agency, none); "missing" is an id
# that names nothing.
KINDS = ("kept", "to-KZ", "to-KZ-BORDER", "missing")
RECEIPT = re.compile(r"#(\d+)")
# Cells whose answer the domain fixes (so a grid where both doors always failed alike fails).
EXPECTED = {
    ("uz.officer", "release", "kept"): "done",
    ("uz.officer", "approve", "kept"): "forbidden",  # four-eyes: the requester
    ("uz.supervisor", "approve", "to-KZ"): "done",
    ("kz.officer", "acknowledge", "to-KZ-BORDER"): "done",
    ("kz.interior", "release", "to-KZ-BORDER"): "not found",
    ("tj.officer", "revoke", "to-KZ"): "not found",
    ("uz.auditor", "release", "kept"): "forbidden",
}


@dataclass
class Grid:
    """The vault, one signed-in browser and one bearer token per user, CSRF tokens."""

    vault: Vault
    users: dict[str, Principal]
    browsers: dict[str, Browser]
    csrf: dict[str, str]
    bearer: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    scratch = Path(tempfile.mkdtemp(prefix="blovault-pages-", dir=_scratch_root(tmp_path_factory)))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        url = stack.enter_context(
            postgres_schema_url() if ON_POSTGRES else contextlib.nullcontext(None)
        )
        vault = Vault.open(
            load_settings(data_dir=scratch / "vault-data", database_url=url, **FAST_ARGON2)
        )
        stack.callback(vault.close)
        app = create_app(vault=vault)
        stack.enter_context(TestClient(app))  # the app's startup and shutdown, once
        users = seed(vault)
        browsers, csrf, bearer = {}, {}, {}
        for name in USERS:
            browser = Browser(TestClient(app))  # a cookie jar of its own
            browser.sign_in(name)
            browsers[name] = browser
            csrf[name] = browser.csrf("/ui/account")
            token = vault.login(name, PASSWORD).access_token
            bearer[name] = {"Authorization": f"Bearer {token}"}
        yield Grid(vault, users, browsers, csrf, bearer)


def _scratch_root(factory: pytest.TempPathFactory) -> Path:
    """tmpfs when there is one (SQLite syncs every commit), else pytest's temp folder."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else factory.getbasetemp()


@dataclass
class Twin:
    """One package built for a cell, and the release the cell's action is about."""

    package: str
    release: str


def _twin(grid: Grid, action: str, kind: str) -> Twin:
    """A package by uz.officer shared as ``kind`` says, marked as ``action`` needs (H3 to
    acknowledge, H2 to request release, CONFIDENTIAL so releases wait for approval), with a
    release to KG for revoke (in force) or approve and reject (pending)."""
    if kind == "missing":
        return Twin(secrets.token_hex(16), secrets.token_hex(16))
    vault, officer = grid.vault, grid.users["uz.officer"]
    handling = {"acknowledge": Handling.H3, "request-release": Handling.H2}.get(action, Handling.H0)
    pending = action in ("approve", "reject")
    meta = NewPackage(
        title="grid",
        classification=Classification.CONFIDENTIAL if pending else Classification.RESTRICTED,
        handling=handling,
        handling_note="not onward" if handling == Handling.H3 else "",
    )
    package = vault.upload(
        officer, meta, [IncomingFile(name="f.txt", reader=io.BytesIO(b"grid"))]
    ).package.id
    if kind != "kept":
        agency = "KZ-BORDER" if kind == "to-KZ-BORDER" else None
        shared = vault.release(officer, package, country="KZ", agency=agency)
        if pending:
            vault.decide_release(grid.users["uz.supervisor"], shared.release.id, approve=True)
    release = ""
    if action in ("revoke", "approve", "reject"):
        release = vault.release(officer, package, country="KG").release.id
    return Twin(package, release)


def _paths(action: str, twin: Twin) -> tuple[str, dict[str, str]]:
    """The route of ``action`` on ``twin`` (the page's is it under /ui) and its fields."""
    package = f"/packages/{twin.package}"
    return {
        "acknowledge": (f"{package}/acknowledge", {}),
        "release": (f"{package}/releases", {"country": "TJ"}),
        "request-release": (f"{package}/release-requests", {"country": "TJ"}),
        "revoke": (f"{package}/releases/{twin.release}/revoke", {}),
        "approve": (f"/releases/{twin.release}/approve", {}),
        "reject": (f"/releases/{twin.release}/reject", {}),
    }[action]


def _state(vault: Vault, package: str) -> list[tuple[str, ...]]:
    """What the actions can change of a package: its releases and acknowledgements."""
    with Session(vault.engine) as session:
        releases = session.exec(select(Release).where(col(Release.package_id) == package)).all()
        acks = session.exec(
            select(Acknowledgement).where(col(Acknowledgement.package_id) == package)
        ).all()
        return sorted(
            [(r.id, r.status.value, r.country_code, r.agency_code or "") for r in releases]
            + [("ack", a.user_id) for a in acks]
        )


def _entry(vault: Vault, seq: int) -> Entry:
    found = vault.unscoped_entries(seq, seq + 1)
    assert found, f"no ledger entry #{seq}"
    return found[0]


def _outcome(status: int) -> str:
    return {200: "done", 201: "done", 303: "done", 403: "forbidden", 404: "not found"}.get(
        status, str(status)
    )


@dataclass
class Answer:
    """What one door said, what it recorded, and the state before and after."""

    outcome: str
    new_entries: int
    before: list[tuple[str, ...]]
    after: list[tuple[str, ...]]


def _act(
    grid: Grid, twin: Twin, client: TestClient, url: str, **request: Any
) -> tuple[httpx.Response, Answer]:
    """POST to ``url`` and see what it did to ``twin`` and to the ledger."""
    before = _state(grid.vault, twin.package)
    size = grid.vault.ledger_size()
    reply: httpx.Response = client.post(url, **request)
    new_entries = grid.vault.ledger_size() - size
    after = _state(grid.vault, twin.package)
    return reply, Answer(_outcome(reply.status_code), new_entries, before, after)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("username", list(USERS))
def test_post_pages_answer_as_the_routes_do(grid: Grid, username: str, action: str) -> None:
    seen = set()
    for kind in KINDS:
        page_twin, api_twin = _twin(grid, action, kind), _twin(grid, action, kind)
        client = grid.browsers[username].client
        path, fields = _paths(action, page_twin)
        form = {"csrf": grid.csrf[username], **fields}
        web, page = _act(grid, page_twin, client, "/ui" + path, data=form, follow_redirects=False)
        path, fields = _paths(action, api_twin)
        headers = grid.bearer[username]
        api, route = _act(grid, api_twin, client, path, json=fields or None, headers=headers)
        cell = (username, action, kind, web.status_code, api.status_code)
        assert page.outcome == route.outcome, cell
        seen.add(route.outcome)
        assert EXPECTED.get((username, action, kind), route.outcome) == route.outcome, cell
        if route.outcome == "done":
            assert page.after != page.before, cell
            continue
        # Refused: nothing changed, and one entry, the same refusal as the route's.
        assert page.after == page.before, cell
        assert (page.new_entries, route.new_entries) == (1, 1), cell
        web_receipt = RECEIPT.search(web.text)
        assert web_receipt, cell
        page_entry = _entry(grid.vault, int(web_receipt.group(1)))
        route_entry = _entry(grid.vault, api.json()["error"]["receipt"])
        assert (page_entry.action, page_entry.decision, page_entry.reason) == (
            route_entry.action,
            route_entry.decision,
            route_entry.reason,
        ), cell
        assert page_entry.actor_user == route_entry.actor_user == username, cell
    assert seen, (username, action)


def _upload_body(boundary: str, fields: dict[str, str]) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\ngrid\r\n--{boundary}--\r\n"
    )
    return "".join(parts).encode()


@pytest.mark.parametrize("username", list(USERS))
def test_upload_page_answers_as_the_route_does(grid: Grid, username: str) -> None:
    client = grid.browsers[username].client
    boundary = secrets.token_hex(8)
    size = grid.vault.ledger_size()
    web = client.post(
        "/ui/upload",
        content=_upload_body(
            boundary, {"csrf": grid.csrf[username], "title": "grid", "classification": "SECRET"}
        ),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        follow_redirects=False,
    )
    page_entries = grid.vault.ledger_size() - size
    size = grid.vault.ledger_size()
    api = client.post(
        "/packages",
        content=_upload_body(
            boundary, {"metadata": '{"title": "grid", "classification": "SECRET"}'}
        ),
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            **grid.bearer[username],
        },
    )
    route_entries = grid.vault.ledger_size() - size
    assert _outcome(web.status_code) == _outcome(api.status_code), (username, web.status_code)
    assert page_entries == route_entries == 1
    if _outcome(api.status_code) != "done":
        web_receipt = RECEIPT.search(web.text)
        assert web_receipt
        page_entry = _entry(grid.vault, int(web_receipt.group(1)))
        route_entry = _entry(grid.vault, api.json()["error"]["receipt"])
        assert (page_entry.action, page_entry.reason) == (route_entry.action, route_entry.reason)


# The statistics pages (issue 16) against the routes giving the same figures: allowed, and
# refused with the same ledger entry, exactly where the route is.
STATS_PAGES = (
    ("/ui/stats", "/stats/seizures?by=month,commodity"),
    ("/ui/stats?by=country,direction&from=2024-01-01", "/stats/seizures?by=country,direction"),
    ("/ui/stats/seizures.csv?by=commodity", "/stats/seizures?by=commodity"),
    ("/ui/stats/seizures.xlsx", "/stats/seizures"),
    ("/ui/stats/before-after.csv", "/stats/before-after"),
    ("/ui/stats/before-after.xlsx", "/stats/before-after"),
)
STATS_EXPECTED = {"uz.officer": "done", "kz.officer": "done", "uz.auditor": "forbidden"}


@pytest.mark.parametrize("username", list(USERS))
def test_stats_pages_answer_as_the_routes_do(grid: Grid, username: str) -> None:
    client = grid.browsers[username].client
    for page_path, route_path in STATS_PAGES:
        size = grid.vault.ledger_size()
        web = client.get(page_path, follow_redirects=False)
        page_entries = [_entry(grid.vault, seq) for seq in range(size, grid.vault.ledger_size())]
        size = grid.vault.ledger_size()
        api = client.get(route_path, headers=grid.bearer[username])
        route_entries = [_entry(grid.vault, seq) for seq in range(size, grid.vault.ledger_size())]
        cell = (username, page_path, web.status_code, api.status_code)
        assert _outcome(web.status_code) == _outcome(api.status_code), cell
        assert STATS_EXPECTED.get(username, _outcome(api.status_code)) == _outcome(
            api.status_code
        ), cell
        # Every read and every refusal is in the ledger, as the route's are.
        assert page_entries, cell
        assert route_entries, cell
        assert {(e.action, e.decision, e.reason, e.actor_user) for e in page_entries} == {
            (e.action, e.decision, e.reason, e.actor_user) for e in route_entries
        }, cell
