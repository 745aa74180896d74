"""Tests for vault.witness.policy: C2SP tlog-policy parsing and the quorum check, with
cosignatures made by real witnesses (vault.witness.core) on real trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.witness_log import LogOperator, Tree, add_body, tree_of
from vault.errors import InvalidInput, LedgerCorrupt
from vault.ledger.note import parse_note
from vault.witness.core import RootConflict, Witness, init_witness
from vault.witness.cosignature import Cosigner
from vault.witness.policy import QuorumNotMet, parse_policy, verify_witnessed

NOW = 1_790_000_000


def _vkeys(n: int) -> list[str]:
    return [Cosigner.generate(f"w{i}.example/witness").vkey() for i in range(n)]


def test_spec_example_policy_two_levels_of_groups() -> None:
    log = LogOperator()
    x1, x2, x3, y1, y2, y3 = _vkeys(6)
    policy = parse_policy(
        f"log {log.vkey}\n"
        "\n"
        f"witness X1 {x1}\nwitness X2 {x2}\nwitness X3 {x3}\n"
        "group X-witnesses 2 X1 X2 X3\n"
        "\n"
        f"witness Y1 {y1}\nwitness Y2 {y2}\nwitness Y3 {y3}\n"
        "group Y-witnesses any Y1 Y2 Y3\n"
        "\n"
        "group X-and-Y all X-witnesses Y-witnesses\n"
        "quorum X-and-Y\n"
    )
    assert policy.quorum == "X-and-Y"
    assert policy.groups["X-witnesses"].threshold == 2
    assert policy.groups["Y-witnesses"].threshold == 1
    assert policy.groups["X-and-Y"].threshold == 2
    assert policy.satisfied_by({"X1", "X3", "Y2"})
    assert not policy.satisfied_by({"X1", "Y1", "Y2", "Y3"})
    assert not policy.satisfied_by({"X1", "X2", "X3"})
    assert not policy.satisfied_by(set())


def test_whitespace_comments_urls_and_quorum_none() -> None:
    log = LogOperator()
    (w,) = _vkeys(1)
    policy = parse_policy(
        "# the vault's log\n"
        f"  log\t{log.vkey}   https://vault.uz.example/\n"
        f"witness KZ {w} http://127.0.0.1:8380\t\n"
        "   # comment after spaces\n"
        "quorum KZ"  # no final newline: tolerated
    )
    assert policy.logs[0][1] == "https://vault.uz.example/"
    assert policy.witnesses["KZ"].url == "http://127.0.0.1:8380"
    assert parse_policy("quorum none\n").satisfied_by(set())


@pytest.mark.parametrize(
    "text",
    [
        "",  # no quorum
        "quorum none\nquorum none\n",
        "quorum W\n",  # undefined
        "frobnicate x\nquorum none\n",
        "witness none {w0}\nquorum none\n",
        "witness A {w0}\nwitness A {w1}\nquorum A\n",
        "witness A {w0}\nwitness B {w0}\nquorum A\n",  # duplicate key
        "witness A {w0}\ngroup G 1 A B\nquorum G\n",  # B undefined
        "group G 1 A\nwitness A {w0}\nquorum G\n",  # forward reference
        "witness A {w0}\ngroup G 1 A A\nquorum G\n",
        # a member of two groups would count twice towards "all U K" (tlog-policy: a name
        # is listed as a group member at most once)
        "witness A {w0}\nwitness B {w1}\ngroup U any A\ngroup K any A B\ngroup Q all U K\n"
        "quorum Q\n",
        "witness A {w0}\ngroup G 0 A\nquorum G\n",
        "witness A {w0}\ngroup G 2 A\nquorum G\n",
        "witness A {w0}\ngroup G 01 A\nquorum G\n",
        "witness A {w0}\ngroup G any\nquorum G\n",
        "witness A {w0}\ngroup A any A\nquorum A\n",
        "witness A {w0}\ngroup G any A none\nquorum G\n",
        "witness A {log}\nquorum A\n",  # a 0x01 key is not a witness key
        "log {w0}\nquorum none\n",  # a 0x04 key is not a log key
        "log {log}\nlog {log}\nquorum none\n",
        "witness A {w0} http://x extra\nquorum A\n",
        "witness A\nquorum A\n",
        "quorum none\x0c\n",
        "quorum none\r\n",
    ],
)
def test_policy_errors(text: str) -> None:
    w0, w1 = _vkeys(2)
    with pytest.raises(InvalidInput):
        parse_policy(text.format(w0=w0, w1=w1, log=LogOperator().vkey))


# --------------------------------------------------------------------------- the quorum check


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log() -> LogOperator:
    return LogOperator()


@pytest.fixture
def witnesses(tmp_path: Path, log: LogOperator) -> list[Witness]:
    out = []
    for country in ("kz", "tj", "kg"):
        directory = tmp_path / country
        init_witness(directory, name=f"witness.{country}.example/blo", log_vkeys=[log.vkey])
        out.append(Witness.open(directory, clock=Clock(NOW)))
    return out


def policy_for(log: LogOperator, witnesses: list[Witness], quorum: str = "2") -> str:
    lines = [f"log {log.vkey}"]
    lines += [f"witness {w.cosigner.name[8:10].upper()} {w.cosigner.vkey()}" for w in witnesses]
    names = " ".join(w.cosigner.name[8:10].upper() for w in witnesses)
    return "\n".join([*lines, f"group countries {quorum} {names}", "quorum countries", ""])


def cosign(witness: Witness, old: int, tree: Tree, log: LogOperator) -> str:
    return witness.add_checkpoint(log.body(old, tree))


def test_two_of_three_accepts_with_two_and_refuses_with_one(
    log: LogOperator, witnesses: list[Witness]
) -> None:
    policy = parse_policy(policy_for(log, witnesses))
    tree = tree_of(12)
    note = log.signed(tree)
    kz, tj, _ = (cosign(w, 0, tree, log) for w in witnesses)
    with pytest.raises(QuorumNotMet):
        verify_witnessed(note, policy, now=NOW)
    with pytest.raises(QuorumNotMet):
        verify_witnessed(note + kz, policy, now=NOW)
    with pytest.raises(QuorumNotMet):  # the same witness twice is still one witness
        verify_witnessed(note + kz + kz, policy, now=NOW)
    ok = verify_witnessed(note + kz + tj, policy, now=NOW)
    assert ok.checkpoint.size == 12
    assert ok.cosigned_at == {"KZ": NOW, "TJ": NOW}
    assert issubclass(QuorumNotMet, LedgerCorrupt)


def test_split_view_never_reaches_quorum(log: LogOperator, witnesses: list[Witness]) -> None:
    policy = parse_policy(policy_for(log, witnesses))
    kz, tj, kg = witnesses
    common = tree_of(6)
    for w in witnesses:
        cosign(w, 0, common, log)
    branch_a = tree_of(6)
    branch_b = tree_of(6)
    for leaf in (b"shown to KZ and TJ", b"a"):
        branch_a.append(leaf)
    for leaf in (b"shown to KG", b"b"):
        branch_b.append(leaf)
    a_note, b_note = log.signed(branch_a), log.signed(branch_b)
    a_sigs = cosign(kz, 6, branch_a, log) + cosign(tj, 6, branch_a, log)
    b_sigs = cosign(kg, 6, branch_b, log)
    assert verify_witnessed(a_note + a_sigs, policy, now=NOW).checkpoint.size == 8
    with pytest.raises(QuorumNotMet):
        verify_witnessed(b_note + b_sigs, policy, now=NOW)
    # The operator now asks a witness that cosigned branch A for branch B: refused.
    with pytest.raises(RootConflict):
        kz.add_checkpoint(add_body(8, [], b_note))
    # Cosignatures over branch A pasted under branch B's checkpoint do not verify.
    with pytest.raises(QuorumNotMet):
        verify_witnessed(b_note + a_sigs, policy, now=NOW)


def test_future_dated_tampered_and_foreign_signatures(
    log: LogOperator, witnesses: list[Witness]
) -> None:
    policy = parse_policy(policy_for(log, witnesses))
    tree = tree_of(5)
    note = log.signed(tree)
    sigs = [cosign(w, 0, tree, log) for w in witnesses]
    assert verify_witnessed(note + sigs[0] + sigs[1], policy, now=NOW - 60)
    with pytest.raises(QuorumNotMet, match="future"):
        verify_witnessed(note + sigs[0] + sigs[1], policy, now=NOW - 61)
    flipped = sigs[2][:-6] + ("A" if sigs[2][-6] != "A" else "B") + sigs[2][-5:]
    with pytest.raises(QuorumNotMet):  # a listed witness's bad signature rejects the note
        verify_witnessed(note + sigs[0] + sigs[1] + flipped, policy, now=NOW)
    stranger = Cosigner.generate("witness.kz.example/blo")  # same name, other key: ignored
    extra = stranger.cosign(parse_note(note).text, NOW)
    assert verify_witnessed(note + sigs[0] + sigs[1] + extra.line(), policy, now=NOW)
    other_log = LogOperator(log.origin)
    with pytest.raises(QuorumNotMet, match="not signed by a policy log"):
        verify_witnessed(other_log.signed(tree) + sigs[0] + sigs[1], policy, now=NOW)
    with pytest.raises(InvalidInput):
        verify_witnessed("garbage", policy, now=NOW)
