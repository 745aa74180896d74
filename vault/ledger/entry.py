"""The canonical byte encoding of a ledger entry (version 1).

An entry is stored as exactly the bytes that are hashed. Layout, all integers big endian::

    0x01                                  version
    u64 seq | u64 time (µs since the Unix epoch, UTC)
    then 13 strings, each u32 length || UTF-8 bytes, in this order:
    actor_user, actor_agency, actor_country, action, package, file, release, subject,
    decision, reason, handling, policy, prev

``prev`` is the lowercase hex of the previous entry's leaf hash, SHA-256(0x00 || bytes), and
64 zeros for the first entry, so the entries form a hash chain and the leaves of an RFC 6962
Merkle tree at once. Empty strings stand for "not applicable". No title, description,
filename or content ever goes into an entry.

Conventions of particular actions:

- ``key.register`` / ``key.revoke`` (officers' signing keys, issue 13): ``subject`` is the
  key owner's username; ``reason`` is ``"ed25519 KEYID PUBLICKEY AGENCY"`` (the key id, the
  base64 of the 32-byte public key, "-" in a revocation, and the owner's agency, which may
  differ from ``actor_agency`` when the operator acted). Every field stays in clear.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, fields
from datetime import UTC, datetime

from vault.errors import LedgerCorrupt

__all__ = [
    "GENESIS_PREV",
    "VERSION",
    "Entry",
    "decode",
    "leaf_hash",
]

VERSION = 1
GENESIS_PREV = "0" * 64
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_MAX_STRING = 4096


@dataclass(frozen=True)
class Entry:
    """A decoded ledger entry."""

    seq: int
    time_us: int
    actor_user: str
    actor_agency: str
    actor_country: str
    action: str
    package: str
    file: str
    release: str
    subject: str
    decision: str
    reason: str
    handling: str
    policy: str
    prev: str

    @property
    def time(self) -> datetime:
        """Entry time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time_us / 1_000_000, tz=UTC)

    def encode(self) -> bytes:
        """The canonical bytes of this entry."""
        out = [_HEAD.pack(VERSION, self.seq, self.time_us)]
        # Field order is the declaration order above (dataclasses.astuple would deep-copy).
        for name in _STRING_NAMES:
            raw = getattr(self, name).encode("utf-8")
            if len(raw) > _MAX_STRING:
                raise ValueError("ledger entry field too long")
            out.append(_U32.pack(len(raw)))
            out.append(raw)
        return b"".join(out)


_STRING_NAMES = tuple(f.name for f in fields(Entry))[2:]
_STRING_FIELDS = len(_STRING_NAMES)
_HEAD = struct.Struct(">BQQ")


def leaf_hash(entry_bytes: bytes) -> bytes:
    """RFC 6962 leaf hash of an entry's bytes; also the chain link to the next entry."""
    return hashlib.sha256(b"\x00" + entry_bytes).digest()


def decode(data: bytes, *, seq_hint: int | None = None) -> Entry:
    """Parse canonical bytes strictly; LedgerCorrupt on anything that is not exactly v1."""
    bad = seq_hint

    def fail(why: str) -> LedgerCorrupt:
        return LedgerCorrupt(f"entry is malformed: {why}", seq=bad)

    if len(data) < 17 or data[0] != VERSION:
        raise fail("unknown version or too short")
    seq = _U64.unpack_from(data, 1)[0]
    time_us = _U64.unpack_from(data, 9)[0]
    pos = 17
    strings: list[str] = []
    for _ in range(_STRING_FIELDS):
        if pos + 4 > len(data):
            raise fail("truncated")
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        if length > _MAX_STRING or pos + length > len(data):
            raise fail("truncated string")
        try:
            strings.append(data[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise fail("invalid UTF-8") from None
        pos += length
    if pos != len(data):
        raise fail("trailing bytes")
    return Entry(seq, time_us, *strings)
