"""C2SP tlog-proof bundles: an entry's index, its inclusion proof and a witnessed checkpoint.

Format (c2sp.org/tlog-proof): ``c2sp.org/tlog-proof@v1``, an optional ``extra <base64>`` line,
``index <n>``, zero or more base64 SHA-256 inclusion-proof lines (leaf's sibling first), an
empty line, then the checkpoint verbatim (with its log signature and cosignatures). A bundle
checks offline against a tlog-policy and the entry's bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from vault.errors import InvalidInput, LedgerCorrupt
from vault.ledger import merkle
from vault.witness.policy import (
    DEFAULT_MAX_SKEW_S,
    Policy,
    WitnessedCheckpoint,
    verify_witnessed,
)

__all__ = ["HEADER", "TlogProof", "format_tlog_proof", "parse_tlog_proof", "verify_tlog_proof"]

HEADER = "c2sp.org/tlog-proof@v1"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_MAX_PROOF = 64  # an inclusion proof in a tree of fewer than 2^64 leaves has at most 64 hashes


@dataclass(frozen=True)
class TlogProof:
    """A parsed bundle; nothing in it is verified yet (``extra`` is never authenticated)."""

    index: int
    proof: tuple[bytes, ...]
    checkpoint: str
    extra: bytes | None = None


def _b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise InvalidInput(f"tlog-proof {what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise InvalidInput(f"tlog-proof {what} is not canonical base64")
    return raw


def format_tlog_proof(
    index: int, proof: Sequence[bytes], checkpoint: str, extra: bytes | None = None
) -> str:
    """Write a bundle; ``checkpoint`` is the signed (and cosigned) note, verbatim."""
    lines = [HEADER]
    if extra is not None:
        lines.append("extra " + base64.b64encode(extra).decode("ascii"))
    lines.append(f"index {index}")
    lines += [base64.b64encode(h).decode("ascii") for h in proof]
    return "\n".join(lines) + "\n\n" + checkpoint


def parse_tlog_proof(data: str | bytes) -> TlogProof:
    """Parse a bundle strictly; InvalidInput if malformed."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("tlog-proof is not valid UTF-8") from None
    head, sep, checkpoint = data.partition("\n\n")
    if not sep or not checkpoint:
        raise InvalidInput("tlog-proof has no empty line before its checkpoint")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise InvalidInput(f"tlog-proof does not start with {HEADER}")
    rest = lines[1:]
    extra = None
    if rest and rest[0].startswith("extra "):
        extra = _b64(rest[0][len("extra ") :], "extra data")
        rest = rest[1:]
    if not rest or not rest[0].startswith("index "):
        raise InvalidInput("tlog-proof has no 'index <n>' line")
    index_text = rest[0][len("index ") :]
    if not _DECIMAL.fullmatch(index_text) or int(index_text) >= 1 << 64:
        raise InvalidInput("tlog-proof index is not a decimal without leading zeros")
    hashes = rest[1:]
    if len(hashes) > _MAX_PROOF:
        raise InvalidInput("tlog-proof has more inclusion proof lines than any tree needs")
    proof = tuple(_b64(line, "proof line") for line in hashes)
    if any(len(h) != merkle.HASH_SIZE for h in proof):
        raise InvalidInput("tlog-proof proof lines must each be one SHA-256 hash")
    return TlogProof(int(index_text), proof, checkpoint, extra)


def verify_tlog_proof(
    data: str | bytes,
    entry: bytes,
    policy: Policy,
    *,
    now: int,
    max_skew: int = DEFAULT_MAX_SKEW_S,
) -> tuple[TlogProof, WitnessedCheckpoint]:
    """Check that ``entry`` is at the bundle's index in a checkpoint meeting ``policy``.

    Raises InvalidInput (malformed), QuorumNotMet (checkpoint fails the policy) or LedgerCorrupt
    (the inclusion proof does not verify)."""
    bundle = parse_tlog_proof(data)
    witnessed = verify_witnessed(bundle.checkpoint, policy, now=now, max_skew=max_skew)
    cp = witnessed.checkpoint
    try:
        merkle.verify_inclusion(
            merkle.leaf_hash(entry), bundle.index, cp.size, bundle.proof, cp.root_hash
        )
    except merkle.ProofError as exc:
        raise LedgerCorrupt(f"entry {bundle.index} is not in the checkpoint: {exc}") from None
    return bundle, witnessed
