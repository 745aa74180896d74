"""Ledger proofs end to end: consistency, inclusion, rollback, fork, offline export, API, receipts.

Everything a counterpart receives (CLI JSON, export file, API replies) is checked here with the
pure verifiers of :mod:`vault.ledger.merkle` and :mod:`vault.ledger.note` and nothing else but
the log's verifier key, the way an auditor on another machine would.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import (
    FAST_ARGON2,
    ON_POSTGRES,
    PASSWORD,
    CliRunner,
    MultipartFiles,
    World,
    seed,
)
from tests.integration.test_ledger_tamper import (
    build_ledger,
    raw_db,
    tampering,
    upload,
)
from vault.config import load_settings
from vault.errors import LedgerCorrupt, VaultError
from vault.keys import DEV_KEY_DIR
from vault.ledger import merkle, note
from vault.ledger.entry import GENESIS_PREV, Entry, decode, leaf_hash
from vault.service import Vault

b64d = base64.b64decode
sqlite_only = pytest.mark.skipif(
    ON_POSTGRES, reason="tampers with or copies the SQLite database file directly"
)
BLOVAULT = Path(sys.executable).with_name("blovault")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def cli_json(cli: CliRunner, *args: str | int | Path) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.code == 0, (args, result.stdout, result.stderr)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def save_checkpoint(cli: CliRunner, path: Path) -> note.Checkpoint:
    """``blovault ledger checkpoint -o path``; returns the body it saved (unverified parse)."""
    result = cli("ledger", "checkpoint", "-o", path)
    assert result.code == 0, result.stderr
    assert result.stdout == path.read_text("utf-8")
    return note.parse_checkpoint(note.parse_note(path.read_text("utf-8")).text)


def open_cp(text: str, vkey: str, origin: str) -> note.Checkpoint:
    """Verify a signed checkpoint with nothing but the verifier key string."""
    return note.open_checkpoint(text, [note.parse_verifier_key(vkey)], origin=origin)


def check_consistency(proof: dict[str, Any], old_text: str, vkey: str, origin: str) -> None:
    """Verify a consistency-proof reply independently, including both signed checkpoints."""
    old = open_cp(old_text, vkey, origin)
    new = open_cp(proof["checkpoint"], vkey, origin)
    assert (proof["old_size"], b64d(proof["old_root"])) == (old.size, old.root_hash)
    assert (proof["new_size"], b64d(proof["new_root"])) == (new.size, new.root_hash)
    hashes = [b64d(h) for h in proof["hashes"]]
    merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, hashes)
    if hashes:  # the check has teeth: one flipped bit fails it
        bad = [bytes([hashes[0][0] ^ 1]) + hashes[0][1:], *hashes[1:]]
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, bad)


def check_inclusion(proof: dict[str, Any], seq: int, vkey: str, origin: str) -> Entry:
    """Verify an inclusion-proof reply independently; return the entry it proves."""
    data = b64d(proof["entry"])
    leaf = merkle.leaf_hash(data)
    assert b64d(proof["leaf_hash"]) == leaf
    cp = open_cp(proof["checkpoint"], vkey, origin)
    assert proof["leaf_index"] == seq
    assert (proof["tree_size"], b64d(proof["root"])) == (cp.size, cp.root_hash)
    hashes = [b64d(h) for h in proof["hashes"]]
    merkle.verify_inclusion(leaf, seq, cp.size, hashes, cp.root_hash)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(merkle.leaf_hash(data + b"x"), seq, cp.size, hashes, cp.root_hash)
    entry = decode(data)
    assert entry.seq == seq
    return entry


def many_actions(world: World, count: int) -> None:
    """``count`` ledger entries through the service: lists, reads and refusals."""
    vault = world.vault
    pkg = upload(world, "uz.officer", "many", b"many actions")
    start = vault.ledger_size()
    officers = ["uz.officer", "uz.border", "kz.officer", "tj.officer"]
    i = 0
    while vault.ledger_size() - start < count - 1:
        match i % 4:
            case 0 | 1:
                vault.list_packages(world[officers[i % len(officers)]])
            case 2:
                vault.get_package(world["uz.officer"], pkg)
            case _:
                with pytest.raises(VaultError):  # a refusal, recorded
                    vault.list_packages(world["uz.auditor"])
        i += 1


# --- consistency and inclusion ------------------------------------------------------------------


def test_consistency_over_1000_actions_and_inclusion_proofs(
    world: World, cli: CliRunner, tmp_path: Path
) -> None:
    origin = world.settings.ledger_origin
    old_path = tmp_path / "old.txt"
    old = save_checkpoint(cli, old_path)
    before = world.vault.ledger_size()
    many_actions(world, 1000)
    assert world.vault.ledger_size() - before >= 1000

    proof = cli_json(cli, "ledger", "consistency", "--old", old_path)
    assert proof["old_size"] == old.size
    assert proof["new_size"] > old.size + 1000
    export = tmp_path / "export.json"
    info = cli_json(cli, "ledger", "export", "-o", export)
    vkey = info["vkey"]
    assert vkey == json.loads(export.read_text())["vkey"] == world.vault.ledger_vkey
    check_consistency(proof, old_path.read_text(), vkey, origin)

    # A consistency proof from every stored checkpoint's size, verified the same way.
    latest = cli_json(cli, "ledger", "checkpoint")
    assert latest["vkey"] == vkey
    size = latest["size"]
    for seq in sorted({0, 1, 2, 7, 8, 9, old.size - 1, old.size, size // 2, 1023, 1024, size - 3}):
        check_inclusion(cli_json(cli, "ledger", "prove", seq), seq, vkey, origin)
    # Past the end: not found (exit 4), not a bogus proof.
    assert cli("ledger", "prove", 10**9, "--json").code == 4


# --- rollback and fork --------------------------------------------------------------------------


def roll_back(conn: sqlite3.Connection, new_size: int, *, checkpoints: bool) -> None:
    """Delete entries from ``new_size`` on (their openings with them), with the Merkle nodes
    covering them (consistently: the vault goes on appending at ``new_size``)."""
    conn.execute("DELETE FROM ledgerentry WHERE seq >= ?", (new_size,))
    conn.execute("DELETE FROM ledgernode WHERE ((idx + 1) << level) > ?", (new_size,))
    if checkpoints:
        conn.execute("DELETE FROM ledgercheckpoint WHERE size > ?", (new_size,))


@sqlite_only
def test_rolled_back_ledger_is_refused(world: World, cli: CliRunner, tmp_path: Path) -> None:
    build_ledger(world, final_checkpoint=False)
    old_path = tmp_path / "old.txt"
    old = save_checkpoint(cli, old_path)
    world.vault.list_packages(world["uz.officer"])
    cut = old.size - 6
    with tampering(world.settings) as conn:
        roll_back(conn, cut, checkpoints=False)
    verify = cli("ledger", "verify", "--json")
    assert verify.code == 1
    assert json.loads(verify.stdout)["first_bad_seq"] == cut

    # The vault will not sign over the rollback: its last checkpoint is bigger than the tree.
    with pytest.raises(LedgerCorrupt):
        world.vault.checkpoint()
    result = cli("ledger", "checkpoint", "-o", tmp_path / "new.txt")
    assert result.code == 1, result.stderr
    assert not (tmp_path / "new.txt").exists()
    result = cli("ledger", "consistency", "--old", old_path, "--json")
    assert result.code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    with pytest.raises(LedgerCorrupt):
        world.vault.consistency_proof(world["uz.auditor"], old_path.read_text())
    # Still broken (the refused commands above did record their reads on the short ledger).
    verify = cli("ledger", "verify", "--json")
    assert verify.code == 1
    assert cut <= json.loads(verify.stdout)["first_bad_seq"] < old.size


@sqlite_only
@pytest.mark.parametrize("regrow", [False, True], ids=["shorter", "regrown-past-old-size"])
def test_rollback_that_hid_its_checkpoints_fails_a_saved_checkpoint(
    world: World, cli: CliRunner, tmp_path: Path, regrow: bool
) -> None:
    """The rollback also deleted the later checkpoints: only the auditor's saved one can tell."""
    build_ledger(world, final_checkpoint=False)
    old_path = tmp_path / "old.txt"
    old = save_checkpoint(cli, old_path)
    with tampering(world.settings) as conn:
        roll_back(conn, old.size - 6, checkpoints=True)
    if regrow:
        while world.vault.ledger_size() < old.size + 20:
            world.vault.list_packages(world["kz.officer"])
    world.vault.checkpoint()  # the database alone can't tell, so the vault signs
    assert cli("ledger", "verify").code == 0
    result = cli("ledger", "consistency", "--old", old_path, "--json")
    assert result.code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    with pytest.raises(LedgerCorrupt):
        world.vault.consistency_proof(world["uz.auditor"], old_path.read_text())


def open_second_vault(world: World, data_dir: Path) -> Vault:
    """A vault on ``data_dir`` sharing the first one's keys (dev-keys copied)."""
    shutil.copytree(world.settings.data_dir / DEV_KEY_DIR, data_dir / DEV_KEY_DIR)
    other = Vault.open(load_settings(data_dir=data_dir, **FAST_ARGON2))
    assert other.ledger_vkey == world.vault.ledger_vkey
    return other


@sqlite_only  # the second ledger lives in its own SQLite file
def test_forked_ledger_with_the_same_keys_fails_consistency(
    world: World, cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_ledger(world, final_checkpoint=False, total=40)
    first = tmp_path / "first.txt"
    first_cp = save_checkpoint(cli, first)

    other_dir = tmp_path / "other-data"
    other = open_second_vault(world, other_dir)
    try:
        users = seed(other)  # a different history under the same log key
        while other.ledger_size() < first_cp.size + 30:
            other.list_packages(users["tj.officer"])
        other.checkpoint()
        with pytest.raises(LedgerCorrupt):
            other.consistency_proof(users["uz.auditor"], first.read_text())
    finally:
        other.close()
    monkeypatch.setenv("VAULT_DATA_DIR", str(other_dir))
    assert cli("ledger", "verify").code == 0  # a perfectly valid ledger: just not the same one
    result = cli("ledger", "consistency", "--old", first, "--json")
    assert result.code == 1, (result.stdout, result.stderr)


@sqlite_only
def test_fork_from_a_common_prefix(
    world: World, cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of the database taken at size S, then both copies grow apart.

    A checkpoint from before the split is consistent with both; one from after it, with only
    its own side.
    """
    build_ledger(world, final_checkpoint=False, total=40)
    before_split = tmp_path / "before.txt"
    save_checkpoint(cli, before_split)

    other_dir = tmp_path / "other-data"
    other_dir.mkdir()
    dst = sqlite3.connect(other_dir / "vault.db")
    try:
        with raw_db(world.settings) as src:
            src.backup(dst)
    finally:
        dst.close()
    other = open_second_vault(world, other_dir)
    try:
        for _ in range(5):
            world.vault.list_packages(world["uz.officer"])
        after_split = tmp_path / "after.txt"
        save_checkpoint(cli, after_split)
        for _ in range(12):
            with pytest.raises(VaultError):
                other.list_packages(world["uz.admin"])  # refusals: a different history
        other.checkpoint()
        origin = world.settings.ledger_origin
        proof = other.consistency_proof(world["uz.auditor"], before_split.read_text())
        check_consistency(proof.model_dump(), before_split.read_text(), other.ledger_vkey, origin)
        with pytest.raises(LedgerCorrupt):
            other.consistency_proof(world["uz.auditor"], after_split.read_text())
    finally:
        other.close()
    assert cli("ledger", "consistency", "--old", after_split).code == 0
    monkeypatch.setenv("VAULT_DATA_DIR", str(other_dir))
    assert cli("ledger", "consistency", "--old", before_split).code == 0
    assert cli("ledger", "consistency", "--old", after_split).code == 1


# --- export and offline verification ---------------------------------------------------------


def clean_env(home: Path) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    assert not any(k.startswith("VAULT_") for k in env)
    return env


def offline_verify(
    jobs: dict[str, tuple[Path, str]], tmp_path: Path
) -> dict[str, tuple[int, dict[str, Any] | None, str]]:
    """Run ``blovault ledger verify --export F --vkey K --json`` for each job, in parallel.

    Each run is a separate process with no ``VAULT_*`` variable, in an empty working folder and
    an empty home; afterwards both must still be empty (no database, no data folder made).
    """
    procs = {}
    for name, (path, vkey) in jobs.items():
        cwd, home = tmp_path / f"cwd-{name}", tmp_path / f"home-{name}"
        cwd.mkdir()
        home.mkdir()
        procs[name] = (
            subprocess.Popen(
                [
                    str(BLOVAULT),
                    "ledger",
                    "verify",
                    "--export",
                    str(path),
                    "--vkey",
                    vkey,
                    "--json",
                ],
                cwd=cwd,
                env=clean_env(home),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            cwd,
            home,
        )
    results = {}
    for name, (proc, cwd, home) in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert list(cwd.iterdir()) == [], (
            f"{name}: the offline verifier wrote {list(cwd.iterdir())}"
        )
        assert list(home.iterdir()) == [], (
            f"{name}: the offline verifier wrote {list(home.iterdir())}"
        )
        report = json.loads(stdout) if stdout.strip() else None
        results[name] = (proc.returncode, report, stderr)
    return results


def test_export_verifies_offline_and_tampering_is_caught(
    world: World, cli: CliRunner, tmp_path: Path
) -> None:
    build_ledger(world, total=50)
    export = tmp_path / "ledger.json"
    info = cli_json(cli, "ledger", "export", "-o", export)
    vkey = info["vkey"]
    doc = json.loads(export.read_text("utf-8"))
    assert doc["origin"] == world.settings.ledger_origin
    assert doc["vkey"] == vkey
    cp = open_cp(doc["checkpoint"], vkey, doc["origin"])
    assert len(doc["entries"]) == cp.size == info["size"]
    assert (
        merkle.root_from_leaf_hashes([merkle.leaf_hash(b64d(e)) for e in doc["entries"]])
        == cp.root_hash
    )

    def variant(name: str, change: Callable[[dict[str, Any]], None]) -> Path:
        copy = json.loads(json.dumps(doc))
        change(copy)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(copy), "utf-8")
        return path

    k = 17

    def flip_decision(d: dict[str, Any]) -> None:
        entry = decode(b64d(d["entries"][k]))
        d["entries"][k] = b64(
            dataclasses.replace(
                entry, decision="deny" if entry.decision == "allow" else "allow"
            ).encode()
        )

    def edit_checkpoint(d: dict[str, Any]) -> None:
        parsed = note.parse_note(d["checkpoint"])
        body = note.parse_checkpoint(parsed.text)
        d["checkpoint"] = (
            dataclasses.replace(body, size=body.size - 1).to_text()
            + "\n"
            + parsed.signatures[0].line()
        )

    def extra_entry(d: dict[str, Any]) -> None:
        last = decode(b64d(d["entries"][-1]))
        more = dataclasses.replace(
            last, seq=last.seq + 1, prev=leaf_hash(b64d(d["entries"][-1])).hex()
        )
        d["entries"].append(b64(more.encode()))

    foreign = note.Verifier.from_public_key(
        doc["origin"], Ed25519PrivateKey.generate().public_key()
    )
    jobs = {
        "clean": (export, vkey),
        "entry-changed": (variant("changed", flip_decision), vkey),
        "entry-removed": (variant("removed", lambda d: d["entries"].pop(k)), vkey),
        "tail-removed": (
            variant("tail", lambda d: d["entries"].__delitem__(slice(-3, None))),
            vkey,
        ),
        "entry-appended": (variant("appended", extra_entry), vkey),
        "not-base64": (variant("garbage", lambda d: d["entries"].__setitem__(k, "%%%")), vkey),
        "checkpoint-edited": (variant("cp-edited", edit_checkpoint), vkey),
        "wrong-vkey": (export, foreign.vkey()),
    }
    results = offline_verify(jobs, tmp_path)

    code, report, stderr = results["clean"]
    assert code == 0, stderr
    assert report is not None
    assert report["ok"] is True
    assert report["size"] == cp.size
    assert b64d(report["root"]) == cp.root_hash
    expected_bad = {
        "entry-changed": None,  # exit 1; which seq it names: test_export_names_the_altered_entry
        "entry-removed": k,
        "tail-removed": cp.size - 3,
        "entry-appended": cp.size,
        "not-base64": k,
        "checkpoint-edited": None,
        "wrong-vkey": None,
    }
    for name, first_bad in expected_bad.items():
        code, report, stderr = results[name]
        assert code == 1, (name, report, stderr)
        assert report is not None, (name, stderr)
        assert report["ok"] is False, name
        if name != "entry-changed":
            assert report["first_bad_seq"] == first_bad, (name, report)
    assert "checkpoint" in results["wrong-vkey"][1]["problem"]  # type: ignore[index]


def test_export_names_the_altered_entry(world: World, cli: CliRunner, tmp_path: Path) -> None:
    """One entry of an export changed (re-encoded, well-formed): the report must name *it*.

    Without stored leaves an export can only see that entry k+1 no longer links to entry k;
    that break can't clear entry k, so the first entry that may be bad is k, not k+1.
    """
    from vault.ledger.verify import verify_export

    build_ledger(world, total=50)
    export = tmp_path / "ledger.json"
    vkey = cli_json(cli, "ledger", "export", "-o", export)["vkey"]
    doc = json.loads(export.read_text("utf-8"))
    for k in (5, 17, len(doc["entries"]) - 2):
        copy = json.loads(json.dumps(doc))
        entry = decode(b64d(copy["entries"][k]))
        # The action is public in every entry version (a committed reason is not re-encoded).
        copy["entries"][k] = b64(dataclasses.replace(entry, action=entry.action + "!").encode())
        result = verify_export(copy, vkey)
        assert not result.ok
        assert result.first_bad_seq == k, (k, result)


def test_offline_verify_needs_a_vkey(cli: CliRunner, tmp_path: Path) -> None:
    export = tmp_path / "ledger.json"
    cli_json(cli, "ledger", "export", "-o", export)
    result = cli("ledger", "verify", "--export", export, "--json")
    assert result.code == 2, result.stderr


# --- the API -------------------------------------------------------------------------------------


def login(client: httpx.Client, user: str) -> tuple[dict[str, str], int]:
    reply = client.post("/auth/login", json={"username": user, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    receipt = int(reply.headers["X-Vault-Receipt"])
    assert receipt == reply.json()["receipt"]
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}, receipt


def entry_of(world: World, seq: int) -> Entry:
    """Entry ``seq`` as stored, opened (read through the vault's engine, any backend)."""
    found = world.vault.unscoped_entries(seq, seq + 1)
    assert found, f"no ledger entry #{seq}"
    return found[0]


def test_api_ledger_routes_for_auditor_and_officer(world: World, live_server: str) -> None:
    origin = world.settings.ledger_origin
    with httpx.Client(base_url=live_server, timeout=30) as client:
        auditor, _ = login(client, "uz.auditor")
        officer, _ = login(client, "uz.officer")

        first = client.get("/ledger/checkpoint", headers=auditor)
        assert first.status_code == 200, first.text
        cp_info = first.json()
        vkey = cp_info["vkey"]
        assert vkey == world.vault.ledger_vkey
        old = open_cp(cp_info["note"], vkey, origin)
        assert (old.size, b64(old.root_hash), old.origin) == (
            cp_info["size"],
            cp_info["root"],
            origin,
        )

        # Grow the ledger a little, then fetch entries and proofs.
        for _ in range(5):
            assert client.get("/packages", headers=officer).status_code == 200

        reply = client.get("/ledger/entries", params={"start": 0, "end": 10}, headers=auditor)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["start"] == 0
        raw = [b64d(e) for e in body["entries"]]
        assert len(raw) == 10
        prev = GENESIS_PREV
        for seq, data in enumerate(raw):
            entry = decode(data)
            assert entry.seq == seq
            assert entry.prev == prev
            prev = leaf_hash(data).hex()

        reply = client.get("/ledger/proof/inclusion/3", headers=auditor)
        assert reply.status_code == 200, reply.text
        proof = reply.json()
        check_inclusion(proof, 3, vkey, origin)
        assert b64d(proof["entry"]) == raw[3]

        reply = client.post(
            "/ledger/proof/consistency", json={"checkpoint": cp_info["note"]}, headers=auditor
        )
        assert reply.status_code == 200, reply.text
        consistency = reply.json()
        check_consistency(consistency, cp_info["note"], vkey, origin)
        assert consistency["new_size"] > old.size + 5

        # An officer may use none of them; each refusal is itself recorded.
        # Each call's httpx.Client.request keywords: a JSON body or none.
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/ledger/checkpoint", {}),
            ("GET", "/ledger/entries?start=0&end=10", {}),
            ("GET", "/ledger/proof/inclusion/3", {}),
            ("POST", "/ledger/proof/consistency", {"json": {"checkpoint": cp_info["note"]}}),
            ("GET", "/ledger/verify", {}),
        ]
        for method, url, kwargs in calls:
            reply = client.request(method, url, headers=officer, **kwargs)
            assert reply.status_code == 403, (url, reply.status_code, reply.text)
            error = reply.json()["error"]
            assert "hashes" not in reply.text
            assert "entries" not in error
            receipt = int(reply.headers["X-Vault-Receipt"])
            assert error["receipt"] == receipt
            entry = entry_of(world, receipt)
            assert (entry.actor_user, entry.action, entry.decision) == (
                "uz.officer",
                "ledger",
                "deny",
            )

        verify = client.get("/ledger/verify", headers=auditor)
        assert verify.status_code == 200, verify.text
        assert verify.json()["ok"] is True


def test_ledger_reads_over_the_api_carry_their_receipt(world: World, live_server: str) -> None:
    """An auditor's ledger read is recorded (LedgerService.record_read), so its reply names it."""
    with httpx.Client(base_url=live_server, timeout=30) as client:
        auditor, _ = login(client, "uz.auditor")
        cp = client.get("/ledger/checkpoint", headers=auditor).json()["note"]
        # Each call's httpx.Client.request keywords: a JSON body or none.
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/ledger/checkpoint", {}),
            ("GET", "/ledger/entries?start=0&end=3", {}),
            ("GET", "/ledger/proof/inclusion/1", {}),
            ("POST", "/ledger/proof/consistency", {"json": {"checkpoint": cp}}),
            # Used to read the whole ledger unrecorded (review of 2026-12-07).
            ("GET", "/ledger/verify", {}),
        ]
        for method, url, kwargs in calls:
            size_before = world.vault.ledger_size()
            reply = client.request(method, url, headers=auditor, **kwargs)
            assert reply.status_code == 200, reply.text
            assert world.vault.ledger_size() > size_before  # the read was recorded ...
            assert "X-Vault-Receipt" in reply.headers, url  # ... so the reply should say where
            entry = entry_of(world, int(reply.headers["X-Vault-Receipt"]))
            assert (entry.actor_user, entry.action, entry.decision) == (
                "uz.auditor",
                "ledger",
                "allow",
            )


def test_every_recording_reply_carries_its_receipt(
    world: World, live_server: str, tmp_path: Path
) -> None:
    with httpx.Client(base_url=live_server, timeout=30) as client:
        uz, login_receipt = login(client, "uz.officer")
        entry = entry_of(world, login_receipt)
        assert (entry.actor_user, entry.action, entry.decision) == ("uz.officer", "login", "allow")

        files: MultipartFiles = [
            ("metadata", (None, json.dumps({"title": "Receipt check"}), "application/json")),
            ("file", ("r.txt", b"receipt me", "text/plain")),
        ]
        reply = client.post("/packages", files=files, headers=uz)
        assert reply.status_code == 201, reply.text
        receipt = int(reply.headers["X-Vault-Receipt"])
        assert receipt == reply.json()["receipt"]
        package = reply.json()["package"]
        entry = entry_of(world, receipt)
        assert (entry.actor_user, entry.action, entry.decision, entry.package) == (
            "uz.officer",
            "upload",
            "allow",
            package["id"],
        )

        reply = client.get("/packages", headers=uz)
        assert reply.status_code == 200
        receipt = int(reply.headers["X-Vault-Receipt"])
        assert receipt == reply.json()["receipt"]
        entry = entry_of(world, receipt)
        assert (entry.actor_user, entry.action, entry.decision) == ("uz.officer", "list", "allow")

        reply = client.get(f"/packages/{package['id']}", headers=uz)
        assert reply.status_code == 200
        entry = entry_of(world, int(reply.headers["X-Vault-Receipt"]))
        assert (entry.actor_user, entry.action, entry.decision, entry.package) == (
            "uz.officer",
            "read",
            "allow",
            package["id"],
        )

        file_id = package["files"][0]["id"]
        reply = client.get(f"/packages/{package['id']}/files/{file_id}", headers=uz)
        assert reply.status_code == 200
        assert reply.content == b"receipt me"
        entry = entry_of(world, int(reply.headers["X-Vault-Receipt"]))
        assert (entry.actor_user, entry.action, entry.decision, entry.package, entry.file) == (
            "uz.officer",
            "download",
            "allow",
            package["id"],
            file_id,
        )

        reply = client.post(
            f"/packages/{package['id']}/releases", json={"country": "KZ"}, headers=uz
        )
        assert reply.status_code == 201, reply.text
        receipt = int(reply.headers["X-Vault-Receipt"])
        assert receipt == reply.json()["receipt"]
        entry = entry_of(world, receipt)
        assert (entry.actor_user, entry.action, entry.decision, entry.package, entry.release) == (
            "uz.officer",
            "release",
            "allow",
            package["id"],
            reply.json()["release"]["id"],
        )

        # Refusals too: a failed login and a foreign read name the entry that recorded them.
        reply = client.post("/auth/login", json={"username": "uz.officer", "password": "wrong"})
        assert reply.status_code == 401
        entry = entry_of(world, int(reply.headers["X-Vault-Receipt"]))
        assert (entry.actor_user, entry.action, entry.decision) == ("uz.officer", "login", "deny")
        tj, _ = login(client, "tj.officer")
        reply = client.get(f"/packages/{package['id']}", headers=tj)
        assert reply.status_code == 404
        entry = entry_of(world, int(reply.headers["X-Vault-Receipt"]))
        assert (entry.actor_user, entry.action, entry.decision, entry.package) == (
            "tj.officer",
            "read",
            "deny",
            package["id"],
        )
