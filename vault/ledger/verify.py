"""Verifying a ledger from its entries alone: the hash chain, the Merkle tree and checkpoints.

Pure: the same code checks the database (``blovault ledger verify``) and an export file on a
machine with neither server nor database (``--export FILE --vkey VKEY``). The only trust
anchor is the log's verifier key; signed checkpoints bind the entries to a tree size and root.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vault.ledger import merkle, note
from vault.ledger.entry import GENESIS_PREV, VERSION

# (seq, stored prev_hash column or None, entry bytes, stored leaf-node hash or None)
Row = tuple[int, bytes | None, bytes, bytes | None]

_GENESIS = GENESIS_PREV.encode()
_BATCH = 4096


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
    def __init__(self, seq: int | None, problem: str) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem


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


def verify_entries(
    rows: Iterable[Row],
    *,
    checkpoints: Sequence[note.Checkpoint],
    leaf_count: int | None = None,
    stored_root: Callable[[int], bytes] | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Walk entries in order; check chain, leaves, checkpoint roots and completeness.

    ``checkpoints`` must already be signature-verified. ``leaf_count`` is the number of leaves
    the stored tree holds (database mode); ``stored_root(size)`` the root the stored nodes give.
    """
    tree = merkle.CompactRange()
    pending: list[bytes] = []
    cps = sorted(checkpoints, key=lambda c: c.size)
    cp_index = 0
    covered = 0  # entries proved by a checkpoint whose root matched
    expected = 0
    prev_hex = _GENESIS
    prev_confirmed = False  # the previous entry's hash matched a stored Merkle leaf
    sha256 = hashlib.sha256

    def flush() -> None:
        tree.extend(pending)
        pending.clear()

    def check_checkpoints_at(size: int) -> None:
        nonlocal cp_index, covered
        while cp_index < len(cps) and cps[cp_index].size == size:
            flush()
            if tree.root() != cps[cp_index].root_hash:
                raise _Bad(
                    covered,
                    f"entries {covered}..{size - 1} do not match the signed checkpoint of size "
                    f"{size}: the ledger was rewritten after that checkpoint was signed",
                )
            covered = size
            cp_index += 1

    try:
        check_checkpoints_at(0)
        for seq, prev_column, data, stored_leaf in rows:
            if seq != expected:
                raise _Bad(expected, f"entry {expected} is missing (next stored is {seq})")
            if len(data) < 17 + 68 or data[0] != VERSION or data[-68:-64] != b"\x00\x00\x00\x40":
                raise _Bad(seq, f"entry {seq} is malformed")
            if int.from_bytes(data[1:9], "big") != seq:
                claimed = int.from_bytes(data[1:9], "big")
                raise _Bad(
                    seq, f"entry {seq} holds the bytes of entry {claimed} (moved or swapped)"
                )
            leaf = sha256(b"\x00" + data).digest()
            if stored_leaf is not None and stored_leaf != leaf:
                raise _Bad(seq, f"entry {seq} was altered: its hash does not match its Merkle leaf")
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
                    )
                raise _Bad(seq, f"entry {seq} does not link to the entry before it")
            if prev_column is not None and prev_column.hex().encode() != link:
                raise _Bad(seq, f"entry {seq}'s stored link column disagrees with its bytes")
            prev_hex = leaf.hex().encode()
            prev_confirmed = stored_leaf is not None
            pending.append(leaf)
            expected += 1
            if len(pending) >= _BATCH:
                flush()
                if progress:
                    progress(expected)
            check_checkpoints_at(expected)
        flush()
        if progress:
            progress(expected)
        if cp_index < len(cps):
            raise _Bad(
                expected,
                f"entries from {expected} are missing: a signed checkpoint covers "
                f"{cps[-1].size} entries but the ledger holds {expected}",
            )
        if leaf_count is not None and leaf_count > expected:
            raise _Bad(
                expected,
                f"entries from {expected} are missing: the Merkle tree holds {leaf_count} leaves",
            )
        if leaf_count is not None and leaf_count < expected:
            raise _Bad(leaf_count, f"entry {leaf_count} and later are not in the Merkle tree")
        if stored_root is not None and expected and stored_root(expected) != tree.root():
            raise _Bad(None, "the stored Merkle tree nodes do not match the entries")
    except _Bad as bad:
        return VerifyResult(
            ok=False,
            size=expected,
            root="",
            checkpoint_size=cps[-1].size if cps else None,
            first_bad_seq=bad.seq,
            problem=bad.problem,
        )
    return VerifyResult(
        ok=True,
        size=expected,
        root=base64.b64encode(tree.root()).decode(),
        checkpoint_size=cps[-1].size if cps else None,
    )


def verify_export(
    document: dict[str, object], vkey: str, progress: Callable[[int], None] | None = None
) -> VerifyResult:
    """Verify an export document (see README, "Ledger export format") against ``vkey`` only."""
    try:
        verifier = note.parse_verifier_key(vkey)
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

    def rows() -> Iterable[Row]:
        for seq, item in enumerate(entries):
            try:
                data = base64.b64decode(str(item), validate=True)
            except ValueError:
                data = b""
            yield seq, None, data, None

    result = verify_entries(rows(), checkpoints=[checkpoint], progress=progress)
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
    return result
