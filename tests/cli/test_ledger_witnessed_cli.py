"""The witnessed checkpoint through the vault's doors, and counterparts' checks with a policy:
``GET /ledger/witnessed-checkpoint``, ``blovault ledger checkpoint --witnessed``, ``ledger
export`` + ``ledger verify --export --policy``, ``ledger prove --format tlog-proof`` +
``ledger verify-proof``, ``ledger consistency --policy``.

Two witness servers (the real witness app on 127.0.0.1) under a 2-of-2 policy; the vault's
publishing round (:class:`PublishingThread`, as the server runs it) stores into the database.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api.test_witnessed_ledger import witness_server
from tests.conftest import CliRunner, World
from tests.witness_log import Tree
from vault.ledger.entry import leaf_hash
from vault.ledger.note import Checkpoint, parse_note, sign_checkpoint
from vault.models import Classification
from vault.schemas import NewPackage
from vault.service import IncomingFile, local_operator
from vault.witness.core import Witness, init_witness
from vault.witness.ledger_source import LedgerSource
from vault.witness.policy import Policy, parse_policy
from vault.witness.publisher import Publisher, http_post
from vault.witness.running import PublishingThread


@dataclass
class Witnessed:
    policy: Policy
    policy_file: Path
    witnesses: dict[str, Witness]
    publishing: PublishingThread


@pytest.fixture
def witnessed(world: World, tmp_path: Path) -> Iterator[Witnessed]:
    """KZ and TJ witnesses serving on 127.0.0.1, a 2-of-2 policy, and the vault's publisher."""
    vault = world.vault
    witnesses = {}
    for c in ("KZ", "TJ"):
        init_witness(
            tmp_path / c, name=f"witness.{c.lower()}.example/blo", log_vkeys=[vault.ledger_vkey]
        )
        witnesses[c] = Witness.open(tmp_path / c)
    with contextlib.ExitStack() as stack:
        urls = {c: stack.enter_context(witness_server(w)) for c, w in witnesses.items()}
        policy_file = tmp_path / "policy"
        policy_file.write_text(
            f"log {vault.ledger_vkey}\n"
            + "".join(f"witness {c} {w.cosigner.vkey()} {urls[c]}\n" for c, w in witnesses.items())
            + "group both all KZ TJ\nquorum both\n"
        )
        policy = parse_policy(policy_file.read_bytes())
        source = LedgerSource(
            engine=vault.engine, origin=vault.settings.ledger_origin, key=vault.keys.ledger_key
        )
        publisher = Publisher(policy=policy, source=source, post=http_post(10.0))
        yield Witnessed(
            policy, policy_file, witnesses, PublishingThread(
                engine=vault.engine, publisher=publisher, cadence=1.0
            )
        )  # fmt: skip


def bearer(world: World, user: str) -> dict[str, str]:
    token = world.vault.tokens.issue(world[user].user_id, session_id=world[user].session_id)
    return {"Authorization": f"Bearer {token}"}


def test_nothing_witnessed_yet_is_a_clear_404(
    world: World, cli: CliRunner, live_server: str, witnessed: Witnessed
) -> None:
    shown = cli("ledger", "checkpoint", "--witnessed")
    assert shown.code == 4, shown.stderr
    assert "no witnessed checkpoint has been published yet" in shown.stderr
    with httpx.Client(base_url=live_server, timeout=30) as client:
        reply = client.get("/ledger/witnessed-checkpoint", headers=bearer(world, "uz.auditor"))
        assert reply.status_code == 404
        assert "no witnessed checkpoint" in reply.json()["error"]["message"]
        officer = client.get("/ledger/witnessed-checkpoint", headers=bearer(world, "uz.officer"))
        assert officer.status_code == 403
    status = cli("ledger", "status", "--json")
    assert status.code == 0, status.stderr
    assert json.loads(status.stdout)["witnessed_size"] is None


def test_witnessed_checkpoint_through_api_and_cli(
    world: World, cli: CliRunner, live_server: str, witnessed: Witnessed, tmp_path: Path
) -> None:
    published = witnessed.publishing.round()
    assert published is not None
    size = int(parse_note(published).text.splitlines()[1])
    with httpx.Client(base_url=live_server, timeout=30) as client:
        reply = client.get("/ledger/witnessed-checkpoint", headers=bearer(world, "uz.auditor"))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["note"], body["size"], body["vkey"]) == (published, size, world.vault.ledger_vkey)
    assert body["receipt"] == int(reply.headers["X-Vault-Receipt"])

    saved = tmp_path / "witnessed.note"
    shown = cli("ledger", "checkpoint", "--witnessed", "-o", saved)
    assert shown.code == 0, shown.stderr
    assert shown.stdout == published == saved.read_text()

    status = json.loads(cli("ledger", "status", "--json").stdout)
    assert status["witnessed_size"] == size
    assert {(w["name"], w["size"], w["error"]) for w in status["witnesses"]} == {
        ("KZ", size, None),
        ("TJ", size, None),
    }


def _export(cli: CliRunner, path: Path) -> dict[str, object]:
    result = cli("ledger", "export", "-o", path)
    assert result.code == 0, result.stderr
    document: dict[str, object] = json.loads(path.read_text())
    return document


def test_verify_export_with_the_policy(
    world: World, cli: CliRunner, witnessed: Witnessed, tmp_path: Path
) -> None:
    policy = witnessed.policy_file
    plain = _export(cli, tmp_path / "before.json")
    assert plain["witnessed_checkpoint"] is None
    refused = cli("ledger", "verify", "--export", tmp_path / "before.json", "--policy", policy)
    assert refused.code == 1
    assert "no witnessed checkpoint" in refused.stderr

    assert witnessed.publishing.round() is not None
    world.vault.latest_checkpoint(world["uz.auditor"])  # the export goes beyond the witnessed
    document = _export(cli, tmp_path / "export.json")
    checked = cli("ledger", "verify", "--export", tmp_path / "export.json", "--policy", policy)
    assert checked.code == 0, checked.stderr
    assert "ledger intact" in checked.stdout
    assert "cosigned by KZ, TJ" in checked.stdout

    def verify_with(note: str) -> tuple[int, str]:
        forged = tmp_path / "forged.json"
        forged.write_text(json.dumps({**document, "witnessed_checkpoint": note}))
        result = cli("ledger", "verify", "--export", forged, "--policy", policy)
        return result.code, result.stderr

    note = document["witnessed_checkpoint"]
    assert isinstance(note, str)
    text, signatures = note.split("\n\n", 1)
    lines = signatures.splitlines(keepends=True)
    assert len(lines) == 3  # the log's signature, then KZ's and TJ's cosignatures
    # One cosignature short of the 2-of-2 quorum.
    code, stderr = verify_with(text + "\n\n" + lines[0] + lines[1])
    assert code == 1
    assert "quorum" in stderr
    # KZ's cosignature replaced by one dated an hour ahead: rejected, not counted.
    future = witnessed.witnesses["KZ"].cosigner.cosign(text + "\n", int(time.time()) + 3600)
    kz_line = next(i for i, ln in enumerate(lines) if ln.startswith("— witness.kz"))
    code, stderr = verify_with(
        text + "\n\n" + "".join(future.line() if i == kz_line else ln for i, ln in enumerate(lines))
    )
    assert code == 1
    assert "future" in stderr
    # Cosignatures of the honest head pasted under another root of the same size: rejected.
    origin, size, _root = text.splitlines()
    code, stderr = verify_with(f"{origin}\n{size}\n{'A' * 43}=\n\n" + signatures)
    assert code == 1


def _rewritten_history(document: dict[str, object], world: World) -> dict[str, object]:
    """The split view an operator holding the log key can build: entry 2 changed (its time),
    every later entry's link to it rewritten, a fresh log-signed checkpoint over the result.
    Self-consistent and signed; only the witnesses' cosignatures of the real tree are not."""
    entries = [base64.b64decode(e) for e in document["entries"]]  # type: ignore[attr-defined]
    changed = bytearray(entries[2])
    changed[16] ^= 1  # a microsecond of entry 2's time
    entries[2] = bytes(changed)
    for seq in range(3, len(entries)):
        entries[seq] = entries[seq][:-64] + leaf_hash(entries[seq - 1]).hex().encode()
    origin = world.settings.ledger_origin
    note = sign_checkpoint(
        Checkpoint(origin, len(entries), Tree(entries).root()), origin, world.vault.keys.ledger_key
    )
    return {
        **document,
        "checkpoint": note,
        "entries": [base64.b64encode(e).decode() for e in entries],
    }


def test_a_rewritten_history_passes_the_log_key_but_not_the_policy_or_a_saved_checkpoint(
    world: World, cli: CliRunner, witnessed: Witnessed, tmp_path: Path
) -> None:
    assert witnessed.publishing.round() is not None
    real = _export(cli, tmp_path / "export.json")
    forged = _rewritten_history(real, world)
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    # The log key alone vouches for the operator's other history: this is the split view.
    vkey = world.vault.ledger_vkey
    alone = cli("ledger", "verify", "--export", path, "--vkey", vkey)
    assert alone.code == 0, alone.stderr
    # The witnesses cosigned the real tree: with the policy the rewrite is caught.
    checked = cli("ledger", "verify", "--export", path, "--policy", witnessed.policy_file)
    assert checked.code == 1
    assert "do not match the signed checkpoint" in checked.stderr
    # So is it, with the log key alone, by an auditor who saved a checkpoint of the real tree
    # earlier (here the real export's own, log-signed only; or the witnessed one).
    for saved in (real["checkpoint"], real["witnessed_checkpoint"]):
        assert isinstance(saved, str)
        old = tmp_path / "saved.checkpoint"
        old.write_text(saved)
        kept = cli("ledger", "verify", "--export", path, "--vkey", vkey, "--old", old)
        assert kept.code == 1
        assert "do not match the signed checkpoint" in kept.stderr
        honest = cli(
            "ledger",
            "verify",
            "--export",
            tmp_path / "export.json",
            "--old",
            old,
            "--policy",
            witnessed.policy_file,
        )
        assert honest.code == 0, honest.stderr
        assert "extends the saved checkpoint" in honest.stdout


def test_tlog_proof_bundle_and_consistency_with_the_policy(
    world: World, cli: CliRunner, witnessed: Witnessed, tmp_path: Path
) -> None:
    policy = witnessed.policy_file
    assert witnessed.publishing.round() is not None
    bundle, entry = tmp_path / "e3.tlog-proof", tmp_path / "e3.entry"
    proved = cli(
        "ledger", "prove", "3", "--format", "tlog-proof", "-o", bundle, "--entry-out", entry
    )
    assert proved.code == 0, proved.stderr
    assert bundle.read_text().startswith("c2sp.org/tlog-proof@v1\nindex 3\n")
    included = cli("ledger", "verify-proof", bundle, "--policy", policy, "--entry", entry)
    assert included.code == 0, included.stderr
    assert "entry 3 is in" in included.stdout
    # Flip a bit rather than write a fixed byte: a v2 entry ends in random commitment bytes, so
    # a fixed replacement sometimes equals what was there and the "altered" entry is unchanged.
    original = entry.read_bytes()
    entry.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    altered = cli("ledger", "verify-proof", bundle, "--policy", policy, "--entry", entry)
    assert altered.code == 1

    beyond = world.vault.ledger_size() + 5
    missing = cli("ledger", "prove", str(beyond), "--format", "tlog-proof")
    assert missing.code == 4
    assert "not in the witnessed checkpoint" in missing.stderr

    saved = tmp_path / "witnessed.note"
    assert cli("ledger", "checkpoint", "--witnessed", "-o", saved).code == 0
    world.vault.latest_checkpoint(world["uz.auditor"])
    consistent = cli("ledger", "consistency", "--old", saved, "--policy", policy)
    assert consistent.code == 0, consistent.stderr
    assert "cosigned by KZ, TJ" in consistent.stderr
    plain = tmp_path / "plain.note"
    assert cli("ledger", "checkpoint", "-o", plain).code == 0
    unwitnessed = cli("ledger", "consistency", "--old", plain, "--policy", policy)
    assert unwitnessed.code == 1
    assert "quorum" in unwitnessed.stderr
    # Without --policy the same saved checkpoint is only checked against the log's key.
    assert cli("ledger", "consistency", "--old", plain).code == 0


def test_a_purge_leaves_the_log_verifying_against_the_witnessed_checkpoint(
    world: World, cli: CliRunner, witnessed: Witnessed, tmp_path: Path
) -> None:
    """Issue 18: purging a package destroys its entries' openings, and the log still verifies
    against the checkpoint the witnesses cosigned before the purge."""
    vault, uz = world.vault, world["uz.officer"]
    meta = NewPackage(title="Seizure", classification=Classification.RESTRICTED)
    package = vault.upload(uz, meta, [IncomingFile("n.txt", io.BytesIO(b"x"))]).package.id
    vault.get_package(uz, package)

    def scoped_export(name: str) -> tuple[Path, set[int]]:
        """The UZ auditor's scoped export, and the entries whose openings name the package."""
        path = tmp_path / name
        with path.open("w") as out:
            vault.export_ledger(world["uz.auditor"], out, scoped=True)
        document = json.loads(path.read_text())
        return path, {o["seq"] for o in document["openings"] if package in json.dumps(o)}

    assert witnessed.publishing.round() is not None
    before, about = scoped_export("before.json")
    assert len(about) >= 2  # the upload and the read
    vault.purge(local_operator(), package)
    after, about_after = scoped_export("after.json")
    # Only the purge's own entry still names the package (kept: the originating country's
    # auditor sees that it was purged, and by whom).
    assert not about & about_after
    assert len(about_after) == 1
    witnessed_before = json.loads(before.read_text())["witnessed_checkpoint"]
    assert json.loads(after.read_text())["witnessed_checkpoint"] == witnessed_before
    checked = cli("ledger", "verify", "--export", after, "--policy", witnessed.policy_file)
    assert checked.code == 0, checked.stderr
    assert "cosigned by KZ, TJ" in checked.stdout
