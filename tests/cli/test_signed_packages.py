"""Originator-signed packages through the ``blovault`` command line against a live server
(issue 13): keys init/register/revoke/audit, signed upload, the recipient's check on
download, ``package verify``, and the operator attacks the signatures exist to expose."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from blo_vault.cli.client import ApiClient
from tests.cli import test_ledger_witnessed_cli as witnessed_log
from tests.cli.test_cli_roundtrip import assert_one_line_error, make_file, ok_json, sha256_of
from tests.cli.test_ledger_witnessed_cli import Witnessed
from tests.conftest import CliRunner, World, reseal_package_digest
from vault import crypto
from vault import manifest as m
from vault.ledger.entry import decode
from vault.models import OfficerKey, Package, PackageFile, PackageRecords
from vault.schemas import NewPackage
from vault.seizures.digest import records_sha256
from vault.seizures.store import open_records, records_row
from vault.service import IncomingFile, local_operator
from vault.service import sealed as sealed_meta
from vault.service.signatures import SignedManifest

LoggedIn = Callable[[str], None]
# Two witness servers under a 2-of-2 policy and the vault's publishing round, as there.
witnessed = witnessed_log.witnessed


def _officer_with_key(cli: CliRunner, logged_in: LoggedIn, user: str) -> str:
    logged_in(user)
    made = ok_json(cli("keys", "init", "--no-passphrase", "--json", user=user))
    registered = ok_json(cli("keys", "register", "--json", user=user))
    assert registered["id"] == made["key_id"]
    return str(made["key_id"])


def _signed_package(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> tuple[str, dict[str, str]]:
    """uz.officer uploads two files, signed, and releases them to KZ."""
    _officer_with_key(cli, logged_in, "uz.officer")
    src = tmp_path / "src"
    src.mkdir()
    sums = {
        name: make_file(src / name, size, seed=i)
        for i, (name, size) in enumerate(
            {"report.pdf": 70_000, "photo.jpg": 3 * 1024 * 1024 + 5}.items()
        )
    }
    result = ok_json(
        cli(
            "package",
            "upload",
            src / "report.pdf",
            src / "photo.jpg",
            "--title",
            "Oybek seizure",
            "--classification",
            "RESTRICTED",
            "--handling",
            "H1",
            "--json",
            user="uz.officer",
        )
    )
    package_id = str(result["id"])
    assert result["package"]["signature"]["signer"] == "uz.officer"
    ok_json(cli("package", "release", package_id, "--country", "KZ", "--json", user="uz.officer"))
    return package_id, sums


def test_signed_round_trip_and_offline_verify(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> None:
    package_id, sums = _signed_package(cli, logged_in, world, tmp_path)
    vkey = world.vault.ledger_vkey
    logged_in("kz.officer")
    shown = cli("package", "show", package_id, user="kz.officer")
    assert "signed by uz.officer (UZ-CUSTOMS)" in shown.stdout

    out_dir, bundle = tmp_path / "kz", tmp_path / "package.signed.json"
    no_key = cli("package", "download", package_id, "-o", out_dir, user="kz.officer")
    assert_one_line_error(no_key, 2)
    assert "--vkey" in no_key.stderr
    done = cli(
        "package",
        "download",
        package_id,
        "-o",
        out_dir,
        "--vkey",
        vkey,
        "--manifest",
        bundle,
        user="kz.officer",
    )
    assert done.code == 0, done.stderr
    assert "checked here against the ledger" in done.stderr
    assert {p.name: sha256_of(p) for p in out_dir.iterdir()} == sums

    checked = cli("package", "verify", out_dir, "--manifest", bundle, "--vkey", vkey)
    assert checked.code == 0, checked.stderr
    (out_dir / "report.pdf").write_bytes(b"not the report")
    changed = cli("package", "verify", out_dir, "--manifest", bundle, "--vkey", vkey)
    assert_one_line_error(changed, 6)
    assert "do not match the signed manifest" in changed.stderr
    # Another vault's key proves nothing.
    _, other_vkey = crypto_vkey_pair()
    foreign = cli("package", "verify", out_dir, "--manifest", bundle, "--vkey", other_vkey)
    assert_one_line_error(foreign, 6)


def crypto_vkey_pair() -> tuple[str, str]:
    from vault.ledger import note

    return note.generate_signer_key("other.example/vault")


def test_operator_swapping_content_is_caught_and_nothing_kept(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> None:
    """The operator holds the KEK and the database: it seals other content under a fresh
    data key and rewrites the stored name, digest and size. The server serves it as
    genuine; the recipient's CLI refuses it and keeps nothing."""
    package_id, _ = _signed_package(cli, logged_in, world, tmp_path)
    vault = world.vault
    forged = b"a different report, sealed correctly"
    with Session(vault.engine) as session:
        package = session.get(Package, package_id)
        assert package is not None
        row = session.exec(
            select(PackageFile).where(
                PackageFile.package_id == package_id, PackageFile.position == 0
            )
        ).one()
        opened = sealed_meta.open_meta(vault.keys, package)
        identity = sealed_meta.file_identity(package_id, row.id)
        data_key = crypto.new_data_key()
        reader = crypto.SealingReader(io.BytesIO(forged), data_key, identity=identity)
        vault.store.put(row.id, reader)
        digest = reader.sha256_hex()
        reader.close()
        wrapped = vault.keys.keyring.wrap(data_key, context=identity)
        row.kek_id, row.wrapped_key = wrapped.kek_id, wrapped.blob
        row.sealed_meta = crypto.seal_bytes(
            opened.key,
            json.dumps({"name": "report.pdf", "sha256": digest}).encode(),
            context=identity,
        )
        row.size = len(forged)
        session.add(row)
        reseal_package_digest(vault, session, package_id)
        session.commit()
    logged_in("kz.officer")
    out_dir = tmp_path / "kz-forged"
    refused = cli(
        "package",
        "download",
        package_id,
        "-o",
        out_dir,
        "--vkey",
        vault.ledger_vkey,
        user="kz.officer",
    )
    assert_one_line_error(refused, 6)
    assert "does not match its signed manifest" in refused.stderr
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_another_signed_package_served_in_place_of_the_one_asked_for_is_refused(
    cli: CliRunner,
    logged_in: LoggedIn,
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host answers every request for package X as if it named package Y, another package
    genuinely signed by the same officer and released to the caller: Y's signature verifies,
    so only the id asked for can tell. The download is refused and nothing is kept."""
    wanted, _ = _signed_package(cli, logged_in, world, tmp_path)
    make_file(tmp_path / "src" / "old-report.pdf", 5_000, seed=9)
    other = str(
        ok_json(
            cli(
                "package",
                "upload",
                tmp_path / "src" / "old-report.pdf",
                "--title",
                "Old",
                "--json",
                user="uz.officer",
            )
        )["id"]
    )
    ok_json(cli("package", "release", other, "--country", "KZ", "--json", user="uz.officer"))
    logged_in("kz.officer")
    send = httpx.Client.send

    def lying_send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        request.url = request.url.copy_with(path=request.url.path.replace(wanted, other))
        return send(self, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", lying_send)
    out_dir = tmp_path / "kz"
    args = ("-o", out_dir, "--vkey", world.vault.ledger_vkey)
    refused = cli("package", "download", wanted, *args, user="kz.officer")
    assert_one_line_error(refused, 6)
    assert "another package than the one asked for" in refused.stderr
    assert not out_dir.exists() or list(out_dir.iterdir()) == []
    # The same server answering honestly for Y itself is fine: the check is on the id asked.
    ok_json(cli("package", "download", other, *args, "--json", user="kz.officer"))


def test_a_key_the_operator_registers_is_flagged_by_keys_audit(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> None:
    vault, op = world.vault, local_operator()
    own = _officer_with_key(cli, logged_in, "uz.officer")
    clean = cli("keys", "audit", "--vkey", vault.ledger_vkey, "--json", user="uz.officer")
    assert clean.code == 0, clean.stderr
    # The operator revokes the officer's key and registers one of its own for them...
    vault.revoke_key(op, own, owner="uz.officer")
    foreign_key = crypto.new_ed25519_private_key()
    public = crypto.ed25519_public_bytes(foreign_key.public_key())
    info = vault.register_key(op, base64.b64encode(public).decode(), owner="uz.officer")
    # ...and signs a package with it, as the officer: the server accepts it.
    officer = world["uz.officer"]
    meta = NewPackage(title="planted", package_id="ab" * 16)
    content = b"planted evidence"
    signed = m.Manifest(
        package_id=meta.package_id or "",
        agency="UZ-CUSTOMS",
        classification="UNCLASSIFIED",
        handling="H0",
        handling_note="",
        title_sha256=m.sha256_text("planted"),
        description_sha256=m.sha256_text(""),
        records_sha256=records_sha256([]),
        files=(m.ManifestFile("note.txt", len(content), m.sha256_text("planted evidence")),),
    )
    result = vault.upload(
        officer,
        meta,
        [IncomingFile(name="note.txt", reader=io.BytesIO(content))],
        lambda: SignedManifest(info.id, signed.encode(), m.sign(foreign_key, signed)),
    )
    assert result.package.signature is not None
    assert result.package.signature.key_id == info.id

    audit = cli("keys", "audit", "--vkey", vault.ledger_vkey, "--json", user="uz.officer")
    assert audit.code == 6, audit.stderr
    rows = json.loads(audit.stdout)["entries"]
    flagged = [r for r in rows if r["flag"]]
    assert [r["key_id"] for r in flagged] == [info.id]
    assert flagged[0]["by"] == op.username
    assert "were not created here" in audit.stderr
    # The registration is in the ledger export for every auditor to see.
    exported = io.StringIO()
    vault.export_ledger(op, exported)
    entries = [decode(base64.b64decode(e)) for e in json.loads(exported.getvalue())["entries"]]
    registrations = [e for e in entries if e.action == "key.register"]
    assert [e.reason.split(" ")[1] for e in registrations] == [own, info.id]
    assert registrations[1].subject == "uz.officer"
    assert registrations[1].reason.endswith(" UZ-CUSTOMS")
    _hidden_from_the_list_but_not_from_an_export(cli, world, tmp_path, own, info.id, exported)


def _hidden_from_the_list_but_not_from_an_export(
    cli: CliRunner, world: World, tmp_path: Path, own: str, planted: str, exported: io.StringIO
) -> None:
    """The server proves each entry it lists, not that it listed them all: an operator that
    leaves its planted key (and the revocation) out of GET /keys/history passes the audit.
    A verified export of the ledger can't leave anything out up to its checkpoint."""
    vault = world.vault
    with pytest.MonkeyPatch.context() as patch:
        listed = ApiClient.key_history

        def omitting(self: ApiClient, user: str | None = None) -> dict[str, Any]:
            history = listed(self, user)
            history["entries"] = history["entries"][:1]  # only the officer's own registration
            return history

        patch.setattr(ApiClient, "key_history", omitting)
        fooled = cli("keys", "audit", "--vkey", vault.ledger_vkey, "--json", user="uz.officer")
        assert fooled.code == 0, fooled.stderr  # what --export is for
    path = tmp_path / "export.json"
    path.write_text(exported.getvalue())
    args = ("keys", "audit", "--export", path, "--vkey", vault.ledger_vkey, "--json")
    audit = cli(*args, user="uz.officer")
    assert audit.code == 6, audit.stderr
    rows = json.loads(audit.stdout)["entries"]
    assert [(r["action"], r["key_id"], bool(r["flag"])) for r in rows] == [
        ("key.register", own, False),
        ("key.revoke", own, False),
        ("key.register", planted, True),
    ]
    # An export that does not verify is refused, not read.
    document = json.loads(exported.getvalue())
    document["entries"][0] = document["entries"][1]
    path.write_text(json.dumps(document))
    assert_one_line_error(cli(*args, user="uz.officer"), 1)  # as ledger verify: not intact


def test_keys_commands_refuse_clearly(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> None:
    logged_in("uz.officer")
    assert_one_line_error(cli("keys", "register", user="uz.officer"), 9)
    ok_json(cli("keys", "init", "--passphrase-stdin", "--json", user="uz.officer", stdin="pw\n"))
    key_file = next((tmp_path / "config" / "uz.officer" / "signing-keys").glob("*.pem"))
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in key_file.read_bytes()
    ok_json(cli("keys", "register", "--json", user="uz.officer"))
    again = cli("keys", "register", user="uz.officer")
    assert_one_line_error(again, 8)
    ok_json(cli("keys", "init", "--no-passphrase", "--json", user="uz.officer"))
    second = cli("keys", "register", user="uz.officer")
    assert_one_line_error(second, 8)
    assert "revoke it first" in second.stderr
    with Session(world.vault.engine) as session:
        first = session.exec(select(OfficerKey)).one()
    ok_json(cli("keys", "revoke", first.id, "--json", user="uz.officer"))
    ok_json(cli("keys", "register", "--json", user="uz.officer"))


def test_a_key_not_registered_warns_that_the_upload_goes_unsigned(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path
) -> None:
    logged_in("uz.officer")
    made = ok_json(cli("keys", "init", "--no-passphrase", "--json", user="uz.officer"))
    source = tmp_path / "report.txt"
    make_file(source, 100, seed=1)
    upload = cli("package", "upload", source, "--title", "t", "--json", user="uz.officer")
    uploaded = ok_json(upload)
    assert uploaded["package"]["signature"] is None
    assert f"key {made['key_id']} is not registered" in upload.stderr
    assert "goes unsigned" in upload.stderr
    # Said on purpose: no warning.
    quiet = cli(
        "package", "upload", source, "--title", "t", "--unsigned", "--json", user="uz.officer"
    )
    ok_json(quiet)
    assert "warning" not in quiet.stderr


@pytest.fixture(autouse=True)
def _optional_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's local operator opens the vault with the same settings as the world."""
    monkeypatch.delenv("VAULT_LEDGER_VKEY", raising=False)
    monkeypatch.delenv("VAULT_SIGNING_PASSPHRASE", raising=False)


def test_records_the_operator_alters_are_caught_by_the_recipient(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path
) -> None:
    """The signed manifest covers the seizure records: the recipient gets them with the
    package's details and checks them; records the operator re-seals with other figures
    (it holds the KEK) make the download fail, nothing kept; a saved bundle's records are
    checked again by ``package verify``."""
    vault = world.vault
    vault.add_crossing_point(
        local_operator(), "OYBEK", country="UZ", name="Oybek", blo_opened=date(2014, 5, 1)
    )
    _officer_with_key(cli, logged_in, "uz.officer")
    src, records = tmp_path / "src", tmp_path / "records.csv"
    src.mkdir()
    make_file(src / "report.pdf", 5000, seed=1)
    records.write_text(
        "date,crossing_point,direction,commodity,quantity,unit,detained\n"
        "2014-03-12 06:40,OYBEK,entry,heroin,14.8,kg,2\n"
        "12.03.2014,oybek,выезд,Гашиш,500,г,0\n",
        encoding="utf-8",
    )
    uploaded = ok_json(
        cli(
            "package", "upload", src / "report.pdf", "--title", "Oybek seizures",
            "--records", records, "--json", user="uz.officer",
        )
    )  # fmt: skip
    package_id = str(uploaded["id"])
    ok_json(cli("package", "release", package_id, "--country", "KZ", "--json", user="uz.officer"))
    logged_in("kz.officer")
    out_dir, bundle = tmp_path / "kz", tmp_path / "package.signed.json"
    done = cli(
        "package", "download", package_id, "-o", out_dir, "--vkey", vault.ledger_vkey,
        "--manifest", bundle, user="kz.officer",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    saved = json.loads(bundle.read_text("utf-8"))
    assert [r["commodity"] for r in saved["records"]] == ["heroin", "cannabis resin"]
    checked = cli("package", "verify", out_dir, "--manifest", bundle, "--vkey", vault.ledger_vkey)
    assert checked.code == 0, checked.stderr
    saved["records"][0]["quantity"] = 1.48
    bundle.write_text(json.dumps(saved), encoding="utf-8")
    changed = cli("package", "verify", out_dir, "--manifest", bundle, "--vkey", vault.ledger_vkey)
    assert_one_line_error(changed, 6)
    assert "seizure records do not match the signed manifest" in changed.stderr

    with Session(vault.engine) as session:
        package, row = session.get(Package, package_id), session.get(PackageRecords, package_id)
        assert package is not None
        assert row is not None
        key = sealed_meta.open_meta(vault.keys, package).key
        genuine = open_records(key, package_id, row.sealed)
        forged = [genuine[0].model_copy(update={"quantity": 1.48}), genuine[1]]
        row.sealed = records_row(session, package_id, key, forged).sealed
        session.add(row)
        session.commit()
    out_forged = tmp_path / "kz-forged"
    refused = cli(
        "package", "download", package_id, "-o", out_forged, "--vkey", vault.ledger_vkey,
        user="kz.officer",
    )  # fmt: skip
    assert_one_line_error(refused, 6)
    assert "seizure records digest differs from the signed manifest" in refused.stderr
    assert not out_forged.exists() or list(out_forged.iterdir()) == []


def test_key_proofs_up_to_a_witnessed_checkpoint_with_a_policy(
    cli: CliRunner, logged_in: LoggedIn, world: World, tmp_path: Path, witnessed: Witnessed
) -> None:
    """With --policy, download and verify require the signer's key registration in a
    checkpoint cosigned by the policy's quorum (2 of 2 here), not only signed by the vault."""
    package_id, sums = _signed_package(cli, logged_in, world, tmp_path)
    vkey, policy = world.vault.ledger_vkey, witnessed.policy_file
    logged_in("kz.officer")
    early = tmp_path / "early"
    refused = cli(
        "package", "download", package_id, "-o", early, "--vkey", vkey, "--policy", policy,
        user="kz.officer",
    )  # fmt: skip
    assert_one_line_error(refused, 6)
    assert "not yet in a witnessed checkpoint" in refused.stderr
    assert not early.exists() or list(early.iterdir()) == []

    assert witnessed.publishing.round() is not None
    out_dir, bundle = tmp_path / "kz", tmp_path / "package.signed.json"
    done = cli(
        "package", "download", package_id, "-o", out_dir, "--vkey", vkey, "--policy", policy,
        "--manifest", bundle, user="kz.officer",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    assert "checkpoint the policy accepts" in done.stderr
    assert {p.name: sha256_of(p) for p in out_dir.iterdir()} == sums
    checked = cli(
        "package", "verify", out_dir, "--manifest", bundle, "--vkey", vkey, "--policy", policy,
        "--json",
    )  # fmt: skip
    assert ok_json(checked)["witnessed_by"] == ["KZ", "TJ"]

    saved = json.loads(bundle.read_text("utf-8"))
    proof_text: str = saved["witnessed_proof"]
    # One cosignature short of the 2-of-2 quorum: refused offline.
    kept = [ln for ln in proof_text.splitlines(keepends=True) if not ln.startswith("— witness.kz")]
    assert len(kept) == len(proof_text.splitlines()) - 1
    for label, forged in (("quorum", "".join(kept)), ("not yet in a witnessed", None)):
        bundle.write_text(json.dumps(saved | {"witnessed_proof": forged}), encoding="utf-8")
        result = cli(
            "package", "verify", out_dir, "--manifest", bundle, "--vkey", vkey,
            "--policy", policy,
        )  # fmt: skip
        assert_one_line_error(result, 6)
        assert label in result.stderr
    # Without --policy the same bundle checks against the ledger key alone.
    plain = cli("package", "verify", out_dir, "--manifest", bundle, "--vkey", vkey)
    assert plain.code == 0, plain.stderr


def _host_rewrites_details(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[dict[str, Any]], None]
) -> None:
    """The host answers GET /packages/{id} with details ``change`` rewrote."""
    show = ApiClient.show

    def lying_show(self: ApiClient, package_id: str) -> dict[str, Any]:
        detail = show(self, package_id)
        change(detail)
        return detail

    monkeypatch.setattr(ApiClient, "show", lying_show)


def test_a_stripped_signature_is_refused_with_require_signed(
    cli: CliRunner,
    logged_in: LoggedIn,
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host can't forge a signature, but it can drop one and serve the package as unsigned.
    Without --require-signed that passes, with the "unsigned" line; with it (or
    VAULT_REQUIRE_SIGNED) the download is refused before any transfer, and nothing kept."""
    package_id, _ = _signed_package(cli, logged_in, world, tmp_path)
    logged_in("kz.officer")
    _host_rewrites_details(monkeypatch, lambda detail: detail.update(signature=None))
    args = ("--vkey", world.vault.ledger_vkey)
    for how in ("option", "environment"):
        out_dir = tmp_path / f"kz-{how}"
        if how == "environment":
            monkeypatch.setenv("VAULT_REQUIRE_SIGNED", "1")
            extra: tuple[str, ...] = ()
        else:
            extra = ("--require-signed",)
        refused = cli(
            "package", "download", package_id, "-o", out_dir, *args, *extra, user="kz.officer"
        )
        assert_one_line_error(refused, 6)
        assert "carries no signature" in refused.stderr
        assert not out_dir.exists() or list(out_dir.iterdir()) == []
    monkeypatch.delenv("VAULT_REQUIRE_SIGNED")
    allowed = cli(
        "package", "download", package_id, "-o", tmp_path / "kz", *args, user="kz.officer"
    )
    assert allowed.code == 0, allowed.stderr
    assert "unsigned: nothing proves who sent this package" in allowed.stderr


def test_fields_are_shown_as_not_covered_by_the_signature(
    cli: CliRunner,
    logged_in: LoggedIn,
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The manifest covers title, description, records and files, not a package's free-form
    fields: a host that writes some in must not have them read as the officer's."""
    package_id, _ = _signed_package(cli, logged_in, world, tmp_path)
    logged_in("kz.officer")
    _host_rewrites_details(monkeypatch, lambda detail: detail.update(fields={"quantity_kg": 150}))
    shown = cli("package", "show", package_id, user="kz.officer")
    assert shown.code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    heading = lines.index("fields (not covered by the signature):")
    assert lines[heading + 1] == "quantity_kg: 150"
    assert any(line.startswith("signed by uz.officer") for line in lines[heading + 2 :])
