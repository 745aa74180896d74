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

Version 2 (vault.ledger.commit) commits to the sensitive fields instead of carrying them;
:func:`decode` reads both versions. A decoded v2 entry that was not opened carries empty
strings in its committed fields and the commitments in ``commitments``.

Conventions of particular actions:

- ``key.register`` / ``key.revoke`` (officers' signing keys, issue 13): ``subject`` is the
  key owner's username; ``reason`` is ``"ed25519 KEYID PUBLICKEY AGENCY"`` (the key id, the
  base64 of the 32-byte public key, "-" in a revocation, and the owner's agency, which may
  differ from ``actor_agency`` when the operator acted). Every field stays in clear, in
  version 2 too (vault.ledger.commit keeps ``key.*`` public).
- Summary entries (vault.service.refusals): refusals of callers not authenticated beyond
  their budget of entries are counted, then recorded as one ``deny`` entry per actor,
  action, reason and ended session whose ``subject`` is ``"suppressed:COUNT"``, COUNT
  refusals in all, followed by a space and the session's reference if they concerned one.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

from vault.errors import LedgerCorrupt
from vault.ledger import commit

__all__ = [
    "GENESIS_PREV",
    "VERSION",
    "Entry",
    "decode",
    "leaf_hash",
    "opened",
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
    version: int = VERSION
    # ("fields", the fields digest) of a committed entry not opened (v2 only; see commit).
    commitments: tuple[tuple[str, bytes], ...] = ()

    @property
    def hidden(self) -> bool:
        """Whether this entry's sensitive fields are commitments this reader can't open."""
        return bool(self.commitments)

    @property
    def time(self) -> datetime:
        """Entry time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time_us / 1_000_000, tz=UTC)

    def encode(self) -> bytes:
        """The canonical version 1 bytes of this entry."""
        out = [_HEAD.pack(VERSION, self.seq, self.time_us)]
        # Field order is the declaration order above (dataclasses.astuple would deep-copy).
        for name in _STRING_NAMES:
            raw = getattr(self, name).encode("utf-8")
            if len(raw) > _MAX_STRING:
                raise ValueError("ledger entry field too long")
            out.append(_U32.pack(len(raw)))
            out.append(raw)
        return b"".join(out)


_STRING_NAMES = tuple(f.name for f in fields(Entry))[2:15]
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

    if data[:1] == bytes([commit.VERSION]):
        return _decode_v2(data, fail)
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
    a_user, a_agency, a_country, action, package, file, release, subject = strings[:8]
    decision, reason, handling, policy, prev = strings[8:]
    return Entry(
        seq, time_us, a_user, a_agency, a_country, action, package, file, release, subject,
        decision, reason, handling, policy, prev,
    )  # fmt: skip


def _decode_v2(data: bytes, fail: Callable[[str], LedgerCorrupt]) -> Entry:
    try:
        parts = commit.decode(data)
    except ValueError as exc:
        raise fail(str(exc)) from None
    action, decision, policy = parts.public
    values = parts.values or ("",) * len(commit.SENSITIVE)
    bare = Entry(
        seq=parts.seq,
        time_us=parts.time_us,
        actor_user="",
        actor_agency="",
        actor_country="",
        action=action,
        package="",
        file="",
        release="",
        subject="",
        decision=decision,
        reason="",
        handling="",
        policy=policy,
        prev=parts.prev,
        version=commit.VERSION,
        commitments=(("fields", parts.digest),) if parts.digest else (),
    )
    return _with_sensitive(bare, dict(zip(commit.SENSITIVE, values, strict=True)))


def _with_sensitive(entry: Entry, values: dict[str, str]) -> Entry:
    """``entry`` with the sensitive fields in ``values`` set (other keys are ignored)."""
    return replace(
        entry,
        actor_user=values["actor_user"],
        actor_agency=values["actor_agency"],
        actor_country=values["actor_country"],
        package=values["package"],
        file=values["file"],
        release=values["release"],
        subject=values["subject"],
        reason=values["reason"],
        handling=values["handling"],
    )


def opened(data: bytes, opening: commit.Opening) -> Entry:
    """Entry ``data`` with its committed fields filled from ``opening``, once each opening
    matches its commitment (OpeningError if one does not)."""
    revealed = commit.verify_opening(data, opening)
    return replace(_with_sensitive(decode(data), revealed), commitments=())
