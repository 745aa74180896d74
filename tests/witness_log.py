"""A log operator for witness tests: real RFC 6962 trees, a real log key, real proofs.

The operator holds the log's signing key, so it can sign any tree it likes; that is exactly
the attacker a witness defends against (split views, rollbacks, forged proofs).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from vault.ledger import merkle
from vault.ledger.note import Checkpoint, parse_signer_key, sign_checkpoint
from vault.ledger.note import generate_signer_key as _generate

ORIGIN = "blo-vault.uz.example/ledger"


class Tree:
    """An in-memory Merkle tree over byte-string leaves."""

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._range = merkle.CompactRange()
        for leaf in leaves:
            self.append(leaf)

    def append(self, leaf: bytes) -> None:
        for node in self._range.append(merkle.leaf_hash(leaf)):
            self._nodes[(node.level, node.idx)] = node.hash

    def _get(self, level: int, index: int) -> bytes:
        return self._nodes[(level, index)]

    @property
    def size(self) -> int:
        return self._range.size

    def root(self, size: int | None = None) -> bytes:
        return merkle.root_at(self.size if size is None else size, self._get)

    def inclusion(self, index: int, size: int | None = None) -> list[bytes]:
        return merkle.inclusion_proof(index, self.size if size is None else size, self._get)

    def proof(self, old: int, new: int | None = None) -> list[bytes]:
        return merkle.consistency_proof(old, self.size if new is None else new, self._get)


def tree_of(n: int, tag: str = "a") -> Tree:
    """A tree of ``n`` leaves; trees with different tags share the first leaves only if asked."""
    return Tree([f"{tag}:{i}".encode() for i in range(n)])


class LogOperator:
    """Holds a log key; signs checkpoints of any tree and builds add-checkpoint bodies."""

    def __init__(self, origin: str = ORIGIN) -> None:
        self.origin = origin
        skey, self.vkey = _generate(origin)
        self._key = parse_signer_key(skey).private_key

    def checkpoint(self, size: int, root: bytes) -> str:
        return sign_checkpoint(Checkpoint(self.origin, size, root), self.origin, self._key)

    def signed(self, tree: Tree, size: int | None = None) -> str:
        size = tree.size if size is None else size
        return self.checkpoint(size, tree.root(size))

    def body(self, old: int, tree: Tree, size: int | None = None) -> bytes:
        """A correct add-checkpoint body for ``tree`` at ``size``, with a proof from ``old``."""
        size = tree.size if size is None else size
        return add_body(old, tree.proof(old, size) if old else [], self.signed(tree, size))


def add_body(old: int | str, proof: Sequence[bytes], note: str) -> bytes:
    """``old N``, one base64 line per proof hash, an empty line, the signed checkpoint."""
    lines = [f"old {old}\n"] + [base64.b64encode(h).decode() + "\n" for h in proof]
    return ("".join(lines) + "\n" + note).encode()
