"""Issue 18: a ledger every country can verify but that tells each only what concerns it.

Three countries: UZ releases a package to KZ, KZ reads it. The TJ auditor's ledger view (the
service, the API), explain, audit view and scoped export hold no byte of the UZ and KZ agency
codes, usernames, package, file or release ids of that exchange; the UZ auditor's scoped export
opens those entries and verifies. After ``admin purge`` the export still verifies against the
checkpoint signed before it, and the destroyed openings are nowhere in the database files.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlmodel import Session, col, select

from blo_vault.api.app import create_app
from tests.conftest import FAST_ARGON2, METRICS_TOKEN, PASSWORD, World, seed
from vault.config import Settings, load_settings
from vault.errors import IntegrityError, NotFound
from vault.ledger import note
from vault.ledger.entry import decode
from vault.ledger.verify import verify_export
from vault.models import Classification, LedgerEntry, Role, utcnow
from vault.schemas import NewPackage
from vault.service import IncomingFile, Principal, Vault, local_operator

EXTRA = {
    "tj.auditor": ("TJ-CUSTOMS", Role.AUDITOR),
    "kz.auditor": ("KZ-BORDER", Role.AUDITOR),
}


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return load_settings(
        data_dir=tmp_path / "vault-data",
        database_url=database_url,
        metrics_token=METRICS_TOKEN,
        ledger_entry_version=2,
        **FAST_ARGON2,
    )


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    vault = Vault.open(settings)
    try:
        users = seed(vault)
        for name, (agency, role) in EXTRA.items():
            vault.add_user(
                local_operator(), username=name, agency=agency, role=role,
                password=PASSWORD, clearance=Classification.SECRET,
            )  # fmt: skip
            users[name] = vault.authenticate(vault.login(name, PASSWORD).access_token)
        yield World(vault=vault, settings=settings, users=users)
    finally:
        vault.close()


@dataclass
class Exchange:
    package: str
    file: str
    release: str

    def secrets(self) -> list[str]:
        """What no TJ reader may find, anywhere."""
        return [
            self.package, self.file, self.release,
            "UZ-CUSTOMS", "KZ-BORDER", "uz.officer", "kz.officer", "uz.supervisor",
        ]  # fmt: skip


@pytest.fixture
def exchange(world: World) -> Exchange:
    """UZ uploads, releases to KZ-BORDER; KZ reads the package and downloads its file."""
    vault = world.vault
    meta = NewPackage(title="Seizure at Oybek", classification=Classification.RESTRICTED)
    up = vault.upload(world["uz.officer"], meta, [IncomingFile("n.txt", io.BytesIO(b"x"))])
    package, file = up.package.id, up.package.files[0].id
    release = vault.release(world["uz.officer"], package, country="KZ", agency="KZ-BORDER")
    vault.get_package(world["kz.officer"], package)
    b"".join(vault.download(world["kz.officer"], package, file).chunks)
    return Exchange(package, file, release.release.id)


def export(vault: Vault, who: Principal, *, scoped: bool) -> tuple[bytes, dict[str, Any]]:
    out = io.StringIO()
    vault.export_ledger(who, out, scoped=scoped)
    raw = out.getvalue().encode()
    return raw, json.loads(raw)


def assert_absent(blob: bytes, secrets: list[str], where: str) -> None:
    for secret in secrets:
        for form in (secret.encode(), secret.encode("utf-16-le"), secret.lower().encode()):
            assert form not in blob, f"{secret!r} found in {where}"


def test_entries_are_committed_and_verify(world: World, exchange: Exchange) -> None:
    vault = world.vault
    with Session(vault.engine) as session:
        datas = [bytes(r) for r in session.exec(select(LedgerEntry.entry)).all()]
    assert {d[0] for d in datas} == {2}
    assert_absent(b"".join(datas), exchange.secrets(), "the stored entries")
    report = vault.verify_ledger(local_operator())
    assert report.ok, report.problem
    # Openings are sealed at rest: no secret in their rows either.
    with Session(vault.engine) as session:
        sealed = b"".join(r.opening_sealed or b"" for r in session.exec(select(LedgerEntry)).all())
    assert_absent(sealed, exchange.secrets()[3:], "the sealed openings")


def test_tj_auditor_learns_nothing_of_a_uz_kz_exchange(world: World, exchange: Exchange) -> None:
    vault, tj = world.vault, world["tj.auditor"]
    secrets = exchange.secrets()
    shown = list(vault.ledger_show(tj))
    text = repr(shown).encode()
    assert_absent(text, secrets, "ledger show")
    assert not any(e.actor_country in ("UZ", "KZ") for e in shown)
    assert any(e.hidden and e.action == "download" for e in shown)
    raw, document = export(vault, tj, scoped=True)
    assert_absent(raw, secrets, "the scoped export")
    assert verify_export(document, document["vkey"]).ok
    headers = {
        "Authorization": "Bearer " + vault.tokens.issue(tj.user_id, session_id=tj.session_id)
    }
    with TestClient(create_app(vault=vault)) as client:
        entries = client.get("/ledger/entries", params={"start": 0, "end": 1000}, headers=headers)
        # Then TJ asks about the package: what it types goes in its own entries, which it
        # may open (it knew the id already), so the ledger reads above come first.
        replies = [
            entries,
            client.get(f"/packages/{exchange.package}/audit", headers=headers),
            client.get(
                "/authz/explain",
                params={"user": "kz.officer", "package": exchange.package, "action": "read"},
                headers=headers,
            ),
        ]
    with pytest.raises(NotFound):
        vault.audit_package(tj, exchange.package)
    with pytest.raises(NotFound):
        vault.explain(tj, username="kz.officer", package_id=exchange.package, action="read")
    assert [r.status_code for r in replies] == [200, 404, 404]
    for reply in replies[1:]:  # a 404 may echo nothing of what was asked
        assert_absent(reply.content, secrets[1:], "an API refusal")
    assert_absent(replies[0].content, secrets, "GET /ledger/entries")
    # The TJ auditor's own reads are the only entries it may open.
    openings = replies[0].json()["openings"]
    assert openings
    assert all(o["fields"]["actor_country"][1] == "TJ" for o in openings)


def test_uz_auditor_opens_the_exchange_and_it_verifies(world: World, exchange: Exchange) -> None:
    vault, uz = world.vault, world["uz.auditor"]
    _, document = export(vault, uz, scoped=True)
    result = verify_export(document, document["vkey"])
    assert result.ok, result.problem
    opened = {o["seq"]: o["fields"] for o in document["openings"]}
    packages = {f["package"][1] for f in opened.values()}
    assert exchange.package in packages
    users = {f["actor_user"][1] for f in opened.values()}
    assert {"uz.officer", "kz.officer"} <= users
    releases = {f["release"][1] for f in opened.values()}
    assert exchange.release in releases
    # The ledger view opens them too.
    actions = {(e.actor_user, e.action) for e in vault.ledger_show(uz) if not e.hidden}
    assert ("kz.officer", "download") in actions
    # The KZ auditor sees the download; the public export has no opening at all.
    kz_view = [e for e in vault.ledger_show(world["kz.auditor"]) if e.action == "download"]
    assert kz_view
    assert not any(e.hidden for e in kz_view)
    public_raw, public = export(vault, uz, scoped=False)
    assert "openings" not in public
    assert_absent(public_raw, exchange.secrets(), "the public export")


def test_admin_sees_no_package_openings(world: World, exchange: Exchange) -> None:
    shown = list(world.vault.ledger_show(world["uz.admin"]))
    assert all(e.hidden for e in shown if e.action in ("upload", "release", "download"))
    assert_absent(repr(shown).encode(), [exchange.package, exchange.release], "admin's view")
    # Entries about no package (the admin's own, user management) open for admins.
    assert any(not e.hidden and e.action == "manage" for e in shown)


def test_tampered_scoped_export_fails(world: World, exchange: Exchange) -> None:
    _, document = export(world.vault, world["uz.auditor"], scoped=True)
    first, second = document["openings"][:2]
    bad = json.loads(json.dumps(document))
    bad["openings"][0]["fields"]["package"][1] = "f" * 32
    assert not verify_export(bad, document["vkey"]).ok
    swapped = json.loads(json.dumps(document))
    swapped["openings"][0] = {**second, "seq": first["seq"]}
    assert not verify_export(swapped, document["vkey"]).ok


def test_purge_destroys_openings_and_the_log_still_verifies(
    world: World, exchange: Exchange, settings: Settings
) -> None:
    vault, uz = world.vault, world["uz.auditor"]
    before = vault.ledger.checkpoint()
    old = note.open_checkpoint(before.note, [vault.ledger.verifier], before.origin)
    with Session(vault.engine) as session:
        rows = session.exec(
            select(LedgerEntry).where(col(LedgerEntry.opening_package) == exchange.package)
        ).all()
        destroyed = [(r.seq, bytes(r.opening_sealed or b"")) for r in rows]
    assert len(destroyed) >= 4
    vault.purge(local_operator(), exchange.package)
    _, document = export(vault, uz, scoped=True)
    result = verify_export(document, document["vkey"], extra=[old])
    assert result.ok, result.problem
    gone = {seq for seq, _ in destroyed}
    assert not gone & {o["seq"] for o in document["openings"]}
    for seq in gone:  # the entries are still there, committed
        assert decode(base64.b64decode(document["entries"][seq])).hidden
    if settings.resolved_database_url.startswith("sqlite"):
        files = sorted(p for p in settings.data_dir.rglob("*") if p.is_file())
        blob = b"".join(p.read_bytes() for p in files)
        for seq, sealed in destroyed:
            assert len(sealed) > 64
            assert sealed[1:33] not in blob, f"the sealed opening of entry {seq} survived"
            assert sealed[-32:] not in blob, f"the end of entry {seq}'s sealed opening survived"


def test_a_read_recorded_just_after_a_purge_loses_its_opening_at_the_next_gc(
    world: World, exchange: Exchange
) -> None:
    """A read authorised before the purge, its entry committed after it (group commit): the
    purge could not destroy that opening yet, and gc does. The purge's own opening (who
    purged) stays, and so does a later refusal's."""
    vault, kz = world.vault, world["kz.officer"]
    pending = vault.packages.package(kz, exchange.package)  # authorised and done
    purge_receipt = vault.purge(local_operator(), exchange.package).receipt
    _, late = vault.core.finish(pending)  # recorded after the purge committed

    def about_the_package() -> set[int]:
        with Session(vault.engine) as session:
            return set(
                session.exec(
                    select(LedgerEntry.seq).where(
                        col(LedgerEntry.opening_package) == exchange.package,
                        col(LedgerEntry.opening_sealed).is_not(None),
                    )
                ).all()
            )

    # A later attempt on the purged id is a new event: its refusal keeps its opening.
    with pytest.raises(NotFound) as refused:
        vault.get_package(kz, exchange.package)
    assert about_the_package() == {purge_receipt, late, refused.value.receipt}
    vault.gc(local_operator())
    assert about_the_package() == {purge_receipt, refused.value.receipt}


def test_retention_expires_old_openings(
    world: World, exchange: Exchange, settings: Settings
) -> None:
    assert world.vault.admin.expire_openings() == 0  # no retention set
    kept = settings.model_copy(update={"ledger_opening_retention_days": 30})
    vault = Vault.open(kept, create=False)
    try:
        assert vault.admin.expire_openings(now=utcnow() + timedelta(days=29)) == 0
        assert vault.admin.expire_openings(now=utcnow() + timedelta(days=31)) > 0
        _, document = export(vault, world["uz.auditor"], scoped=True)
    finally:
        vault.close()
    assert verify_export(document, document["vkey"]).ok
    # Only the export's own read entry, written after the expiry, may still open.
    assert len(document["openings"]) <= 1


def test_a_ledger_switching_from_v1_to_v2_verifies(
    tmp_path: Path, database_url: str | None
) -> None:
    """Entries written before version 2 stay as they are; the log verifies across the switch,
    in the database and exported."""
    common: dict[str, Any] = {
        "data_dir": tmp_path / "vault-data",
        "database_url": database_url,
        "metrics_token": METRICS_TOKEN,
        **FAST_ARGON2,
    }
    old = Vault.open(load_settings(ledger_entry_version=1, **common))
    try:
        seed(old)
    finally:
        old.close()
    vault = Vault.open(load_settings(ledger_entry_version=2, **common), create=False)
    try:
        uz = vault.authenticate(vault.login("uz.auditor", PASSWORD).access_token)
        list(vault.ledger_show(uz))
        report = vault.verify_ledger(local_operator())
        assert report.ok, report.problem
        _, document = export(vault, uz, scoped=True)
    finally:
        vault.close()
    versions = [base64.b64decode(e)[0] for e in document["entries"]]
    assert versions[0] == 1
    assert versions[-1] == 2
    assert verify_export(document, document["vkey"]).ok
    # The v1 entries reveal what they always did, to anyone.
    assert decode(base64.b64decode(document["entries"][0])).actor_user.startswith("local:")


def test_web_ledger_page_follows_the_scope(world: World, exchange: Exchange) -> None:
    from tests.ui.conftest import Browser

    pages = {}
    for user in ("tj.auditor", "uz.auditor"):
        with TestClient(create_app(vault=world.vault)) as client:
            browser = Browser(client)
            browser.sign_in(user)
            pages[user] = [
                client.get("/ui/audit/ledger").content,  # one page of entries
                client.get("/ui/audit/ledger", params={"decision": "allow"}).content,  # filtered
            ]
    for page in pages["tj.auditor"]:
        assert_absent(page, exchange.secrets(), "the TJ auditor's web ledger page")
    for page in pages["uz.auditor"]:
        assert b"kz.officer" in page


def test_a_sealed_opening_moved_to_another_entry_does_not_open(
    world: World, exchange: Exchange
) -> None:
    vault = world.vault
    with Session(vault.engine) as session:
        rows = session.exec(
            select(LedgerEntry).where(col(LedgerEntry.opening_package) == exchange.package)
        ).all()
        first, second = rows[0], rows[1]
        first.opening_sealed, second.opening_sealed = second.opening_sealed, first.opening_sealed
        first.opening_key, second.opening_key = second.opening_key, first.opening_key
        session.add_all([first, second])
        session.commit()
    with pytest.raises(IntegrityError):
        list(vault.ledger_show(world["uz.auditor"]))


# Who opens what through GET /ledger/entries: (status, countries whose entries open, whether
# entries about the package open).
LEDGER_SCOPE = {
    "uz.officer": (403, None, False),
    "kz.officer": (403, None, False),
    "uz.auditor": (200, "UZ", True),
    "kz.auditor": (200, "KZ", True),
    "tj.auditor": (200, "TJ", False),
    "uz.admin": (200, None, False),
}


@pytest.mark.parametrize("user", sorted(LEDGER_SCOPE))
def test_ledger_entries_scope_by_role_and_country(
    user: str, world: World, exchange: Exchange
) -> None:
    status, country, sees_package = LEDGER_SCOPE[user]
    who = world[user]
    token = world.vault.tokens.issue(who.user_id, session_id=who.session_id)
    with TestClient(create_app(vault=world.vault)) as client:
        reply = client.get(
            "/ledger/entries",
            params={"start": 0, "end": 1000},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert reply.status_code == status, reply.text
    if status != 200:
        assert_absent(reply.content, exchange.secrets(), f"{user}'s refusal")
        return
    openings = reply.json()["openings"]
    assert openings
    about_package = [o for o in openings if o["fields"]["package"][1] == exchange.package]
    assert bool(about_package) == sees_package
    if country is None:  # the admin: only entries about no package
        assert all(o["fields"]["package"][1] == "" for o in openings)
    else:
        concerned = {
            o["fields"]["actor_country"][1] for o in openings if not o["fields"]["package"][1]
        }
        assert concerned <= {country}


def http_export(world: World, user: str, *, scoped: bool) -> tuple[bytes, dict[str, Any]]:
    """``GET /ledger/export`` as ``user`` (the route ``blovault ledger export --remote`` asks)."""
    who = world[user]
    token = world.vault.tokens.issue(who.user_id, session_id=who.session_id)
    with TestClient(create_app(vault=world.vault)) as client:
        reply = client.get(
            "/ledger/export",
            params={"scoped": "true"} if scoped else {},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert reply.status_code == 200, reply.text
    return reply.content, reply.json()


def test_scoped_export_over_http_follows_the_scope(world: World, exchange: Exchange) -> None:
    """Every byte of the TJ auditor's scoped export over HTTP is free of the UZ-KZ exchange;
    the UZ auditor's opens it and verifies; the public one carries no opening."""
    raw, document = http_export(world, "tj.auditor", scoped=True)
    assert_absent(raw, exchange.secrets(), "the TJ auditor's HTTP scoped export")
    assert verify_export(document, document["vkey"]).ok
    assert document["openings"]
    assert all(o["fields"]["actor_country"][1] == "TJ" for o in document["openings"])
    _, document = http_export(world, "uz.auditor", scoped=True)
    result = verify_export(document, document["vkey"])
    assert result.ok, result.problem
    opened = {o["seq"]: o["fields"] for o in document["openings"]}
    assert exchange.package in {f["package"][1] for f in opened.values()}
    assert exchange.release in {f["release"][1] for f in opened.values()}
    raw, document = http_export(world, "uz.auditor", scoped=False)
    assert "openings" not in document
    assert_absent(raw, exchange.secrets(), "the public HTTP export")
    assert verify_export(document, document["vkey"]).ok


def test_an_id_refused_before_it_was_a_package_concerns_its_country_once_it_is(
    world: World,
) -> None:
    """Package ids are chosen by their uploader. A refusal that names an id before it is a
    package concerns no originating country; once UZ uploads a package with that id, the
    entries about it concern UZ (whatever was remembered of the earlier refusal)."""
    vault, tj, uz = world.vault, world["tj.officer"], world["uz.officer"]
    package_id = "ab" * 16

    def tj_reads_it() -> None:
        with pytest.raises(NotFound):
            vault.get_package(tj, package_id)

    def uz_auditor_opens_tj_reading_it() -> bool:
        return any(
            not e.hidden and e.actor_user == "tj.officer" and e.package == package_id
            for e in vault.ledger_show(world["uz.auditor"])
        )

    tj_reads_it()
    assert not uz_auditor_opens_tj_reading_it()
    meta = NewPackage(
        title="Seizure", classification=Classification.RESTRICTED, package_id=package_id
    )
    vault.upload(uz, meta, [IncomingFile("n.txt", io.BytesIO(b"x"))])
    tj_reads_it()
    assert uz_auditor_opens_tj_reading_it()


def test_an_upload_finds_its_country_without_a_query(world: World) -> None:
    """An upload's entry concerns its package's country, taken from the package its own
    transaction adds: no SELECT of the package's agency inside the write lock."""
    vault, uz = world.vault, world["uz.officer"]
    statements: list[str] = []

    def grab(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement.lower())

    event.listen(vault.core.engine, "before_cursor_execute", grab)
    try:
        meta = NewPackage(title="Seizure", classification=Classification.RESTRICTED)
        package = vault.upload(uz, meta, [IncomingFile("n.txt", io.BytesIO(b"x"))]).package
    finally:
        event.remove(vault.core.engine, "before_cursor_execute", grab)
    assert any(s.startswith("insert into ledgerentry") for s in statements)
    assert not [s for s in statements if "join package" in s or "join agency" in s]
    uploads = [
        e for e in vault.ledger_show(world["uz.auditor"])
        if e.action == "upload" and e.package == package.id
    ]  # fmt: skip
    assert len(uploads) == 1
    assert not uploads[0].hidden


def test_an_upload_rolled_back_leaves_no_country_behind(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TJ upload whose transaction rolls back after its entry was built leaves nothing
    remembered of its id: once UZ uploads a package with that id, the entries about it
    concern UZ, and the TJ auditor opens only TJ's own."""
    vault, tj, uz = world.vault, world["tj.officer"], world["uz.officer"]
    package_id = "cd" * 16
    meta = NewPackage(
        title="Seizure", classification=Classification.RESTRICTED, package_id=package_id
    )
    core, record_allowed = vault.core, vault.core.record_allowed

    def then_fail(*args: Any, **kwargs: Any) -> int:
        record_allowed(*args, **kwargs)
        raise OSError("the disk failed")

    with monkeypatch.context() as patch:
        patch.setattr(core, "record_allowed", then_fail)
        with pytest.raises(OSError, match="the disk failed"):
            vault.upload(tj, meta, [IncomingFile("n.txt", io.BytesIO(b"x"))])
    vault.upload(uz, meta, [IncomingFile("n.txt", io.BytesIO(b"x"))])
    vault.get_package(uz, package_id)
    with pytest.raises(NotFound):
        vault.get_package(tj, package_id)
    seen = {
        (e.action, e.actor_user)
        for e in vault.ledger_show(world["tj.auditor"])
        if e.package == package_id and not e.hidden
    }
    assert seen == {("read", "tj.officer")}  # its own read; UZ's entries concern UZ alone
    opened = {
        (e.action, e.actor_user)
        for e in vault.ledger_show(world["uz.auditor"])
        if e.package == package_id and not e.hidden
    }
    assert {("upload", "uz.officer"), ("read", "uz.officer"), ("read", "tj.officer")} <= opened
