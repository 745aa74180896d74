"""Known-answer and property tests for vault.ledger.merkle (RFC 6962 / RFC 9162 §2.1)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from vault.ledger import merkle
from vault.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    NodeID,
    ProofError,
    complete_nodes_after_append,
    consistency_proof,
    consistency_proof_nodes,
    inclusion_proof,
    inclusion_proof_nodes,
    leaf_hash,
    node_hash,
    root_at,
    root_from_leaf_hashes,
    root_nodes,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors"
TREE8: dict[str, Any] = json.loads((VECTORS / "rfc6962_tree8.json").read_text())
PLANS: dict[str, Any] = json.loads((VECTORS / "proof_node_plans.json").read_text())

LEAVES = [bytes.fromhex(x) for x in TREE8["leaves"]]
LEAF_HASHES = [leaf_hash(x) for x in LEAVES]
ROOTS = [bytes.fromhex(x) for x in TREE8["roots"]]
# From transparency-dev/merkle proof/verify_test.go.
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
MAX_PROPERTY_SIZE = 70


# --------------------------------------------------------------------------- reference


def ref_mth(hashes: Sequence[bytes]) -> bytes:
    """MTH exactly as written in RFC 9162 §2.1.1 (recursive, largest power of two split)."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(ref_mth(hashes[:k]), ref_mth(hashes[k:]))


def ref_path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) from RFC 9162 §2.1.3.1."""
    n = len(hashes)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, hashes[:k]), ref_mth(hashes[k:])]
    return [*ref_path(m - k, hashes[k:]), ref_mth(hashes[:k])]


def ref_subproof(m: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) from RFC 9162 §2.1.4.1."""
    n = len(hashes)
    if m == n:
        return [] if complete else [ref_mth(hashes)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, hashes[:k], complete), ref_mth(hashes[k:])]
    return [*ref_subproof(m - k, hashes[k:], False), ref_mth(hashes[:k])]


def ref_proof(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) from RFC 9162 §2.1.4.1."""
    if m in (0, len(hashes)):
        return []
    return ref_subproof(m, hashes, True)


def build_store(hashes: Sequence[bytes]) -> dict[NodeID, bytes]:
    """Complete-node store, built with CompactRange.append as a database would."""
    store: dict[NodeID, bytes] = {}
    rng = CompactRange()
    for h in hashes:
        for node in rng.append(h):
            store[(node.level, node.idx)] = node.hash
    return store


def getter(store: dict[NodeID, bytes], size: int | None = None) -> Callable[[int, int], bytes]:
    """get_node over a store; with ``size``, fail if asked for a node incomplete at size."""

    def get_node(level: int, index: int) -> bytes:
        if size is not None:
            assert (index + 1) << level <= size, f"node ({level}, {index}) incomplete at {size}"
        return store[(level, index)]

    return get_node


def random_hashes(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [leaf_hash(rnd.randbytes(rnd.randrange(0, 40))) for _ in range(n)]


PROPERTY_HASHES = random_hashes(MAX_PROPERTY_SIZE, seed=6962)
PROPERTY_STORE = build_store(PROPERTY_HASHES)


# --------------------------------------------------------------------------- hashing


def test_hash_primitives() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert leaf_hash(b"") == ROOTS[0]
    a, b = b"a" * 32, b"b" * 32
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert node_hash(a, b) != node_hash(b, a)


def test_known_roots_sizes_1_to_8() -> None:
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    store = build_store(LEAF_HASHES)
    for size in range(1, 9):
        want = ROOTS[size - 1]
        assert root_from_leaf_hashes(LEAF_HASHES[:size]) == want
        assert ref_mth(LEAF_HASHES[:size]) == want
        assert root_at(size, getter(store, size)) == want
        rng = CompactRange()
        rng.extend(LEAF_HASHES[:size])
        assert rng.root() == want


def test_rfc_example_tree_named_nodes() -> None:
    # RFC 6962 §2.1.3 example: the 7-leaf tree with nodes a..l.
    a, b, c, d, e, f, j = LEAF_HASHES[:7]
    g, h, i = node_hash(a, b), node_hash(c, d), node_hash(e, f)
    k, l_ = node_hash(g, h), node_hash(i, j)
    store = build_store(LEAF_HASHES[:7])
    get = getter(store)
    assert root_at(7, get) == node_hash(k, l_) == ROOTS[6]
    assert inclusion_proof(0, 7, get) == [b, h, l_]
    assert inclusion_proof(3, 7, get) == [c, g, l_]
    assert inclusion_proof(4, 7, get) == [f, j, k]
    assert inclusion_proof(6, 7, get) == [i, k]
    assert consistency_proof(3, 7, get) == [c, d, g, l_]
    assert consistency_proof(4, 7, get) == [l_]
    assert consistency_proof(6, 7, get) == [i, j, k]


# --------------------------------------------------------------------------- proof vectors


@pytest.mark.parametrize("vec", TREE8["inclusion"], ids=lambda v: f"{v['index']}of{v['size']}")
def test_inclusion_vectors(vec: dict[str, Any]) -> None:
    index, size = vec["index"], vec["size"]
    proof = [bytes.fromhex(x) for x in vec["proof"]]
    store = build_store(LEAF_HASHES)
    assert inclusion_proof(index, size, getter(store, size)) == proof
    verify_inclusion(LEAF_HASHES[index], index, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize("vec", TREE8["consistency"], ids=lambda v: f"{v['size1']}to{v['size2']}")
def test_consistency_vectors(vec: dict[str, Any]) -> None:
    size1, size2 = vec["size1"], vec["size2"]
    proof = [bytes.fromhex(x) for x in vec["proof"]]
    store = build_store(LEAF_HASHES)
    assert consistency_proof(size1, size2, getter(store, size2)) == proof
    verify_consistency(size1, size2, ROOTS[size1 - 1], ROOTS[size2 - 1], proof)


def inclusion_corruptions(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    """The probes of corruptInclusionProof in transparency-dev/merkle verify_test.go."""
    probes = [
        ("index - 1", index - 1, size, proof, root, leaf),
        ("index + 1", index + 1, size, proof, root, leaf),
        ("index ^ 2", index ^ 2, size, proof, root, leaf),
        ("size * 2", index, size * 2, proof, root, leaf),
        ("size // 2", index, size // 2, proof, root, leaf),
        ("wrong leaf", index, size, proof, root, b"WrongLeaf"),
        ("wrong leaf 32", index, size, proof, root, leaf_hash(b"WrongLeaf")),
        ("empty root", index, size, proof, EMPTY_ROOT, leaf),
        ("random root", index, size, proof, SOME_HASH, leaf),
        ("trailing garbage", index, size, [*proof, b""], root, leaf),
        ("trailing root", index, size, [*proof, root], root, leaf),
        ("preceding garbage", index, size, [b"", *proof], root, leaf),
        ("preceding root", index, size, [root, *proof], root, leaf),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((f"flipped bit in proof[{i}]", index, size, bad, root, leaf))
    if proof:
        probes.append(("removed component", index, size, proof[:-1], root, leaf))
    if len(proof) > 1:
        inserted = [proof[0], SOME_HASH, *proof[1:]]
        probes.append(("inserted component", index, size, inserted, root, leaf))
        for i in range(len(proof) - 1):
            swapped = list(proof)
            swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
            if swapped != proof:
                probes.append((f"swapped {i},{i + 1}", index, size, swapped, root, leaf))
    return probes


@pytest.mark.parametrize("vec", TREE8["inclusion"], ids=lambda v: f"{v['index']}of{v['size']}")
def test_inclusion_vectors_corrupted(vec: dict[str, Any]) -> None:
    index, size = vec["index"], vec["size"]
    proof = [bytes.fromhex(x) for x in vec["proof"]]
    probes = inclusion_corruptions(index, size, proof, ROOTS[size - 1], LEAF_HASHES[index])
    for desc, p_index, p_size, p_proof, p_root, p_leaf in probes:
        try:
            verify_inclusion(p_leaf, p_index, p_size, p_proof, p_root)
        except ProofError:
            continue
        pytest.fail(f"accepted corrupted inclusion proof: {desc}")


def consistency_corruptions(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> list[tuple[str, int, int, bytes, bytes, list[bytes]]]:
    """The probes of corruptConsistencyProof in transparency-dev/merkle verify_test.go."""
    probes = [
        ("size1 - 1", size1 - 1, size2, root1, root2, proof),
        ("size1 + 1", size1 + 1, size2, root1, root2, proof),
        ("size1 ^ 2", size1 ^ 2, size2, root1, root2, proof),
        ("size2 * 2", size1, size2 * 2, root1, root2, proof),
        ("size2 // 2", size1, size2 // 2, root1, root2, proof),
        ("wrong root1", size1, size2, b"WrongRoot", root2, proof),
        ("wrong root2", size1, size2, root1, b"WrongRoot", proof),
        ("random root1", size1, size2, SOME_HASH, root2, proof),
        ("random root2", size1, size2, root1, SOME_HASH, proof),
        ("swapped roots", size1, size2, root2, root1, proof),
        ("empty proof", size1, size2, root1, root2, []),
        ("trailing garbage", size1, size2, root1, root2, [*proof, b""]),
        ("trailing root1", size1, size2, root1, root2, [*proof, root1]),
        ("trailing root2", size1, size2, root1, root2, [*proof, root2]),
        ("preceding garbage", size1, size2, root1, root2, [b"", *proof]),
        ("preceding root1", size1, size2, root1, root2, [root1, *proof]),
        ("preceding root2", size1, size2, root1, root2, [root2, *proof]),
        ("preceding proof[0]", size1, size2, root1, root2, [proof[0], *proof]),
        ("truncated proof", size1, size2, root1, root2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((f"flipped bit in proof[{i}]", size1, size2, root1, root2, bad))
    for i in range(len(proof) - 1):
        swapped = list(proof)
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        if swapped != proof:
            probes.append((f"swapped {i},{i + 1}", size1, size2, root1, root2, swapped))
    return probes


@pytest.mark.parametrize(
    "vec",
    [v for v in TREE8["consistency"] if v["proof"]],
    ids=lambda v: f"{v['size1']}to{v['size2']}",
)
def test_consistency_vectors_corrupted(vec: dict[str, Any]) -> None:
    size1, size2 = vec["size1"], vec["size2"]
    proof = [bytes.fromhex(x) for x in vec["proof"]]
    probes = consistency_corruptions(size1, size2, ROOTS[size1 - 1], ROOTS[size2 - 1], proof)
    for desc, s1, s2, r1, r2, p in probes:
        try:
            verify_consistency(s1, s2, r1, r2, p)
        except ProofError:
            continue
        pytest.fail(f"accepted corrupted consistency proof: {desc}")


def test_verify_inclusion_single_entry() -> None:
    # TestVerifyInclusionSingleEntry: the root of a 1-leaf tree is its leaf hash.
    h = leaf_hash(b"data")
    verify_inclusion(h, 0, 1, [], h)
    for leaf, root in [(h, b""), (b"", h), (b"", b"")]:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, 0, 1, [], root)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1)])
def test_verify_inclusion_bad_probes(index: int, size: int) -> None:
    # TestVerifyInclusion probes: none of these may verify.
    for leaf, root in [(SOME_HASH, b""), (b"", EMPTY_ROOT), (SOME_HASH, EMPTY_ROOT)]:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, [], root)


ROOT_A = hashlib.sha256(b"don't care 1").digest()
ROOT_B = hashlib.sha256(b"don't care 2").digest()


@pytest.mark.parametrize(
    ("size1", "size2", "root1", "root2", "proof", "ok"),
    [
        # Adapted from TestVerifyConsistency; 32-byte roots, and the empty tree's root must
        # be EMPTY_ROOT here (the Go code ignores root1 when size1 is 0).
        (0, 0, ROOT_A, ROOT_B, [], False),
        (1, 1, ROOT_A, ROOT_B, [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
        (0, 1, EMPTY_ROOT, ROOT_B, [], True),
        (1, 1, ROOT_B, ROOT_B, [], True),
        (1, 0, ROOT_A, ROOT_B, [], False),
        (2, 1, ROOT_A, ROOT_B, [], False),
        (1, 2, ROOT_A, ROOT_B, [], False),
        (0, 0, EMPTY_ROOT, ROOT_B, [], False),
        (1, 1, EMPTY_ROOT, ROOT_B, [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        # Stricter than the Go code: a size-0 tree with a non-empty root is refused.
        (0, 1, ROOT_A, ROOT_B, [], False),
        (0, 0, ROOT_A, ROOT_A, [], False),
    ],
)
def test_verify_consistency_edge_cases(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes], ok: bool
) -> None:
    if ok:
        verify_consistency(size1, size2, root1, root2, proof)
    else:
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, root1, root2, proof)


def test_verify_rejects_bad_argument_types() -> None:
    h = LEAF_HASHES[0]
    with pytest.raises(ProofError, match="must not be negative"):
        verify_inclusion(h, -1, 1, [], h)
    with pytest.raises(ProofError, match="must be an int"):
        verify_inclusion(h, True, 2, [], h)
    with pytest.raises(ProofError, match="32 bytes"):
        verify_inclusion(h, 0, 2, [b"x" * 31], h)
    with pytest.raises(ProofError, match="needs 1 hashes, got 2"):
        verify_inclusion(h, 0, 2, [h, h], h)
    with pytest.raises(ProofError, match="exceeds"):
        verify_consistency(3, 2, h, h, [h])


# --------------------------------------------------------------------------- node plans


def as_groups(raw: list[list[list[int]]]) -> list[tuple[NodeID, ...]]:
    return [tuple((lvl, idx) for lvl, idx in group) for group in raw]


@pytest.mark.parametrize("vec", PLANS["inclusion"], ids=lambda v: f"{v['index']}of{v['size']}")
def test_inclusion_node_plan_vectors(vec: dict[str, Any]) -> None:
    assert inclusion_proof_nodes(vec["index"], vec["size"]) == as_groups(vec["groups"])


@pytest.mark.parametrize(("size", "index"), PLANS["inclusion_errors"])
def test_inclusion_node_plan_errors(size: int, index: int) -> None:
    with pytest.raises(ProofError):
        inclusion_proof_nodes(index, size)


@pytest.mark.parametrize("vec", PLANS["consistency"], ids=lambda v: f"{v['size1']}to{v['size2']}")
def test_consistency_node_plan_vectors(vec: dict[str, Any]) -> None:
    assert consistency_proof_nodes(vec["size1"], vec["size2"]) == as_groups(vec["groups"])


@pytest.mark.parametrize(("size1", "size2"), PLANS["consistency_errors"])
def test_consistency_node_plan_errors(size1: int, size2: int) -> None:
    with pytest.raises(ProofError):
        consistency_proof_nodes(size1, size2)


def test_root_nodes() -> None:
    assert root_nodes(0) == []
    assert root_nodes(1) == [(0, 0)]
    assert root_nodes(7) == [(2, 0), (1, 2), (0, 6)]
    assert root_nodes(8) == [(3, 0)]
    assert root_nodes(13) == [(3, 0), (2, 2), (0, 12)]


def test_subtree_hash_ephemeral_nodes() -> None:
    store = build_store(LEAF_HASHES)
    # Node (2, 1) covers leaves 4..7; at size 7 it is ephemeral: hash(i, j).
    i = node_hash(LEAF_HASHES[4], LEAF_HASHES[5])
    assert subtree_hash(2, 1, 7, getter(store, 7)) == node_hash(i, LEAF_HASHES[6])
    assert subtree_hash(2, 1, 8, getter(store, 8)) == store[(2, 1)]
    assert subtree_hash(3, 0, 5, getter(store, 5)) == ROOTS[4]
    with pytest.raises(ProofError, match="outside"):
        subtree_hash(2, 2, 8, getter(store))


# --------------------------------------------------------------------------- properties


def test_store_holds_exactly_the_complete_nodes() -> None:
    n = MAX_PROPERTY_SIZE
    want = {
        (level, index): ref_mth(PROPERTY_HASHES[index << level : (index + 1) << level])
        for level in range(n.bit_length())
        for index in range(n >> level)
    }
    assert build_store(PROPERTY_HASHES) == want


def test_complete_nodes_after_append_matches_compact_range() -> None:
    store: dict[NodeID, bytes] = {}
    for index, h in enumerate(PROPERTY_HASHES):
        for node in complete_nodes_after_append(index, h, getter(store, index)):
            assert (node.level, node.idx) not in store
            store[(node.level, node.idx)] = node.hash
    assert store == PROPERTY_STORE


def test_roots_for_every_size() -> None:
    rng = CompactRange()
    for size in range(MAX_PROPERTY_SIZE + 1):
        want = ref_mth(PROPERTY_HASHES[:size])
        assert rng.size == size
        assert rng.root() == want
        assert root_from_leaf_hashes(PROPERTY_HASHES[:size]) == want
        assert root_at(size, getter(PROPERTY_STORE, size)) == want
        assert len(rng.hashes) == size.bit_count()
        assert [PROPERTY_STORE[nid] for nid in rng.node_ids()] == list(rng.hashes)
        restored = CompactRange.from_hashes(size, rng.hashes)
        assert restored == rng
        assert CompactRange.from_nodes(size, getter(PROPERTY_STORE, size)) == rng
        if size < MAX_PROPERTY_SIZE:
            rng.append(PROPERTY_HASHES[size])


def test_inclusion_proofs_for_every_index_and_size() -> None:
    for size in range(1, MAX_PROPERTY_SIZE + 1):
        root = ref_mth(PROPERTY_HASHES[:size])
        get = getter(PROPERTY_STORE, size)
        for index in range(size):
            proof = inclusion_proof(index, size, get)
            assert proof == ref_path(index, PROPERTY_HASHES[:size]), (index, size)
            verify_inclusion(PROPERTY_HASHES[index], index, size, proof, root)
            if proof:
                bad = list(proof)
                bad[-1] = node_hash(bad[-1], bad[-1])
                with pytest.raises(ProofError):
                    verify_inclusion(PROPERTY_HASHES[index], index, size, bad, root)
            if size > 1:
                other = (index + 1) % size
                with pytest.raises(ProofError):
                    verify_inclusion(PROPERTY_HASHES[other], index, size, proof, root)


def test_consistency_proofs_for_every_size_pair() -> None:
    roots = [ref_mth(PROPERTY_HASHES[:n]) for n in range(MAX_PROPERTY_SIZE + 1)]
    for new in range(MAX_PROPERTY_SIZE + 1):
        get = getter(PROPERTY_STORE, new)
        for old in range(new + 1):
            proof = consistency_proof(old, new, get)
            assert proof == ref_proof(old, PROPERTY_HASHES[:new]), (old, new)
            verify_consistency(old, new, roots[old], roots[new], proof)
            if 0 < old < new:
                with pytest.raises(ProofError):
                    verify_consistency(old, new, roots[old], roots[new - 1], proof)
                if old > 1:
                    with pytest.raises(ProofError):
                        verify_consistency(old, new, roots[old - 1], roots[new], proof)


def test_random_larger_trees() -> None:
    rnd = random.Random(9162)
    hashes = random_hashes(1500, seed=1)
    store = build_store(hashes)
    for _ in range(40):
        size = rnd.randrange(1, len(hashes) + 1)
        index = rnd.randrange(size)
        old = rnd.randrange(size + 1)
        get = getter(store, size)
        root = root_at(size, get)
        assert root == ref_mth(hashes[:size])
        proof = inclusion_proof(index, size, get)
        assert proof == ref_path(index, hashes[:size])
        verify_inclusion(hashes[index], index, size, proof, root)
        cproof = consistency_proof(old, size, get)
        assert cproof == ref_proof(old, hashes[:size])
        verify_consistency(old, size, root_at(old, getter(store, old)), root, cproof)


@pytest.mark.parametrize("splits", [(0,), (1,), (5, 17), (4096, 4097), (1, 4095, 8191)])
def test_extend_matches_append(splits: tuple[int, ...]) -> None:
    hashes = random_hashes(9000, seed=2)
    one_by_one = CompactRange()
    for h in hashes:
        one_by_one.append(h)
    batched = CompactRange()
    prev = 0
    for cut in (*splits, len(hashes)):
        batched.extend(hashes[prev:cut])
        prev = cut
    assert batched == one_by_one
    assert batched.root() == root_from_leaf_hashes(hashes)


def test_compact_range_validation() -> None:
    with pytest.raises(ProofError, match="frontier hashes"):
        CompactRange.from_hashes(3, [LEAF_HASHES[0]])
    with pytest.raises(ProofError, match="32 bytes"):
        CompactRange.from_hashes(1, [b"short"])
    with pytest.raises(ProofError, match="32 bytes"):
        CompactRange().append(b"short")
    with pytest.raises(ProofError, match="32 bytes"):
        CompactRange().extend([LEAF_HASHES[0], b"short"])
    with pytest.raises(ProofError, match="32 bytes"):
        root_from_leaf_hashes([b"short"])
    rng = CompactRange()
    rng.extend(LEAF_HASHES[:5])
    clone = rng.copy()
    clone.append(LEAF_HASHES[5])
    assert rng.size == 5
    assert clone.size == 6
    assert clone.root() == ROOTS[5]


def test_append_reports_created_nodes() -> None:
    rng = CompactRange()
    rng.extend(LEAF_HASHES[:7])
    created = rng.append(LEAF_HASHES[7])
    assert [(n.level, n.idx) for n in created] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert created[-1].hash == ROOTS[7]


def test_get_node_returning_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="did not return"):
        root_at(1, lambda level, index: b"short")


def test_module_exports_exist() -> None:
    for name in merkle.__all__:
        assert hasattr(merkle, name), name
