"""The ledger verifier walks entries in aligned blocks; its answer must not depend on the block.

A 300-entry ledger with checkpoints at 100, 257 and 300 is verified intact and after each kind
of damage, with block sizes from 2 to 4,096 entries: every block size must give the same
verdict, first bad sequence number and reason. The stored Merkle nodes are a dict here (the
database path is covered by tests/integration/test_ledger_tamper.py).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vault.ledger import merkle, note
from vault.ledger.entry import GENESIS_PREV, Entry, decode, leaf_hash
from vault.ledger.verify import (
    BLOCK_LEVEL,
    ListSource,
    VerifyResult,
    verify_entries,
    verify_export,
)

ORIGIN = "test.blo-vault.local/ledger"
SIZE = 300
CHECKPOINTS = (100, 257, 300)
BLOCK_LEVELS = (1, 2, 3, 5, BLOCK_LEVEL)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
VERIFIER = note.Verifier.from_public_key(ORIGIN, KEY.public_key())

Nodes = dict[tuple[int, int], bytes]


def entry(seq: int, prev: str, decision: str = "allow") -> Entry:
    return Entry(
        seq,
        1_700_000_000_000_000 + seq,
        f"user{seq % 7}",
        "UZ-CUS",
        "UZ",
        "read",
        f"pkg{seq % 11}",
        "",
        "",
        "",
        decision,
        "ok",
        "H0",
        "p" * 64,
        prev,
    )


def chain(datas: list[bytes], start: int = 0) -> list[bytes]:
    """Re-link entries from ``start`` on, as a forger rewriting the tail would."""
    out = datas[:start]
    prev = leaf_hash(out[-1]).hex() if out else GENESIS_PREV
    for data in datas[start:]:
        data = dataclasses.replace(decode(data), prev=prev).encode()
        out.append(data)
        prev = leaf_hash(data).hex()
    return out


def nodes_of(datas: list[bytes]) -> Nodes:
    rng = merkle.CompactRange()
    store: Nodes = {}
    for data in datas:
        for node in rng.append(leaf_hash(data)):
            store[(node.level, node.idx)] = node.hash
    return store


def checkpoint(datas: list[bytes], size: int) -> note.Checkpoint:
    root = merkle.root_from_leaf_hashes([leaf_hash(d) for d in datas[:size]])
    signed = note.sign_checkpoint(note.Checkpoint(ORIGIN, size, root), ORIGIN, KEY)
    return note.open_checkpoint(signed, [VERIFIER], origin=ORIGIN)


@dataclasses.dataclass
class DictNodes:
    store: Nodes

    def hashes(self, level: int, lo: int, hi: int) -> list[bytes]:
        return [self.store[(level, i)] for i in range(lo, hi) if (level, i) in self.store]

    def indexed(self, level: int, lo: int, hi: int) -> dict[int, bytes]:
        return {i: self.store[(level, i)] for i in range(lo, hi) if (level, i) in self.store}


@dataclasses.dataclass
class Ledger:
    datas: list[bytes]
    nodes: Nodes
    checkpoints: list[note.Checkpoint]
    columns: bool = True  # rows carry the prev_hash column, as in the database

    def source(self) -> ListSource:
        columns = [bytes.fromhex(d[-64:].decode()) for d in self.datas] if self.columns else None
        return ListSource(self.datas, columns)

    def verify(self, block_level: int) -> VerifyResult:
        return verify_entries(
            self.source(),
            checkpoints=self.checkpoints,
            nodes=DictNodes(self.nodes),
            leaf_count=sum(1 for level, _ in self.nodes if level == 0),
            block_level=block_level,
        )


@pytest.fixture
def ledger() -> Ledger:
    datas = chain([entry(seq, "").encode() for seq in range(SIZE)])
    return Ledger(datas, nodes_of(datas), [checkpoint(datas, n) for n in CHECKPOINTS])


def same_everywhere(ledger: Ledger) -> VerifyResult:
    """Verify with every block size; all must agree. Returns the common result."""
    results = {level: ledger.verify(level) for level in BLOCK_LEVELS}
    first = results[BLOCK_LEVELS[0]]
    for level, result in results.items():
        assert result == first, (level, result, first)
    return first


def test_intact_ledger_verifies_with_every_block_size(ledger: Ledger) -> None:
    result = same_everywhere(ledger)
    assert result.ok
    assert result.size == SIZE
    assert result.checkpoint_size == SIZE
    want = merkle.root_from_leaf_hashes([leaf_hash(d) for d in ledger.datas])
    assert base64.b64decode(result.root) == want


@pytest.mark.parametrize("seq", [0, 1, 2, 3, 4, 7, 8, 63, 64, 99, 100, 101, 128, 256, 299])
def test_changed_entry_is_named(ledger: Ledger, seq: int) -> None:
    """Entry bytes changed, its stored leaf left alone: the leaf check names it."""
    ledger.datas[seq] = dataclasses.replace(decode(ledger.datas[seq]), decision="deny").encode()
    result = same_everywhere(ledger)
    assert (result.ok, result.first_bad_seq) == (False, seq)
    assert "does not match its Merkle leaf" in str(result.problem)


@pytest.mark.parametrize("seq", [1, 5, 64, 150, 298])
def test_changed_entry_and_leaf_are_named(ledger: Ledger, seq: int) -> None:
    """Entry and its leaf changed together: the next entry's link (or the node above) tells."""
    ledger.datas[seq] = dataclasses.replace(decode(ledger.datas[seq]), decision="deny").encode()
    ledger.nodes[(0, seq)] = leaf_hash(ledger.datas[seq])
    result = same_everywhere(ledger)
    assert result.ok is False
    assert result.first_bad_seq in (seq, seq - (seq & 1))  # the entry, or the node over its pair


@pytest.mark.parametrize("seq", [0, 9, 100, 200, 299])
def test_deleted_entry(ledger: Ledger, seq: int) -> None:
    del ledger.datas[seq]
    result = same_everywhere(ledger)
    assert result.ok is False
    assert result.first_bad_seq == seq


@pytest.mark.parametrize(("a", "b"), [(0, 1), (10, 11), (63, 64), (120, 180)])
def test_swapped_entries(ledger: Ledger, a: int, b: int) -> None:
    ledger.datas[a], ledger.datas[b] = ledger.datas[b], ledger.datas[a]
    result = same_everywhere(ledger)
    assert result.ok is False
    assert result.first_bad_seq == a


@pytest.mark.parametrize(
    ("level", "idx"), [(1, 0), (1, 77), (2, 30), (3, 12), (5, 3), (6, 1), (7, 0), (8, 0)]
)
def test_changed_stored_node(ledger: Ledger, level: int, idx: int) -> None:
    ledger.nodes[(level, idx)] = bytes(32)
    results = {}
    for block_level in BLOCK_LEVELS:
        if level > block_level:
            continue  # checked by the layer above (log._check_stored_tree)
        results[block_level] = ledger.verify(block_level)
    assert results
    for result in results.values():
        assert result.ok is False
        assert result.first_bad_seq == idx << level
        assert f"stored Merkle node ({level}, {idx})" in str(result.problem)


@pytest.mark.parametrize("changed", [5, 99, 100, 150, 256, 258])
def test_consistent_rewrite_is_caught_by_the_checkpoint_before_it(
    ledger: Ledger, changed: int
) -> None:
    """Change one entry and recompute everything after it: only checkpoints can tell."""
    ledger.datas[changed] = dataclasses.replace(
        decode(ledger.datas[changed]), decision="deny"
    ).encode()
    ledger.datas = chain(ledger.datas, changed)
    ledger.nodes = nodes_of(ledger.datas)
    result = same_everywhere(ledger)
    covered = max([0, *(n for n in CHECKPOINTS if n <= changed)])
    assert result.ok is False
    assert result.first_bad_seq == covered
    assert "rewritten" in str(result.problem)


def test_truncated_tail_is_caught_by_the_checkpoint(ledger: Ledger) -> None:
    del ledger.datas[280:]
    ledger.nodes = nodes_of(ledger.datas)
    result = same_everywhere(ledger)
    assert result.ok is False
    assert result.first_bad_seq == 280


def test_export_mode_agrees_across_block_sizes(ledger: Ledger) -> None:
    """No stored nodes, no link column: the chain and the checkpoints alone. Entry 140's link
    is changed; with nothing to settle whether 139 or 140 changed, 139 is named."""
    ledger.columns = False
    ledger.datas[140] = ledger.datas[140][:-1] + b"0"
    verdicts = {
        level: verify_entries(ledger.source(), checkpoints=ledger.checkpoints, block_level=level)
        for level in BLOCK_LEVELS
    }
    assert len(set(verdicts.values())) == 1, verdicts
    result = verdicts[BLOCK_LEVEL]
    assert result.ok is False
    assert result.first_bad_seq == 139


def test_export_document_roundtrip(ledger: Ledger) -> None:
    signed = note.sign_checkpoint(ledger.checkpoints[-1], ORIGIN, KEY)
    document: dict[str, object] = {
        "origin": ORIGIN,
        "vkey": VERIFIER.vkey(),
        "checkpoint": signed,
        "entries": [base64.b64encode(d).decode() for d in ledger.datas],
    }
    assert verify_export(document, VERIFIER.vkey()).ok
    broken: Callable[[list[str]], list[object]]
    for broken in (
        lambda e: [*e[:7], "not base64!", *e[8:]],
        lambda e: [*e[:7], 7, *e[8:]],
        lambda e: [*e[:7], base64.b64encode(b"\x01short").decode(), *e[8:]],
    ):
        entries = list(document["entries"])  # type: ignore[call-overload]
        result = verify_export({**document, "entries": broken(entries)}, VERIFIER.vkey())
        assert result.ok is False
        assert result.first_bad_seq == 7, result
        assert result.problem == "entry 7 is malformed"


def test_push_subtree_refuses_misaligned_subtrees() -> None:
    rng = merkle.CompactRange()
    rng.push_subtree(2, bytes(32))
    assert rng.size == 4
    with pytest.raises(merkle.ProofError):
        rng.push_subtree(3, bytes(32))  # size 4 is not a multiple of 8
    with pytest.raises(merkle.ProofError):
        rng.push_subtree(0, b"short")
