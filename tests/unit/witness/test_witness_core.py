"""Tests for vault.witness.core: c2sp.org/tlog-witness add-checkpoint against a real state
database in a temporary directory, with trees, keys and proofs built by a log operator that
holds the log's key (the attacker a witness exists to catch)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.witness_log import ORIGIN, LogOperator, Tree, add_body, tree_of
from vault.errors import ConfigError, Conflict, InvalidInput, VaultMissing
from vault.ledger import merkle
from vault.ledger.note import parse_note
from vault.witness.core import (
    MAX_PROOF_LINES,
    InconsistentProof,
    LogHead,
    LogSignatureInvalid,
    RootConflict,
    SizeConflict,
    UnknownLog,
    Witness,
    init_witness,
    parse_add_checkpoint,
)
from vault.witness.cosignature import CosignatureVerifier

NOW = 1_790_000_000


class Clock:
    """A settable clock (a dependency passed in, not a patch)."""

    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log() -> LogOperator:
    return LogOperator()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def witness(tmp_path: Path, log: LogOperator, clock: Clock) -> Witness:
    directory = tmp_path / "kz-witness"
    init_witness(directory, name="witness.kz.example/blo", log_vkeys=[log.vkey])
    return Witness.open(directory, clock=clock)


def head(witness: Witness) -> LogHead:
    (only,) = witness.heads()
    return only


def cosign_ok(witness: Witness, body: bytes) -> int:
    """Submit; check the reply is one cosignature/v1 line over the checkpoint; return its time."""
    lines = witness.add_checkpoint(body)
    note = body.decode().split("\n\n", 1)[1]
    text = parse_note(note).text
    (sig,) = parse_note(text + "\n" + lines).signatures
    return witness.cosigner.verifier().verify(text, sig)


# --------------------------------------------------------------------------- the happy path


def test_init_makes_private_key_and_directory(tmp_path: Path, log: LogOperator) -> None:
    directory = tmp_path / "w"
    cosigner = init_witness(directory, name="witness.tj.example/blo", log_vkeys=[log.vkey])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "witness.key").stat().st_mode) == 0o600
    opened = Witness.open(directory)
    assert opened.cosigner.vkey() == cosigner.vkey()
    assert CosignatureVerifier.from_vkey(cosigner.vkey()).name == "witness.tj.example/blo"
    assert head(opened) == LogHead(ORIGIN, log.vkey, 0, merkle.EMPTY_ROOT, None, None)
    with pytest.raises(Conflict):
        init_witness(directory, name="witness.tj.example/blo", log_vkeys=[log.vkey])


def test_init_and_open_refusals(tmp_path: Path, log: LogOperator) -> None:
    with pytest.raises(InvalidInput):
        init_witness(tmp_path / "a", name="bad name", log_vkeys=[log.vkey])
    with pytest.raises(InvalidInput):
        init_witness(tmp_path / "b", name="w.example/x", log_vkeys=["not-a-vkey"])
    with pytest.raises(InvalidInput):
        init_witness(tmp_path / "c", name="w.example/x", log_vkeys=[])
    with pytest.raises(VaultMissing):
        Witness.open(tmp_path / "nowhere")
    busy = tmp_path / "home"
    busy.mkdir(mode=0o755)
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(Conflict, match="not an empty directory"):
        init_witness(busy, name="w.example/x", log_vkeys=[log.vkey])
    assert stat.S_IMODE(busy.stat().st_mode) == 0o755
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    init_witness(tmp_path / "d", name="w.example/x", log_vkeys=[log.vkey])
    os.chmod(tmp_path / "d" / "witness.key", 0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        Witness.open(tmp_path / "d")


def test_first_checkpoint_then_extensions(witness: Witness, log: LogOperator, clock: Clock) -> None:
    tree = tree_of(5)
    assert cosign_ok(witness, log.body(0, tree)) == NOW
    assert (head(witness).size, head(witness).root_hash) == (5, tree.root())
    for n in range(6, 40, 7):
        while tree.size < n:
            tree.append(f"a:{tree.size}".encode())
        clock.now += 10
        old = head(witness).size
        assert cosign_ok(witness, log.body(old, tree)) == int(clock.now)
        assert (head(witness).size, head(witness).root_hash) == (n, tree.root())
        assert head(witness).cosigned_at == int(clock.now)


def test_same_head_again_is_cosigned_and_time_never_goes_back(
    witness: Witness, log: LogOperator, clock: Clock
) -> None:
    tree = tree_of(8)
    cosign_ok(witness, log.body(0, tree))
    clock.now -= 3600  # the clock steps back
    assert cosign_ok(witness, log.body(8, tree)) == NOW
    assert head(witness).size == 8


def test_empty_tree(witness: Witness, log: LogOperator) -> None:
    cosign_ok(witness, add_body(0, [], log.checkpoint(0, merkle.EMPTY_ROOT)))
    with pytest.raises(RootConflict):
        witness.add_checkpoint(add_body(0, [], log.checkpoint(0, bytes(32))))


# ------------------------------------------------------------------ attacks: nothing stored


def test_split_view_same_size_is_refused(witness: Witness, log: LogOperator) -> None:
    common = [f"c:{i}".encode() for i in range(5)]
    branch_a = Tree([*common, b"kz-sees-this", b"a", b"a"])
    branch_b = Tree([*common, b"tj-sees-that", b"b", b"b"])
    assert branch_a.root() != branch_b.root()
    cosign_ok(witness, log.body(0, Tree(common)))
    cosign_ok(witness, log.body(5, branch_a))
    before = witness.heads()
    with pytest.raises(RootConflict):  # 409: same size, another root
        witness.add_checkpoint(add_body(8, [], log.signed(branch_b)))
    with pytest.raises(SizeConflict) as conflict:  # 409: the witness is past 5
        witness.add_checkpoint(log.body(5, branch_b))
    assert conflict.value.witness_size == 8
    # Growing the other branch does not help: its proof can't start from branch A's root.
    branch_b.append(b"more")
    with pytest.raises(InconsistentProof):  # 422
        witness.add_checkpoint(log.body(8, branch_b))
    assert witness.heads() == before


def test_rollback_is_refused(witness: Witness, log: LogOperator) -> None:
    tree = tree_of(9)
    cosign_ok(witness, log.body(0, tree))
    before = witness.heads()
    with pytest.raises(InvalidInput):  # 400: old 9 > new 5
        witness.add_checkpoint(add_body(9, [], log.signed(tree, 5)))
    with pytest.raises(SizeConflict):  # 409: old 5 is not what the witness cosigned
        witness.add_checkpoint(log.body(0, tree, 5))
    with pytest.raises(SizeConflict):
        witness.add_checkpoint(add_body(3, tree.proof(3, 5), log.signed(tree, 5)))
    assert witness.heads() == before


def test_forged_consistency_proofs_are_refused(witness: Witness, log: LogOperator) -> None:
    tree = tree_of(6)
    cosign_ok(witness, log.body(0, tree))
    bigger = tree_of(13)
    assert bigger.root(6) == tree.root()
    good = bigger.proof(6)
    before = witness.heads()
    forgeries = [
        [bytes(32)] * len(good),  # right length, wrong hashes
        good[:-1],  # too short
        [*good, bytes(32)],  # too long
        [],  # none at all
        [good[0], bytes([good[1][0] ^ 1]) + good[1][1:], *good[2:]],  # one bit flipped
    ]
    for proof in forgeries:
        with pytest.raises(InconsistentProof):
            witness.add_checkpoint(add_body(6, proof, log.signed(bigger)))
    # A correct proof for another tree of the same size does not fit either.
    other = tree_of(13, tag="z")
    with pytest.raises(InconsistentProof):
        witness.add_checkpoint(add_body(6, other.proof(6), log.signed(other)))
    assert witness.heads() == before
    cosign_ok(witness, add_body(6, good, log.signed(bigger)))
    assert head(witness).size == 13


def test_nonempty_proof_from_zero_or_between_equal_sizes(
    witness: Witness, log: LogOperator
) -> None:
    tree = tree_of(4)
    with pytest.raises(InconsistentProof):
        witness.add_checkpoint(add_body(0, [bytes(32)], log.signed(tree)))
    cosign_ok(witness, log.body(0, tree))
    with pytest.raises(InconsistentProof):
        witness.add_checkpoint(add_body(4, [bytes(32)], log.signed(tree)))


# --------------------------------------------------------------------------- bad input


def test_wrong_origin_and_wrong_key(witness: Witness, log: LogOperator) -> None:
    tree = tree_of(3)
    stranger = LogOperator("blo-vault.elsewhere.example/ledger")
    with pytest.raises(UnknownLog):  # 404
        witness.add_checkpoint(stranger.body(0, tree))
    impostor = LogOperator(ORIGIN)  # the right origin, another key
    with pytest.raises(LogSignatureInvalid):  # 403
        witness.add_checkpoint(impostor.body(0, tree))
    # The log's real signature next to an unknown key's is fine (unknown keys are ignored) ...
    note = log.signed(tree)
    extra = impostor.signed(tree).split("\n\n", 1)[1]
    cosign_ok(witness, add_body(0, [], note + extra))
    # ... but a tampered log signature is not.
    bad = note[:-6] + ("A" if note[-6] != "A" else "B") + note[-5:]
    with pytest.raises((LogSignatureInvalid, InvalidInput)):
        witness.add_checkpoint(add_body(3, [], bad))
    assert head(witness).size == 3


def test_valid_log_signature_on_a_garbage_root(witness: Witness, log: LogOperator) -> None:
    tree = tree_of(8)
    cosign_ok(witness, log.body(0, tree))
    before = witness.heads()
    garbage = log.checkpoint(11, bytes.fromhex("ab" * 32))
    with pytest.raises(InconsistentProof):
        witness.add_checkpoint(add_body(8, tree_of(11).proof(8), garbage))
    with pytest.raises(RootConflict):
        witness.add_checkpoint(add_body(8, [], log.checkpoint(8, bytes.fromhex("ab" * 32))))
    assert witness.heads() == before


def test_sizes_over_two_to_the_63(witness: Witness, log: LogOperator) -> None:
    tree = tree_of(2)
    with pytest.raises(InvalidInput):
        witness.add_checkpoint(add_body(2**63, [], log.signed(tree)))
    with pytest.raises(InvalidInput):
        witness.add_checkpoint(add_body(0, [], log.checkpoint(2**63, tree.root())))
    with pytest.raises(InvalidInput):
        witness.add_checkpoint(add_body(0, [], log.checkpoint(2**64 - 1, tree.root())))
    assert head(witness).size == 0
    assert head(witness).cosigned_at is None


def test_sixty_four_proof_lines(witness: Witness, log: LogOperator) -> None:
    tree = tree_of(2)
    with pytest.raises(InvalidInput, match="63"):
        witness.add_checkpoint(add_body(0, [bytes(32)] * (MAX_PROOF_LINES + 1), log.signed(tree)))
    # 63 lines parse (and then fail as a proof, which is a different status).
    with pytest.raises(InconsistentProof):
        witness.add_checkpoint(add_body(0, [bytes(32)] * MAX_PROOF_LINES, log.signed(tree)))
    assert head(witness).size == 0


MALFORMED = [
    b"",
    b"\n\n",
    b"old 0\n",
    b"old 0",
    b"old 01\n\nx\n",
    b"old -1\n\n",
    b"old  0\n\n",
    b"old 0 \n\n",
    b"Old 0\n\n",
    b"old 0x10\n\n",
    b"old 0\n\nnot a checkpoint\n",
    b"old 0\nnot-base64!\n\n",
    b"old 0\nAAAA\n\n",  # base64 but not 32 bytes
    b"\xff\xfe",
    b"old 0\r\n\r\n",
    b"old 0\n\n" + b"x" * 70_000,
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_bodies(witness: Witness, body: bytes) -> None:
    with pytest.raises(InvalidInput) as refused:
        witness.add_checkpoint(body)
    assert not isinstance(refused.value, InconsistentProof)
    assert head(witness).size == 0


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b.replace(b"\n\n", b"\n", 1),  # no empty line before the checkpoint
        lambda b: b.replace(b"\n\xe2\x80\x94", b"\n\xe2\x80\x94 ", 1),  # broken signature line
        lambda b: b[:-1],  # checkpoint note missing its final newline
        lambda b: b.replace(b"old 0", b"old 0\x00"),
    ],
)
def test_mangled_valid_bodies(
    witness: Witness, log: LogOperator, mangle: Callable[[bytes], bytes]
) -> None:
    body = log.body(0, tree_of(3))
    assert callable(mangle)
    with pytest.raises(InvalidInput):
        witness.add_checkpoint(mangle(body))
    assert head(witness).size == 0


def test_parse_reads_proof_lines_and_checkpoint(log: LogOperator) -> None:
    tree = tree_of(10)
    req = parse_add_checkpoint(add_body(3, tree.proof(3), log.signed(tree)))
    assert req.old_size == 3
    assert list(req.proof) == tree.proof(3)
    assert (req.checkpoint.origin, req.checkpoint.size) == (ORIGIN, 10)
