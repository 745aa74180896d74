"""Verifying a ledger from its entries alone: the hash chain, the Merkle tree and checkpoints.

Pure: the same code checks the database (``blovault ledger verify``) and an export file on a
machine with neither server nor database (``--export FILE --vkey VKEY``). The only trust
anchor is the log's verifier key; signed checkpoints bind the entries to a tree size and root.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from binascii import a2b_base64
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from vault.errors import InvalidInput
from vault.ledger import commit, merkle, note
from vault.ledger.entry import GENESIS_PREV, VERSION

__all__ = [
    "BLOCK_LEVEL",
    "EntrySource",
    "ListSource",
    "NodeSource",
    "RangeOutcome",
    "Row",
    "Start",
    "VerifyResult",
    "open_checkpoints",
    "stored_node_problem",
    "verify_entries",
    "verify_export",
    "verify_range",
]

# (seq, stored prev_hash column or None, entry bytes)
Row = tuple[int, bytes | None, bytes]


@dataclass(frozen=True)
class Start:
    """Where a walk over part of a ledger begins: at entry ``seq``, with the Merkle frontier of
    the entries before it and the leaf hash of entry ``seq - 1`` (both as stored)."""

    seq: int
    frontier: tuple[bytes, ...]
    prev_leaf: bytes


@dataclass(frozen=True)
class RangeOutcome:
    """What a walk over part of a ledger found: whether every check passed, and the frontier
    and last leaf it computed, which the next part's :class:`Start` must equal."""

    ok: bool
    size: int
    frontier: tuple[bytes, ...]
    last_leaf: bytes | None


class EntrySource(Protocol):
    """Where the entries come from: a database, an export file, a list."""

    def entries(self, lo: int, n: int) -> list[bytes]:
        """Up to ``n`` entries' bytes in order, from sequence number ``lo`` on (fewer at the
        end). The fast path reads only these."""

    def rows(self, lo: int, n: int) -> list[Row]:
        """The same as full rows, with the stored sequence number and link column (None where
        the source has none), for naming exactly what is wrong."""

    def first_suspect(self) -> int | None:
        """The lowest sequence number from which stored columns may disagree with the entry
        bytes (a link column unlike the bytes' link, sequence numbers not exactly 0..n-1), or
        None. Blocks from there on are walked entry by entry, which checks the columns."""


class ListSource:
    """Entries held in memory, optionally with their link columns."""

    def __init__(self, datas: Sequence[bytes], columns: Sequence[bytes] | None = None) -> None:
        self._datas = datas
        self._columns = columns

    def entries(self, lo: int, n: int) -> list[bytes]:
        return list(self._datas[lo : lo + n])

    def rows(self, lo: int, n: int) -> list[Row]:
        columns = self._columns
        return [
            (seq, None if columns is None else columns[seq], self._datas[seq])
            for seq in range(lo, min(lo + n, len(self._datas)))
        ]

    def first_suspect(self) -> int | None:
        if self._columns is None:
            return None
        if len(self._columns) != len(self._datas):
            return 0
        try:
            links = bytes.fromhex(b"".join([d[-64:] for d in self._datas]).decode())
        except ValueError:
            links = b""  # some link is not hex: find which below
        if links == b"".join(self._columns):
            return None
        return next(
            (
                seq
                for seq, (column, data) in enumerate(zip(self._columns, self._datas, strict=True))
                if column.hex().encode() != data[-64:]
            ),
            None,
        )


class NodeSource(Protocol):
    """Read access to the stored Merkle nodes (database mode)."""

    def hashes(self, level: int, lo: int, hi: int) -> list[bytes]:
        """Hashes of the stored nodes (level, lo..hi-1) in index order. Node ids are unique, so
        ``hi - lo`` hashes means every node is there; fewer, that some are missing."""

    def indexed(self, level: int, lo: int, hi: int) -> dict[int, bytes]:
        """The same nodes by index (for naming exactly which one is wrong)."""


_GENESIS = GENESIS_PREV.encode()
_sha256 = hashlib.sha256
_LINK_MARK = b"\x00\x00\x00\x40"  # u32 length 64 before the hex link, which ends every entry
_MIN_LEN = 18 + 3 * 4 + 32 + 68  # the shortest entry of either version (v1: 17 + 13 * 4 + 64)
_VERSIONS = frozenset({VERSION, commit.VERSION})
# Entries are checked in aligned blocks of 2**BLOCK_LEVEL: the per-entry checks become list
# operations that run in C, and every stored node inside a block is compared to the one
# computed from its entries. A block that fails any check is walked entry by entry to name
# the first bad one precisely. (Tests use small blocks to cross many block boundaries.)
BLOCK_LEVEL = 12


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a verification. ``first_bad_seq`` names the first entry found wrong."""

    ok: bool
    size: int
    root: str
    checkpoint_size: int | None
    first_bad_seq: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return dict(self.__dict__)


class _Bad(Exception):
    def __init__(self, seq: int | None, problem: str, *, checked: int | None = None) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem
        self.checked = checked  # entries read before the problem showed (None: all so far)


def open_checkpoints(
    notes: Iterable[str], verifier: note.Verifier, origin: str
) -> list[note.Checkpoint]:
    """Verify every signed checkpoint note and return them by increasing size.

    Raises NoteError naming the checkpoint that fails.
    """
    out = []
    for text in notes:
        out.append(note.open_checkpoint(text, [verifier], origin=origin))
    out.sort(key=lambda c: c.size)
    return out


class _Walk:
    """State of one verification, advanced a block at a time."""

    def __init__(
        self,
        source: EntrySource,
        checkpoints: Sequence[note.Checkpoint],
        nodes: NodeSource | None,
        start: Start | None = None,
    ) -> None:
        self.source = source
        self.suspect = source.first_suspect()
        self.cps = sorted(checkpoints, key=lambda c: c.size)
        self.cp_index = 0
        self.nodes = nodes
        if start is None:
            self.tree = merkle.CompactRange()
            self.expected = 0  # next sequence number
            self.prev_leaf: bytes | None = None
            self.prev_hex = _GENESIS
            self.prev_confirmed = False  # the previous entry's hash matched a stored leaf
        else:
            self.tree = merkle.CompactRange.from_hashes(start.seq, start.frontier)
            self.expected = start.seq
            self.prev_leaf = start.prev_leaf
            self.prev_hex = start.prev_leaf.hex().encode()
            self.prev_confirmed = True
        self.covered = self.expected  # entries proved by a checkpoint whose root matched
        # The lowest (level, index) stored node found wrong. Reported only when the entries
        # themselves check out, so a changed entry is named rather than a node above it.
        self.bad_node: tuple[int, int, bool] | None = None

    def run(self, block_level: int, progress: Callable[[int], None] | None) -> None:
        """Every block the source holds, in order."""
        self._checkpoints_inside(self.expected, 0, [[]])
        while block := self.source.entries(self.expected, 1 << block_level):
            self.block(block)
            if progress:
                progress(self.expected)

    # ------------------------------------------------------------------ one block, fast

    def block(self, datas: list[bytes]) -> None:
        lo = self.expected
        n = len(datas)
        leaves = [_sha256(b"\x00" + d).digest() for d in datas]
        stored = self.nodes.hashes(0, lo, lo + n) if self.nodes is not None else None
        suspect = self.suspect is not None and self.suspect < lo + n
        if suspect or not self._block_ok(lo, datas, leaves, stored):
            # Raises _Bad unless only some stored leaves are absent.
            self._walk_slowly(self.source.rows(lo, n))
        levels = [leaves]
        while len(levels[-1]) > 1:
            levels.append(merkle.parents(levels[-1]))
        self._checkpoints_inside(lo, n, levels)
        if self.nodes is not None:
            self._check_stored_levels(lo, levels)
        self._extend(self.tree, n, levels)
        self.expected = lo + n
        self.prev_leaf = leaves[-1]
        self.prev_hex = leaves[-1].hex().encode()
        self.prev_confirmed = stored is not None and len(stored) == n

    def _block_ok(
        self, lo: int, datas: list[bytes], leaves: list[bytes], stored: list[bytes] | None
    ) -> bool:
        """Every check of the slow walk, as whole-list comparisons (no per-entry branches)."""
        n = len(datas)
        if min(map(len, datas)) < _MIN_LEN:
            return False
        if not {d[0] for d in datas} <= _VERSIONS:
            return False
        if [d[-68:-64] for d in datas] != [_LINK_MARK] * n:
            return False
        if b"".join([d[1:9] for d in datas]) != struct.pack(f">{n}Q", *range(lo, lo + n)):
            return False
        links = [d[-64:] for d in datas]
        if links != [self.prev_hex, *[leaf.hex().encode() for leaf in leaves[:-1]]]:
            return False
        return stored is None or stored == leaves

    def _walk_slowly(self, rows: Sequence[Row]) -> None:
        """The same checks entry by entry, raising _Bad for the first entry that fails them.

        Works on a copy of the tree so checkpoints inside the block are checked in order.
        Absent stored leaves are left to the leaf count check."""
        lo = self.expected
        stored_leaves = {} if self.nodes is None else self.nodes.indexed(0, lo, lo + len(rows))
        tree = self.tree.copy()
        expected, prev_hex, prev_confirmed = self.expected, self.prev_hex, self.prev_confirmed
        cp_index, covered = self.cp_index, self.covered
        for seq, prev_column, data in rows:
            if seq != expected:
                raise _Bad(
                    expected,
                    f"entry {expected} is missing (next stored is {seq})",
                    checked=expected,
                )
            if len(data) < _MIN_LEN or data[0] not in _VERSIONS or data[-68:-64] != _LINK_MARK:
                raise _Bad(seq, f"entry {seq} is malformed", checked=expected)
            claimed = int.from_bytes(data[1:9], "big")
            if claimed != seq:
                raise _Bad(
                    seq,
                    f"entry {seq} holds the bytes of entry {claimed} (moved or swapped)",
                    checked=expected,
                )
            leaf = _sha256(b"\x00" + data).digest()
            stored_leaf = stored_leaves.get(seq)
            if stored_leaf is not None and stored_leaf != leaf:
                raise _Bad(
                    seq,
                    f"entry {seq} was altered: its hash does not match its Merkle leaf",
                    checked=expected,
                )
            link = data[-64:]
            if link != prev_hex:
                self_consistent = prev_column is not None and prev_column.hex().encode() == link
                if seq > 0 and (self_consistent or not prev_confirmed):
                    # Entry seq's bytes and stored link agree, so entry seq-1 changed (its leaf
                    # too, if that matched); with nothing to settle it, the earlier one is the
                    # first that may be bad.
                    raise _Bad(
                        seq - 1,
                        f"entry {seq - 1} was altered, or entry {seq}'s link to it was: "
                        f"entry {seq} links to a different hash",
                        checked=expected,
                    )
                raise _Bad(
                    seq, f"entry {seq} does not link to the entry before it", checked=expected
                )
            if prev_column is not None and prev_column.hex().encode() != link:
                raise _Bad(
                    seq,
                    f"entry {seq}'s stored link column disagrees with its bytes",
                    checked=expected,
                )
            prev_hex = leaf.hex().encode()
            prev_confirmed = stored_leaf is not None
            tree.append(leaf)
            expected += 1
            while cp_index < len(self.cps) and self.cps[cp_index].size == expected:
                if tree.root() != self.cps[cp_index].root_hash:
                    raise _Bad(covered, self._rewritten(covered, expected), checked=expected)
                covered = expected
                cp_index += 1

    def _checkpoints_inside(self, lo: int, n: int, levels: list[list[bytes]]) -> None:
        """Check every checkpoint of size lo+1 .. lo+n against the block's subtree roots."""
        cps = self.cps
        while self.cp_index < len(cps) and cps[self.cp_index].size <= lo + n:
            size = cps[self.cp_index].size
            if self._root_after(size - lo, levels) != cps[self.cp_index].root_hash:
                raise _Bad(self.covered, self._rewritten(self.covered, size), checked=size)
            self.covered = size
            self.cp_index += 1

    @staticmethod
    def _rewritten(covered: int, size: int) -> str:
        return (
            f"entries {covered}..{size - 1} do not match the signed checkpoint of size "
            f"{size}: the ledger was rewritten after that checkpoint was signed"
        )

    def _root_after(self, count: int, levels: list[list[bytes]]) -> bytes:
        """Root once the first ``count`` leaves of the current block are appended."""
        tree = self.tree.copy()
        self._extend(tree, count, levels)
        return tree.root()

    @staticmethod
    def _extend(tree: merkle.CompactRange, count: int, levels: list[list[bytes]]) -> None:
        # The first ``count`` leaves of a block split into perfect subtrees, largest first, whose
        # roots are already in ``levels``; the block starts aligned, so each lands aligned.
        done = 0
        for level in range(len(levels) - 1, -1, -1):
            if count >> level & 1:
                tree.push_subtree(level, levels[level][done >> level])
                done += 1 << level

    def _check_stored_levels(self, lo: int, levels: list[list[bytes]]) -> None:
        assert self.nodes is not None
        for level in range(1, len(levels)):
            start = lo >> level
            computed = levels[level]
            stored = self.nodes.hashes(level, start, start + len(computed))
            if stored == computed:
                continue
            i = next(
                (i for i, (a, b) in enumerate(zip(stored, computed, strict=False)) if a != b),
                len(stored),
            )
            found = (level, start + i, len(stored) == len(computed))
            if self.bad_node is None or found < self.bad_node:
                self.bad_node = found
            return


def stored_node_problem(level: int, idx: int, present: bool) -> str:
    """Why stored node (level, idx) is wrong, naming the entries under it."""
    if not present:
        return f"stored Merkle node ({level}, {idx}) is missing or misplaced"
    first = idx << level
    return (
        f"stored Merkle node ({level}, {idx}) over entries {first}.."
        f"{first + (1 << level) - 1} does not match them"
    )


def verify_entries(
    source: EntrySource,
    *,
    checkpoints: Sequence[note.Checkpoint],
    nodes: NodeSource | None = None,
    leaf_count: int | None = None,
    progress: Callable[[int], None] | None = None,
    block_level: int = BLOCK_LEVEL,
) -> VerifyResult:
    """Walk entries in order; check chain, leaves, checkpoint roots and completeness.

    ``checkpoints`` must already be signature-verified. In database mode ``nodes`` reads the
    stored Merkle nodes, each of which inside a block is compared with the one computed from
    the entries, and ``leaf_count`` is the number of stored leaves. Nodes above
    ``block_level`` are the caller's to check (their children, the block roots, are proved
    here).
    """
    walk = _Walk(source, checkpoints, nodes)
    try:
        walk.run(block_level, progress)
        expected = walk.expected
        if walk.cp_index < len(walk.cps):
            raise _Bad(
                expected,
                f"entries from {expected} are missing: a signed checkpoint covers "
                f"{walk.cps[-1].size} entries but the ledger holds {expected}",
            )
        if leaf_count is not None and leaf_count > expected:
            raise _Bad(
                expected,
                f"entries from {expected} are missing: the Merkle tree holds {leaf_count} leaves",
            )
        if leaf_count is not None and leaf_count < expected:
            raise _Bad(leaf_count, f"entry {leaf_count} and later are not in the Merkle tree")
        if walk.bad_node is not None:
            level, idx, present = walk.bad_node
            raise _Bad(idx << level, stored_node_problem(level, idx, present))
    except _Bad as bad:
        return VerifyResult(
            ok=False,
            size=walk.expected if bad.checked is None else bad.checked,
            root="",
            checkpoint_size=walk.cps[-1].size if walk.cps else None,
            first_bad_seq=bad.seq,
            problem=bad.problem,
        )
    return VerifyResult(
        ok=True,
        size=walk.expected,
        root=base64.b64encode(walk.tree.root()).decode(),
        checkpoint_size=walk.cps[-1].size if walk.cps else None,
    )


def verify_range(
    source: EntrySource,
    *,
    start: Start | None,
    checkpoints: Sequence[note.Checkpoint],
    nodes: NodeSource,
    block_level: int = BLOCK_LEVEL,
    progress: Callable[[int], None] | None = None,
) -> RangeOutcome:
    """Check the entries ``source`` holds from ``start`` on (the first entry when None) and
    every checkpoint given, which must all fall inside. The outcome says only whether all is
    well: to name what is wrong, verify the whole ledger with :func:`verify_entries`."""
    walk = _Walk(source, checkpoints, nodes, start)
    try:
        walk.run(block_level, progress)
    except _Bad:
        return RangeOutcome(False, walk.expected, (), None)
    ok = walk.bad_node is None and walk.cp_index == len(walk.cps)
    return RangeOutcome(ok, walk.expected, walk.tree.hashes, walk.prev_leaf)


def verify_export(
    document: dict[str, object],
    vkey: str,
    progress: Callable[[int], None] | None = None,
    *,
    extra: Sequence[note.Checkpoint] = (),
    saved: str | None = None,
) -> VerifyResult:
    """Verify an export document (see README, "Ledger export format") against ``vkey`` only.

    ``extra`` checkpoints, already verified by the caller (a witnessed one), must match the
    entries too: each one's root is checked at its size. So must ``saved``, a checkpoint note
    the auditor kept from earlier, which must be signed by ``vkey`` for the same origin: an
    export that does not extend it was rolled back or forked since. InvalidInput for a
    malformed ``vkey``: a bad key is the caller's mistake, not a sign the export was tampered
    with."""
    try:
        verifier = note.parse_verifier_key(vkey)
    except note.NoteError as exc:
        raise InvalidInput(f"--vkey is not a verifier key: {exc}") from None
    try:
        origin = document["origin"]
        checkpoint_text = document["checkpoint"]
        entries = document["entries"]
        if not isinstance(origin, str) or not isinstance(checkpoint_text, str):
            raise ValueError("origin and checkpoint must be strings")
        if not isinstance(entries, list):
            raise ValueError("entries must be a list")
        checkpoint = note.open_checkpoint(checkpoint_text, [verifier], origin=origin)
    except (KeyError, ValueError) as exc:
        return VerifyResult(
            ok=False,
            size=0,
            root="",
            checkpoint_size=None,
            first_bad_seq=None,
            problem=f"export or checkpoint rejected: {exc}",
        )
    if saved is not None:
        try:
            extra = [*extra, note.open_checkpoint(saved, [verifier], origin=origin)]
        except note.NoteError as exc:
            return VerifyResult(
                ok=False,
                size=0,
                root="",
                checkpoint_size=checkpoint.size,
                problem=f"the saved checkpoint is not one this log's key signed: {exc}",
            )

    result = verify_entries(
        _ExportSource(entries), checkpoints=[checkpoint, *extra], progress=progress
    )
    if result.ok and result.size != checkpoint.size:
        return VerifyResult(
            ok=False,
            size=result.size,
            root="",
            checkpoint_size=checkpoint.size,
            first_bad_seq=checkpoint.size,
            problem=f"the export holds {result.size} entries beyond the checkpoint's "
            f"{checkpoint.size}",
        )
    if result.ok and "openings" in document:
        # A scoped export: every opening must match the commitments of the entry it names.
        bad = commit.verify_openings([_decode(e) for e in entries], document["openings"])
        if bad is not None:
            return VerifyResult(
                ok=False,
                size=result.size,
                root="",
                checkpoint_size=checkpoint.size,
                first_bad_seq=bad[0],
                problem=f"an opening does not verify: {bad[1]}",
            )
    return result


class _ExportSource:
    """The base64 entries of an export document, decoded a block at a time (no columns)."""

    def __init__(self, encoded: list[object]) -> None:
        self._encoded = encoded

    def entries(self, lo: int, n: int) -> list[bytes]:
        return [_decode(item) for item in self._encoded[lo : lo + n]]

    def rows(self, lo: int, n: int) -> list[Row]:
        return [(lo + i, None, data) for i, data in enumerate(self.entries(lo, n))]

    def first_suspect(self) -> int | None:
        return None


def _decode(item: object) -> bytes:
    try:
        return a2b_base64(item, strict_mode=True)  # type: ignore[arg-type]  # checked below
    except (ValueError, TypeError):
        return b""  # reported as malformed, with its sequence number
