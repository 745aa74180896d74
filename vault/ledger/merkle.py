"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and verification (pure, no I/O).

Tree model. Leaf ``i`` has hash ``leaf_hash(entry_i)``. A *node* ``(level, index)`` is the
root of the perfect subtree of height ``level`` over leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 nodes are the leaf hashes. In a tree of
``size`` leaves a node is *complete* when its last leaf is below ``size``. Complete nodes never
change once written, so storage keeps only them, as ``(level, index, hash)`` rows; the hash of
an incomplete right-edge node of a given tree size (an "ephemeral" node) is recomputed from the
complete nodes it covers. That is all the RFC tree needs: its largest-power-of-two split is
exactly this aligned layout with the last node promoted instead of duplicated.

Storage access goes through a ``get_node(level, index) -> bytes`` callable returning the hash
of a complete node. The ``*_nodes`` planning functions list, up front, every node ID a proof
or root needs, so a database can fetch them in one query; ``inclusion_proof`` and friends
combine a plan with a ``get_node`` callable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "GetNode",
    "Node",
    "NodeID",
    "ProofError",
    "complete_nodes_after_append",
    "consistency_proof",
    "consistency_proof_nodes",
    "hash_node_group",
    "inclusion_proof",
    "inclusion_proof_nodes",
    "leaf_hash",
    "node_hash",
    "parents",
    "resolve_proof",
    "root_at",
    "root_from_leaf_hashes",
    "root_nodes",
    "subtree_hash",
    "subtree_nodes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
# log2 of the leaves folded per level-by-level batch in CompactRange.extend: big enough that
# the per-level list comprehensions dominate, small enough that the working lists stay in cache.
_BATCH_LEVEL = 12

NodeID = tuple[int, int]
"""A node address: ``(level, index)``."""

GetNode = Callable[[int, int], bytes]
"""Returns the stored hash of the complete node ``(level, index)``."""


class ProofError(ValueError):
    """A Merkle proof, or the sizes and indices given with it, did not verify."""


class Node(NamedTuple):
    """A complete node to store: its level, its index on that level, and its hash."""

    level: int
    idx: int
    hash: bytes


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || entry)."""
    return _sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


# --------------------------------------------------------------------------- validation


def _check_count(what: str, value: int) -> None:
    # bool is an int subclass; a True tree size is always a caller bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProofError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ProofError(f"{what} must not be negative, got {value}")


def _check_hash(what: str, value: bytes) -> None:
    if not isinstance(value, bytes):
        raise ProofError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _check_hashes(what: str, values: Iterable[bytes]) -> None:
    for i, value in enumerate(values):
        _check_hash(f"{what}[{i}]", value)


def _fetch(get_node: GetNode, level: int, index: int) -> bytes:
    value = get_node(level, index)
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        # A storage fault, not a proof failure: a plain ValueError on purpose.
        raise ValueError(f"get_node({level}, {index}) did not return a {HASH_SIZE}-byte hash")
    return value


# --------------------------------------------------------------------------- roots


def _perfect_root(hashes: Sequence[bytes]) -> bytes:
    """Root of a power-of-two run of leaf hashes (also correct for any non-empty run)."""
    level: Sequence[bytes] = hashes
    # One list comprehension per level keeps the per-node work inside C as far as possible;
    # an odd last node is promoted unchanged, which is exactly RFC 6962's split rule.
    while len(level) > 1:
        upper = parents(level)
        if len(level) & 1:
            upper.append(level[-1])
        level = upper
    return level[0]


def parents(hashes: Sequence[bytes]) -> list[bytes]:
    """Interior nodes over consecutive pairs (0, 1), (2, 3), ... of one level's hashes; an odd
    last hash has no complete parent and is left out."""
    it = iter(hashes)
    prefix = _NODE_PREFIX
    sha = _sha256
    return [sha(prefix + left + right).digest() for left, right in zip(it, it, strict=False)]


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of the given leaf hashes (RFC 9162 §2.1.1); ``EMPTY_ROOT`` for none."""
    rng = CompactRange()
    rng.extend(hashes)
    return rng.root()


def root_nodes(size: int) -> list[NodeID]:
    """IDs of the complete nodes whose fold is the root of ``size`` leaves, left to right."""
    _check_count("tree size", size)
    ids: list[NodeID] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            ids.append((level, start >> level))
            start += 1 << level
    return ids


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    """Fold frontier hashes (left to right, strictly decreasing heights) into one root."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = node_hash(left, acc)
    return acc


def root_at(size: int, get_node: GetNode) -> bytes:
    """Root hash of the first ``size`` leaves, from stored complete nodes (O(log n) reads)."""
    return _fold_right([_fetch(get_node, level, index) for level, index in root_nodes(size)])


def subtree_nodes(level: int, index: int, size: int) -> tuple[NodeID, ...]:
    """Complete nodes making up node ``(level, index)`` in a tree of ``size`` leaves.

    For a complete node that is just the node itself. For an incomplete right-edge node the
    result is its decomposition, ordered from the lowest (right-most) node upwards, to be
    combined by :func:`hash_node_group`.
    """
    _check_count("level", level)
    _check_count("index", index)
    _check_count("tree size", size)
    begin = index << level
    end = min((index + 1) << level, size)
    if begin >= end:
        raise ProofError(f"node ({level}, {index}) lies outside a tree of size {size}")
    if end - begin == 1 << level:
        return ((level, index),)
    ids: list[NodeID] = []
    width = end - begin
    cursor = begin
    for lvl in range(width.bit_length() - 1, -1, -1):
        if width >> lvl & 1:
            ids.append((lvl, cursor >> lvl))
            cursor += 1 << lvl
    ids.reverse()
    return tuple(ids)


def hash_node_group(group: Sequence[NodeID], get_node: GetNode) -> bytes:
    """Hash a group from :func:`subtree_nodes` (lowest node first) into one node hash."""
    if not group:
        raise ProofError("empty node group")
    acc = _fetch(get_node, *group[0])
    for level, index in group[1:]:
        acc = node_hash(_fetch(get_node, level, index), acc)
    return acc


def subtree_hash(level: int, index: int, size: int, get_node: GetNode) -> bytes:
    """Hash of node ``(level, index)`` as of tree ``size``, complete or ephemeral."""
    return hash_node_group(subtree_nodes(level, index, size), get_node)


# --------------------------------------------------------------------------- compact range


class CompactRange:
    """The Merkle frontier of a log: the roots of its perfect subtrees, left to right.

    Holds ``popcount(size)`` hashes and supports O(1) amortised appends without re-reading
    the log.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        """Start an empty range (tree size 0)."""
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Restore a range from its size and frontier hashes (as from :attr:`hashes`)."""
        _check_count("tree size", size)
        want = size.bit_count()
        if len(hashes) != want:
            raise ProofError(f"a tree of size {size} has {want} frontier hashes, got {len(hashes)}")
        _check_hashes("frontier hash", hashes)
        rng = cls()
        rng._size = size
        rng._hashes = list(hashes)
        return rng

    @classmethod
    def from_nodes(cls, size: int, get_node: GetNode) -> CompactRange:
        """Restore a range from stored complete nodes (O(log n) reads)."""
        ids = root_nodes(size)
        return cls.from_hashes(size, [_fetch(get_node, level, index) for level, index in ids])

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Frontier hashes, left to right (largest subtree first)."""
        return tuple(self._hashes)

    def node_ids(self) -> list[NodeID]:
        """Node IDs of the frontier hashes, left to right."""
        return root_nodes(self._size)

    def root(self) -> bytes:
        """MTH of all leaves appended so far."""
        return _fold_right(self._hashes)

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange.from_hashes(self._size, self._hashes)

    def append(self, leaf_hash: bytes) -> list[Node]:
        """Append one leaf hash; return the complete nodes this creates, lowest first."""
        _check_hash("leaf hash", leaf_hash)
        index = self._size
        acc = leaf_hash
        created = [Node(0, index, acc)]
        level = 0
        pos = index
        stack = self._hashes
        while pos & 1:
            acc = node_hash(stack.pop(), acc)
            level += 1
            pos >>= 1
            created.append(Node(level, pos, acc))
        stack.append(acc)
        self._size = index + 1
        return created

    def extend(self, leaf_hashes: Sequence[bytes]) -> None:
        """Append many leaf hashes at once (fast path; does not report created nodes)."""
        total = len(leaf_hashes)
        if total == 0:
            return
        if set(map(len, leaf_hashes)) != {HASH_SIZE}:
            raise ProofError(f"every leaf hash must be {HASH_SIZE} bytes")
        done = 0
        while done < total:
            # Largest perfect subtree that is aligned at the current size and fits in what
            # is left; hashing it level by level is much faster than leaf-by-leaf appends.
            align = (self._size & -self._size).bit_length() - 1 if self._size else _BATCH_LEVEL
            level = min(align, _BATCH_LEVEL, (total - done).bit_length() - 1)
            width = 1 << level
            self._push(level, _perfect_root(leaf_hashes[done : done + width]))
            done += width

    def push_subtree(self, level: int, subtree_root: bytes) -> None:
        """Append the ``2**level`` leaves under ``subtree_root`` at once.

        The range's size must be a multiple of ``2**level`` (the subtree lands aligned)."""
        _check_hash("subtree root", subtree_root)
        if level < 0 or self._size & ((1 << level) - 1):
            raise ProofError(f"a subtree of level {level} can't be appended at size {self._size}")
        self._push(level, subtree_root)

    def _push(self, level: int, subtree_root: bytes) -> None:
        # Precondition: self._size is a multiple of 2**level.
        pos = self._size >> level
        acc = subtree_root
        stack = self._hashes
        while pos & 1:
            acc = node_hash(stack.pop(), acc)
            pos >>= 1
        stack.append(acc)
        self._size += 1 << level

    def __eq__(self, other: object) -> bool:
        """Equal when size and frontier match."""
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __repr__(self) -> str:
        """Size and root, for debugging."""
        return f"CompactRange(size={self._size}, root={self.root().hex()})"


def complete_nodes_after_append(index: int, leaf_hash: bytes, get_node: GetNode) -> list[Node]:
    """Complete nodes created by appending leaf number ``index``, lowest first.

    ``get_node`` must already return the nodes of the first ``index`` leaves; only left
    siblings on the new leaf's path are read (at most log2(index + 1) lookups).
    """
    _check_count("leaf index", index)
    _check_hash("leaf hash", leaf_hash)
    acc = leaf_hash
    created = [Node(0, index, acc)]
    level = 0
    pos = index
    while pos & 1:
        acc = node_hash(_fetch(get_node, level, pos - 1), acc)
        level += 1
        pos >>= 1
        created.append(Node(level, pos, acc))
    return created


# --------------------------------------------------------------------------- proof plans


def _path_nodes(level: int, index: int, size: int) -> list[tuple[NodeID, ...]]:
    """Sibling groups from node ``(level, index)`` up to the root of a tree of ``size``."""
    groups: list[tuple[NodeID, ...]] = []
    last = (size - 1) >> level
    # Below `inner` the path still has the last leaf's path to its right, so right siblings
    # exist (possibly ephemeral); above it the path runs along the right border, where only
    # left siblings occur.
    inner = (index ^ last).bit_length()
    for step in range(inner):
        lvl = level + step
        pos = index >> step
        sibling = pos ^ 1
        if sibling < pos:
            groups.append(((lvl, sibling),))
        else:
            groups.append(subtree_nodes(lvl, sibling, size))
    for step in range(inner, last.bit_length()):
        pos = index >> step
        if pos & 1:
            groups.append(((level + step, pos - 1),))
    return groups


def inclusion_proof_nodes(index: int, size: int) -> list[tuple[NodeID, ...]]:
    """Plan of an inclusion proof (RFC 9162 §2.1.3.1): one node group per proof hash."""
    _check_count("leaf index", index)
    _check_count("tree size", size)
    if index >= size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    return _path_nodes(0, index, size)


def consistency_proof_nodes(old_size: int, new_size: int) -> list[tuple[NodeID, ...]]:
    """Plan of a consistency proof (RFC 9162 §2.1.4.1): one node group per proof hash."""
    _check_count("old tree size", old_size)
    _check_count("new tree size", new_size)
    if old_size > new_size:
        raise ProofError(f"old tree size {old_size} exceeds new tree size {new_size}")
    if old_size in (0, new_size):
        return []
    # The old tree's right-most perfect subtree is a complete node of the new tree; the
    # proof is that node plus its inclusion path. When it is the whole old tree (old size a
    # power of two) the verifier already knows it as the old root, so it is left out.
    level = (old_size & -old_size).bit_length() - 1
    index = (old_size - 1) >> level
    groups = _path_nodes(level, index, new_size)
    if index:
        groups.insert(0, ((level, index),))
    return groups


def resolve_proof(plan: Sequence[Sequence[NodeID]], get_node: GetNode) -> list[bytes]:
    """Turn a proof plan into proof hashes using ``get_node``."""
    return [hash_node_group(group, get_node) for group in plan]


def inclusion_proof(index: int, size: int, get_node: GetNode) -> list[bytes]:
    """Inclusion proof for leaf ``index`` in the tree of ``size`` leaves."""
    return resolve_proof(inclusion_proof_nodes(index, size), get_node)


def consistency_proof(old_size: int, new_size: int, get_node: GetNode) -> list[bytes]:
    """Consistency proof from tree size ``old_size`` to ``new_size``."""
    return resolve_proof(consistency_proof_nodes(old_size, new_size), get_node)


# --------------------------------------------------------------------------- verification


def _inclusion_length(index: int, size: int) -> int:
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an inclusion proof per RFC 9162 §2.1.3.2; raise :class:`ProofError` if bad."""
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root hash", root)
    _check_count("leaf index", index)
    _check_count("tree size", size)
    if index >= size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    want = _inclusion_length(index, size)
    if len(proof) != want:
        raise ProofError(
            f"inclusion proof for leaf {index} of {size} needs {want} hashes, got {len(proof)}"
        )
    _check_hashes("inclusion proof", proof)

    # RFC 9162 §2.1.3.2, steps 2-5, with the RFC's variable names.
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise ProofError(f"inclusion proof for leaf {index} of {size} does not match the root")


def _consistency_length(old_size: int, new_size: int) -> int:
    level = (old_size & -old_size).bit_length() - 1
    index = (old_size - 1) >> level
    inner = (index ^ ((new_size - 1) >> level)).bit_length()
    return (1 if index else 0) + inner + (index >> inner).bit_count()


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check a consistency proof per RFC 9162 §2.1.4.2; raise :class:`ProofError` if bad.

    Trivial cases need an empty proof: equal sizes need equal roots, and a size-0 tree's
    root must be ``EMPTY_ROOT`` (stricter than some implementations, which ignore it).
    """
    _check_count("old tree size", old_size)
    _check_count("new tree size", new_size)
    _check_hash("old root hash", old_root)
    _check_hash("new root hash", new_root)
    if old_size > new_size:
        raise ProofError(f"old tree size {old_size} exceeds new tree size {new_size}")
    if old_size == 0 and old_root != EMPTY_ROOT:
        raise ProofError("the root of an empty tree must be SHA-256 of the empty string")
    if old_size in (0, new_size):
        if proof:
            raise ProofError(
                f"consistency proof from size {old_size} to {new_size} must be empty, "
                f"got {len(proof)} hashes"
            )
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"different roots for the same tree size {old_size}")
        return
    want = _consistency_length(old_size, new_size)
    if len(proof) != want:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} needs {want} hashes, "
            f"got {len(proof)}"
        )
    _check_hashes("consistency proof", proof)

    # RFC 9162 §2.1.4.2, steps 1-7, with the RFC's variable names.
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    if fr != old_root:
        raise ProofError(f"consistency proof does not reproduce the old root (size {old_size})")
    if sr != new_root:
        raise ProofError(f"consistency proof does not reproduce the new root (size {new_size})")
