"""Tests for vault.witness.proof: C2SP tlog-proof bundles over real trees, checkpoints
cosigned by real witnesses, and a 2-of-3 policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.witness_log import LogOperator, tree_of
from vault.errors import InvalidInput, LedgerCorrupt
from vault.ledger import merkle
from vault.witness.core import Witness, init_witness
from vault.witness.policy import Policy, QuorumNotMet, parse_policy
from vault.witness.proof import format_tlog_proof, parse_tlog_proof, verify_tlog_proof

NOW = 2**40


@pytest.fixture
def log() -> LogOperator:
    return LogOperator()


@pytest.fixture
def setup(tmp_path: Path, log: LogOperator) -> tuple[list[Witness], Policy]:
    witnesses = []
    for c in ("kz", "tj", "kg"):
        init_witness(tmp_path / c, name=f"witness.{c}.example/blo", log_vkeys=[log.vkey])
        witnesses.append(Witness.open(tmp_path / c))
    policy = parse_policy(
        f"log {log.vkey}\n"
        + "".join(f"witness W{i} {w.cosigner.vkey()}\n" for i, w in enumerate(witnesses))
        + "group g 2 W0 W1 W2\nquorum g\n"
    )
    return witnesses, policy


def test_bundle_round_trip_and_verify(
    log: LogOperator, setup: tuple[list[Witness], Policy]
) -> None:
    witnesses, policy = setup
    tree = tree_of(21)
    note = log.signed(tree)
    cosigned = note + "".join(w.add_checkpoint(log.body(0, tree)) for w in witnesses[:2])
    entry = b"a:13"
    proof = tree.inclusion(13)
    bundle = format_tlog_proof(13, proof, cosigned, extra=b"ctx")
    parsed = parse_tlog_proof(bundle)
    assert (parsed.index, list(parsed.proof), parsed.extra) == (13, proof, b"ctx")
    assert parsed.checkpoint == cosigned
    _, witnessed = verify_tlog_proof(bundle, entry, policy, now=NOW)
    assert witnessed.checkpoint.size == 21
    assert format_tlog_proof(13, proof, cosigned).splitlines()[1] == "index 13"

    with pytest.raises(LedgerCorrupt):
        verify_tlog_proof(bundle, b"a:14", policy, now=NOW)  # another entry
    with pytest.raises(LedgerCorrupt):
        verify_tlog_proof(format_tlog_proof(12, proof, cosigned), entry, policy, now=NOW)
    with pytest.raises(LedgerCorrupt):
        verify_tlog_proof(format_tlog_proof(13, proof[:-1], cosigned), entry, policy, now=NOW)
    with pytest.raises(QuorumNotMet):  # only the log's signature: no quorum
        verify_tlog_proof(format_tlog_proof(13, proof, note), entry, policy, now=NOW)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "c2sp.org/tlog-proof@v2\nindex 0\n\nx\n",
        "c2sp.org/tlog-proof@v1\nindex 01\n\nx\n",
        "c2sp.org/tlog-proof@v1\nindex -1\n\nx\n",
        "c2sp.org/tlog-proof@v1\n\nx\n",
        "c2sp.org/tlog-proof@v1\nextra !!\nindex 0\n\nx\n",
        "c2sp.org/tlog-proof@v1\nindex 0\nAAAA\n\nx\n",
        "c2sp.org/tlog-proof@v1\nindex 0\n",
        "c2sp.org/tlog-proof@v1\nindex 0\n" + ("A" * 43 + "=\n") * 65 + "\nx\n",
    ],
)
def test_malformed_bundles(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_tlog_proof(text)


def test_spec_example_header_lines_parse() -> None:
    # c2sp.org/tlog-proof example, with the signatures the spec elides left out.
    example = (
        "c2sp.org/tlog-proof@v1\n"
        "extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ\n"
        "index 73894\n"
        "gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\n"
        "B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=\n"
        "EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=\n"
        "RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=\n"
        "AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=\n"
        "\n"
        "example.com/fancylog\n109482\nsFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n"
    )
    parsed = parse_tlog_proof(example)
    assert parsed.index == 73894
    assert len(parsed.proof) == 5
    assert all(len(h) == merkle.HASH_SIZE for h in parsed.proof)
    assert parsed.extra is not None
    assert parsed.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
