"""``blovault witness publish --once`` on a seeded vault and ``blovault witness verify`` of
what it wrote, against two witness servers on 127.0.0.1 (2-of-2)."""

from __future__ import annotations

import base64
from pathlib import Path

from tests.api.test_witnessed_ledger import witness_server
from tests.conftest import CliRunner, World
from vault.ledger.note import parse_note
from vault.witness.core import Witness, init_witness


def test_publish_once_then_verify_with_the_policy(
    world: World, cli: CliRunner, tmp_path: Path
) -> None:
    log_vkey = world.vault.ledger_vkey
    witnesses = []
    for country in ("kz", "tj"):
        init_witness(
            tmp_path / country, name=f"witness.{country}.example/blo", log_vkeys=[log_vkey]
        )
        witnesses.append(Witness.open(tmp_path / country))
    out = tmp_path / "witnessed"
    policy = tmp_path / "policy"
    with witness_server(witnesses[0]) as kz, witness_server(witnesses[1]) as tj:
        policy.write_text(
            f"log {log_vkey}\n"
            f"witness KZ {witnesses[0].cosigner.vkey()} {kz}\n"
            f"witness TJ {witnesses[1].cosigner.vkey()} {tj}\n"
            "group both all KZ TJ\nquorum both\n"
        )
        result = cli("witness", "publish", "--policy", policy, "--once", "--out", out)
        assert result.code == 0, result.stderr
    bundle, entry = tmp_path / "e3.tlog-proof", tmp_path / "e3.entry"
    proved = cli(
        "witness", "prove", "3", "--checkpoint", out, "--out", bundle, "--entry-out", entry
    )
    assert proved.code == 0, proved.stderr
    assert bundle.read_text().startswith("c2sp.org/tlog-proof@v1\nindex 3\n")
    included = cli("witness", "verify-proof", bundle, "--policy", policy, "--entry", entry)
    assert included.code == 0, included.stderr
    assert "entry 3 is in" in included.stdout
    entry.write_bytes(entry.read_bytes() + b" ")
    altered = cli("witness", "verify-proof", bundle, "--policy", policy, "--entry", entry)
    assert altered.code == 1, altered.stderr

    checked = cli("witness", "verify", out, "--policy", policy)
    assert checked.code == 0, checked.stderr
    assert "cosigned by KZ" in checked.stdout
    assert "cosigned by TJ" in checked.stdout

    # Drop one cosignature: 1 of 2 is below the quorum, exit 1 (LedgerCorrupt).
    note = out.read_text()
    text, sigs = note.split("\n\n", 1)
    lines = sigs.splitlines(keepends=True)
    assert len(lines) == 3
    (tmp_path / "one").write_text(text + "\n\n" + lines[0] + lines[1])
    short = cli("witness", "verify", tmp_path / "one", "--policy", policy)
    assert short.code == 1
    assert "quorum" in short.stderr

    # Another tree's checkpoint with these cosignatures pasted under it: rejected.
    parsed = parse_note(note)
    origin, size, root = parsed.text.splitlines()
    forged_root = base64.b64encode(bytes(32)).decode()
    (tmp_path / "forged").write_text(f"{origin}\n{size}\n{forged_root}\n\n" + sigs)
    forged = cli("witness", "verify", tmp_path / "forged", "--policy", policy)
    assert forged.code == 1
    assert root != forged_root

    # With both witnesses down, a new round does not meet the quorum: exit 7.
    world.vault.latest_checkpoint(world["uz.auditor"])
    down = cli("witness", "publish", "--policy", policy, "--once", "--out", tmp_path / "x")
    assert down.code == 7
    assert "unreachable" in down.stderr
    assert not (tmp_path / "x").exists()
