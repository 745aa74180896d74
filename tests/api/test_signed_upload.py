"""Signed uploads over HTTP (issue 13): the server checks the originator's signature before
it accepts a package; every bad signature, manifest or key is refused with a clear error,
recorded in the ledger, and leaves nothing stored."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, func, select

from tests.conftest import PASSWORD, World, running_server
from vault import crypto
from vault import manifest as m
from vault.config import load_settings
from vault.errors import AccessDenied
from vault.models import Package, PackageRecords
from vault.schemas import NewPackage
from vault.seizures.digest import records_sha256
from vault.seizures.schema import validate_records
from vault.service import IncomingFile, Vault, local_operator

FILES = [("report.pdf", b"first file"), ("photo.jpg", b"second, longer file" * 100)]
META: dict[str, Any] = {
    "title": "Oybek seizure",
    "description": "two couriers",
    "classification": "RESTRICTED",
    "handling": "H1",
    "handling_note": "",
}


@dataclasses.dataclass
class Api:
    http: httpx.Client
    world: World
    headers: dict[str, str]

    def keyed(self, user: str) -> tuple[Ed25519PrivateKey, str]:
        key = crypto.new_ed25519_private_key()
        public = base64.b64encode(crypto.ed25519_public_bytes(key.public_key())).decode()
        reply = self.http.post("/keys", json={"public_key": public}, headers=self.auth(user))
        assert reply.status_code == 201, reply.text
        return key, str(reply.json()["id"])

    def auth(self, user: str) -> dict[str, str]:
        token = self.world.vault.login(user, PASSWORD).access_token
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(world: World) -> Iterator[Api]:
    with running_server(world.vault) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield Api(http=http, world=world, headers={})


def manifest_for(
    package_id: str,
    files: list[tuple[str, bytes]],
    records: list[dict[str, Any]] | None = None,
    **meta: str,
) -> m.Manifest:
    fields = META | meta
    return m.Manifest(
        package_id=package_id,
        agency="UZ-CUSTOMS",
        classification=fields["classification"],
        handling=fields["handling"],
        handling_note=fields["handling_note"],
        title_sha256=m.sha256_text(fields["title"]),
        description_sha256=m.sha256_text(fields["description"]),
        records_sha256=records_sha256(validate_records(records or [])),
        files=tuple(
            m.ManifestFile(name, len(data), m.sha256_text(data.decode())) for name, data in files
        ),
    )


def part(key_id: str, signed: m.Manifest, key: Ed25519PrivateKey, **over: str) -> bytes:
    body = {
        "key_id": key_id,
        "manifest": base64.b64encode(signed.encode()).decode(),
        "signature": base64.b64encode(m.sign(key, signed)).decode(),
    } | over
    return json.dumps(body).encode()


def post(
    api: Api,
    user: str,
    package_id: str,
    signature: bytes | None,
    files: list[tuple[str, bytes]] = FILES,
    trailing: bool = False,
    records: list[dict[str, Any]] | None = None,
) -> httpx.Response:
    parts: list[tuple[str, Any]] = [
        ("metadata", (None, json.dumps(META | {"package_id": package_id}), "application/json"))
    ]
    if records is not None:
        parts.append(("records", (None, json.dumps(records), "application/json")))
    parts += [("file", (name, data, "application/octet-stream")) for name, data in files]
    if signature is not None:
        parts.append(("signature", (None, signature, "application/json")))
    if trailing:
        parts.append(("file", ("late.txt", b"late", "application/octet-stream")))
    return api.http.post("/packages", files=parts, headers=api.auth(user))


def stored(api: Api) -> tuple[int, int]:
    """Packages in the database and objects in the store."""
    vault = api.world.vault
    with Session(vault.engine) as session:
        packages = session.exec(select(func.count()).select_from(Package)).one()
    return packages, len(list(vault.store.keys()))


def last_entry(api: Api) -> Any:
    return api.world.vault.unscoped_entries()[-1]


def test_a_signed_upload_is_accepted_and_shown(api: Api) -> None:
    key, key_id = api.keyed("uz.officer")
    pid = "1" * 32
    reply = post(api, "uz.officer", pid, part(key_id, manifest_for(pid, FILES), key))
    assert reply.status_code == 201, reply.text
    signature = reply.json()["package"]["signature"]
    assert (signature["signer"], signature["agency"], signature["key_id"]) == (
        "uz.officer",
        "UZ-CUSTOMS",
        key_id,
    )
    shown = api.http.get(f"/packages/{pid}", headers=api.auth("uz.officer")).json()
    assert shown["signature"] == signature
    # Sealed: neither the manifest's names nor its bytes are in the database in clear.
    with Session(api.world.vault.engine) as session:
        row = session.get(Package, pid)
        assert row is not None
        assert b"report.pdf" not in row.sealed_meta
    duplicate = post(api, "uz.officer", pid, part(key_id, manifest_for(pid, FILES), key))
    assert duplicate.status_code == 409, duplicate.text
    assert "already in use" in duplicate.json()["error"]["message"]


def _bad_cases(
    key: Ed25519PrivateKey, key_id: str, pid: str
) -> list[tuple[str, bytes, list[tuple[str, bytes]], int, str]]:
    good = manifest_for(pid, FILES)
    sig = m.sign(key, good)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    other = Ed25519PrivateKey.generate()
    return [
        ("not base64", part(key_id, good, key, signature="@@@"), FILES, 422, "base64"),
        (
            "truncated",
            part(key_id, good, key, signature=base64.b64encode(sig[:40]).decode()),
            FILES,
            422,
            "64 bytes",
        ),
        (
            "flipped",
            part(key_id, good, key, signature=base64.b64encode(flipped).decode()),
            FILES,
            422,
            "does not verify",
        ),
        ("signed by another key", part(key_id, good, other), FILES, 422, "does not verify"),
        ("not json", b"{", FILES, 422, "not JSON"),
        ("extra field", part(key_id, good, key, extra="x"), FILES, 422, "exactly"),
        (
            "another package id",
            part(key_id, manifest_for("2" * 32, FILES), key),
            FILES,
            422,
            "another package id",
        ),
        ("reordered files", part(key_id, good, key), FILES[::-1], 422, "position"),
        (
            "file missing from the manifest",
            part(key_id, manifest_for(pid, FILES[:1]), key),
            FILES,
            422,
            "file 2 is not in the signed manifest",
        ),
        ("extra file in the manifest", part(key_id, good, key), FILES[:1], 422, "lists 2 files"),
        (
            "changed content",
            part(key_id, good, key),
            [FILES[0], (FILES[1][0], b"other")],
            422,
            "does not match",
        ),
        (
            "changed title",
            part(key_id, manifest_for(pid, FILES, title="else"), key),
            FILES,
            422,
            "title",
        ),
        (
            "truncated manifest",
            part(key_id, good, key, manifest=base64.b64encode(good.encode()[:-3]).decode()),
            FILES,
            422,
            "truncated",
        ),
        ("unknown key", part("f" * 32, good, key), FILES, 403, "not registered"),
    ]


def test_bad_signatures_are_refused_and_nothing_stored(api: Api) -> None:
    key, key_id = api.keyed("uz.officer")
    pid = "3" * 32
    before = stored(api)
    for label, signature, files, status, message in _bad_cases(key, key_id, pid):
        reply = post(api, "uz.officer", pid, signature, files)
        assert reply.status_code == status, (label, reply.text)
        error = reply.json()["error"]
        assert message in error["message"], (label, error)
        assert stored(api) == before, label
        entry = last_entry(api)
        assert (entry.action, entry.decision, entry.actor_user) == ("upload", "deny", "uz.officer")
    late = post(api, "uz.officer", pid, part(key_id, manifest_for(pid, FILES), key), trailing=True)
    assert late.status_code == 422
    assert "nothing may follow" in late.text
    assert stored(api) == before


RECORDS: list[dict[str, Any]] = [
    {"date": "2014-03-12 06:40", "crossing_point": "OYBEK", "direction": "entry",
     "commodity": "heroin", "quantity": 14.8, "unit": "kg", "detained": 2},
    {"date": "12.03.2014", "crossing_point": "oybek", "direction": "выезд",
     "commodity": "Гашиш", "quantity": "500", "unit": "g", "concealment": "в колесе"},
]  # fmt: skip


def test_the_signed_manifest_covers_the_seizure_records(api: Api) -> None:
    """Records differing from the ones the manifest's digest states (changed, added, left
    out) are refused, nothing stored; the signed records are then returned as uploaded."""
    api.world.vault.add_crossing_point(
        local_operator(), "OYBEK", country="UZ", name="Oybek", blo_opened=date(2014, 5, 1)
    )
    key, key_id = api.keyed("uz.officer")
    pid = "5" * 32
    signed = part(key_id, manifest_for(pid, FILES, RECORDS), key)
    changed = [RECORDS[0] | {"quantity": 1.48}, RECORDS[1]]

    def records_stored() -> int:
        with Session(api.world.vault.engine) as session:
            return session.exec(select(func.count()).select_from(PackageRecords)).one()

    before = stored(api)
    for label, records in (("changed", changed), ("one left out", RECORDS[:1]), ("none", None)):
        reply = post(api, "uz.officer", pid, signed, records=records)
        assert reply.status_code == 422, (label, reply.text)
        assert "seizure records digest differs from the signed manifest" in reply.text, label
        assert stored(api) == before, label
        assert records_stored() == 0, label
        assert last_entry(api).decision == "deny"
    # Records the manifest does not cover: a manifest stating no records, records sent.
    unsigned_records = part(key_id, manifest_for(pid, FILES), key)
    reply = post(api, "uz.officer", pid, unsigned_records, records=RECORDS)
    assert reply.status_code == 422
    assert "seizure records" in reply.text
    assert stored(api) == before
    assert records_stored() == 0

    reply = post(api, "uz.officer", pid, signed, records=RECORDS)
    assert reply.status_code == 201, reply.text
    shown = api.http.get(f"/packages/{pid}", headers=api.auth("uz.officer")).json()
    assert shown["records"] == reply.json()["package"]["records"]
    assert [r["commodity"] for r in shown["records"]] == ["heroin", "cannabis resin"]
    assert records_sha256(validate_records(shown["records"])) == (
        manifest_for(pid, FILES, RECORDS).records_sha256
    )


def test_keys_of_others_or_revoked_are_refused(api: Api) -> None:
    key, key_id = api.keyed("uz.officer")
    theirs, their_id = api.keyed("uz.border")
    pid = "4" * 32
    before = stored(api)
    reply = post(api, "uz.officer", pid, part(their_id, manifest_for(pid, FILES), theirs))
    assert reply.status_code == 403
    assert "another user" in reply.text
    revoked = api.http.post(f"/keys/{key_id}/revoke", headers=api.auth("uz.officer"))
    assert revoked.status_code == 200, revoked.text
    reply = post(api, "uz.officer", pid, part(key_id, manifest_for(pid, FILES), key))
    assert reply.status_code == 403
    assert "revoked" in reply.text
    assert stored(api) == before
    # Revoking twice, or someone else's key, is refused too.
    assert (
        api.http.post(f"/keys/{key_id}/revoke", headers=api.auth("uz.officer")).status_code == 409
    )
    assert (
        api.http.post(f"/keys/{their_id}/revoke", headers=api.auth("uz.officer")).status_code == 404
    )


def test_key_routes_refuse_bad_input(api: Api) -> None:
    headers = api.auth("uz.officer")
    for body in ({"public_key": "x" * 44}, {"public_key": "short"}, {"other": 1}, {}):
        assert api.http.post("/keys", json=body, headers=headers).status_code == 422, body
    assert api.http.get("/keys/not-an-id", headers=headers).status_code == 422
    assert api.http.get(f"/keys/{'a' * 32}", headers=headers).status_code == 404
    auditor = api.auth("uz.auditor")
    public = base64.b64encode(bytes(32)).decode()
    assert api.http.post("/keys", json={"public_key": public}, headers=auditor).status_code == 403


def test_unsigned_uploads_where_signatures_are_required(world: World, tmp_path: Path) -> None:
    strict = Vault.open(
        load_settings(
            data_dir=world.settings.data_dir,
            database_url=world.settings.database_url,
            require_signatures=True,
        )
    )
    try:
        assert strict.settings.signatures_required
        with pytest.raises(AccessDenied, match="only signed packages"):
            strict.upload(
                world["uz.officer"],
                NewPackage(title="unsigned"),
                [IncomingFile(name="a.txt", reader=__import__("io").BytesIO(b"a"))],
            )
    finally:
        strict.close()
    assert not load_settings(data_dir=tmp_path).signatures_required
    assert load_settings(data_dir=tmp_path, env="production").signatures_required
