"""Ledger entries of version 2: sensitive fields as salted commitments, openings kept apart.

Layout, all integers big endian::

    0x02                                  version
    u64 seq | u64 time (µs since the Unix epoch, UTC)
    u8 form                               0x00 committed, 0x01 open
    3 strings (u32 length || UTF-8): action, decision, policy       (always public)
    form 0x00: 32 bytes, the fields digest (below)
    form 0x01: 9 strings (u32 length || UTF-8), the sensitive fields in the clear
    u32 64 || prev                        lowercase hex link, as in version 1 (it ends the entry)

Each sensitive field has its commitment c = SHA-256(TAG || name || 0x00 || u64 seq || salt ||
value), with a fresh 16-byte salt per field and entry. The field name and the sequence number
are inside the hash, so an opening can't be moved to another field or another entry; the salt
(128 bits) means knowing every possible value (all agencies, users, package ids) does not tell
which one was committed. Every sensitive field is committed, empty ones too, so an entry does
not show which fields apply. The entry carries the fields digest SHA-256(ROOT_TAG || u64 seq ||
c_1 || ... || c_9) (SENSITIVE order) rather than the nine commitments: it binds exactly the
same, and a committed entry stays smaller than a version 1 entry, so hashing and verifying
the log costs no more than before. (A field can still be disclosed alone: its salt and value,
with the other eight commitments, recompute the digest.)

The open form is for entries that exist to be checked by everyone: public-key registrations
and revocations (actions ``key.*``) and witness/checkpoint records. Every other action,
including ones this module has never heard of, is committed (default private).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from vault import crypto

__all__ = [
    "FORM_COMMITTED",
    "FORM_OPEN",
    "PUBLIC",
    "SALT_SIZE",
    "SENSITIVE",
    "VERSION",
    "Opening",
    "OpeningError",
    "commitment",
    "encode",
    "encode_values",
    "fields_digest",
    "is_public_action",
    "verify_opening",
]

VERSION = 2
FORM_COMMITTED = 0
FORM_OPEN = 1
SALT_SIZE = 16
DIGEST_SIZE = 32
TAG = b"blo-vault/ledger/commit/v2\x00"
ROOT_TAG = b"blo-vault/ledger/fields/v2\x00"
PUBLIC = ("action", "decision", "policy")
SENSITIVE = (
    "actor_user",
    "actor_agency",
    "actor_country",
    "package",
    "file",
    "release",
    "subject",
    "reason",
    "handling",
)
_PUBLIC_PREFIXES = ("key.", "witness.", "checkpoint.")
_PUBLIC_ACTIONS = frozenset({"witness", "checkpoint"})
_MAX_STRING = 4096
_HEAD = struct.Struct(">BQQB")
_U32 = struct.Struct(">I")
# What commitment() hashes before the sequence number, per sensitive field, in order; and
# SHA-256 states that have hashed it, which encode_values copies (never updates): cheaper than
# a new hash object per field, nine times per append.
_COMMIT_PREFIXES = tuple(TAG + name.encode() + b"\x00" for name in SENSITIVE)
_COMMIT_STATES = tuple(hashlib.sha256(prefix) for prefix in _COMMIT_PREFIXES)
_U64 = struct.Struct(">Q")
_SALTS_SIZE = SALT_SIZE * len(SENSITIVE)
_SALT_OFFSETS = tuple(range(0, _SALTS_SIZE, SALT_SIZE))


class OpeningError(ValueError):
    """An opening that does not match its entry's commitments."""


def is_public_action(action: str) -> bool:
    """Whether entries of ``action`` keep their fields in the clear (see the module doc)."""
    return action in _PUBLIC_ACTIONS or action.startswith(_PUBLIC_PREFIXES)


def commitment(seq: int, name: str, salt: bytes, value: str) -> bytes:
    """The commitment to ``value`` of field ``name`` in entry ``seq``."""
    if name not in SENSITIVE:
        raise ValueError(f"{name!r} is not a committed field")
    if len(salt) != SALT_SIZE:
        raise ValueError(f"a salt is exactly {SALT_SIZE} bytes")
    return hashlib.sha256(
        TAG + name.encode() + b"\x00" + _U64.pack(seq) + salt + value.encode("utf-8")
    ).digest()


def fields_digest(seq: int, commitments: tuple[bytes, ...] | list[bytes]) -> bytes:
    """The digest a committed entry carries: over its nine field commitments, in order."""
    if len(commitments) != len(SENSITIVE):
        raise ValueError("one commitment per sensitive field")
    return hashlib.sha256(ROOT_TAG + _U64.pack(seq) + b"".join(commitments)).digest()


@dataclass(frozen=True)
class Opening:
    """The salts and values of one committed entry: what reveals it, kept apart from it."""

    seq: int
    salts: tuple[bytes, ...]
    values: tuple[str, ...]
    # to_bytes(), when encode() made this opening: it has each value's UTF-8 at hand, and the
    # sealing of every committed append is what reads it (issue 18's append budget).
    packed: bytes | None = field(default=None, repr=False, compare=False)

    def fields(self) -> dict[str, str]:
        """Field name to value."""
        return dict(zip(SENSITIVE, self.values, strict=True))

    def to_json(self) -> dict[str, object]:
        """The export form: ``{"seq": n, "fields": {name: [salt base64, value]}}``."""
        return {
            "seq": self.seq,
            "fields": {
                name: [base64.b64encode(salt).decode(), value]
                for name, salt, value in zip(SENSITIVE, self.salts, self.values, strict=True)
            },
        }

    def to_bytes(self) -> bytes:
        """Compact canonical bytes (what is sealed at rest): u64 seq, the 9 salts, then the 9
        values as u32 length || UTF-8."""
        if self.packed is not None:
            return self.packed
        return b"".join([_U64.pack(self.seq), *self.salts, *(_string(v) for v in self.values)])

    @classmethod
    def from_json(cls, doc: object) -> Opening:
        """Parse the export form strictly; OpeningError on anything else."""
        if not isinstance(doc, dict) or set(doc) != {"seq", "fields"}:
            raise OpeningError("an opening is an object with exactly seq and fields")
        seq, found = doc["seq"], doc["fields"]
        if type(seq) is not int or seq < 0:
            raise OpeningError("an opening's seq must be a non-negative integer")
        if not isinstance(found, dict) or set(found) != set(SENSITIVE):
            raise OpeningError(f"entry {seq}: an opening names exactly the committed fields")
        salts, values = [], []
        for name in SENSITIVE:
            pair = found[name]
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str)):
                raise OpeningError(f"entry {seq}: field {name} must be [salt, value]")
            try:
                salt = base64.b64decode(pair[0], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise OpeningError(f"entry {seq}: field {name} has a malformed salt") from None
            if len(salt) != SALT_SIZE:
                raise OpeningError(f"entry {seq}: field {name} has a malformed salt")
            try:
                # JSON can spell a lone surrogate ("\ud800"), which no committed value
                # holds: refused here, not left to raise in commitment() as a crash.
                pair[1].encode("utf-8")
            except UnicodeEncodeError:
                raise OpeningError(f"entry {seq}: field {name}'s value is not UTF-8 text") from None
            salts.append(salt)
            values.append(pair[1])
        return cls(seq, tuple(salts), tuple(values))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Opening:
        """Parse what :meth:`to_bytes` wrote, strictly."""
        head = 8 + SALT_SIZE * len(SENSITIVE)
        if len(raw) < head:
            raise OpeningError("malformed opening: too short")
        seq = _U64.unpack_from(raw)[0]
        salts = tuple(raw[p : p + SALT_SIZE] for p in range(8, head, SALT_SIZE))
        values, pos = [], head
        for _ in SENSITIVE:
            if pos + 4 > len(raw):
                raise OpeningError("malformed opening: truncated")
            (length,) = _U32.unpack_from(raw, pos)
            pos += 4
            if length > _MAX_STRING or pos + length > len(raw):
                raise OpeningError("malformed opening: truncated value")
            try:
                values.append(raw[pos : pos + length].decode("utf-8"))
            except UnicodeDecodeError:
                raise OpeningError("malformed opening: invalid UTF-8") from None
            pos += length
        if pos != len(raw):
            raise OpeningError("malformed opening: trailing bytes")
        return cls(seq, salts, tuple(values))


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > _MAX_STRING:
        raise ValueError("ledger entry field too long")
    return _U32.pack(len(raw)) + raw


def encode(
    seq: int,
    time_us: int,
    public: Mapping[str, str],
    sensitive: Mapping[str, str],
    prev: str,
    *,
    salts: bytes | None = None,
) -> tuple[bytes, Opening | None]:
    """The canonical bytes of a v2 entry, and its opening (None for a public action).

    ``salts`` (9 x 16 bytes) is for known-answer tests only; otherwise they are drawn from
    the operating system's CSPRNG in one call.
    """
    values = tuple(sensitive.get(name, "") for name in SENSITIVE)
    head = (public["action"], public["decision"], public["policy"])
    return encode_values(seq, time_us, head, values, prev, salts=salts)


def encode_values(
    seq: int,
    time_us: int,
    public: tuple[str, str, str],
    values: tuple[str, ...],
    prev: str,
    *,
    salts: bytes | None = None,
) -> tuple[bytes, Opening | None]:
    """:func:`encode` with the public fields and the sensitive values (every one, empty
    ones too) as tuples in PUBLIC and SENSITIVE order: what the log appends with."""
    if len(values) != len(SENSITIVE):
        raise ValueError("one value per sensitive field")
    open_form = is_public_action(public[0])
    out = [_HEAD.pack(VERSION, seq, time_us, FORM_OPEN if open_form else FORM_COMMITTED)]
    out.extend(_string(value) for value in public)
    # Each value encoded and length-prefixed once: the entry (open form) or the opening's
    # bytes (committed form) reuse them. This runs on every append.
    raws = [value.encode("utf-8") for value in values]
    if max(map(len, raws)) > _MAX_STRING:  # the same length limit as _string
        raise ValueError("ledger entry field too long")
    strings = [part for raw in raws for part in (_U32.pack(len(raw)), raw)]
    opening = None
    if open_form:
        out.extend(strings)
    else:
        pool = salts if salts is not None else crypto.random_bytes(_SALTS_SIZE)
        if len(pool) != _SALTS_SIZE:
            raise ValueError("wrong number of salt bytes")
        cut = tuple(pool[i : i + SALT_SIZE] for i in _SALT_OFFSETS)
        packed_seq = _U64.pack(seq)
        # commitment() inlined: its checks are settled here once (names fixed, salts cut to
        # size, lengths checked above).
        digests = []
        for state, salt, raw in zip(_COMMIT_STATES, cut, raws, strict=True):
            field_hash = state.copy()
            field_hash.update(packed_seq + salt + raw)
            digests.append(field_hash.digest())
        out.append(hashlib.sha256(ROOT_TAG + packed_seq + b"".join(digests)).digest())
        opening = Opening(seq, cut, values, b"".join([packed_seq, pool, *strings]))
    out.append(_string(prev))
    return b"".join(out), opening


@dataclass(frozen=True)
class Decoded:
    """The parts of a v2 entry: public fields, and either the fields digest or clear values."""

    seq: int
    time_us: int
    form: int
    public: tuple[str, str, str]
    digest: bytes
    values: tuple[str, ...]
    prev: str


def decode(data: bytes) -> Decoded:
    """Parse v2 bytes strictly; ValueError (with the reason) on anything else."""
    if len(data) < _HEAD.size or data[0] != VERSION:
        raise ValueError("unknown version or too short")
    _, seq, time_us, form = _HEAD.unpack_from(data, 0)
    if form not in (FORM_COMMITTED, FORM_OPEN):
        raise ValueError("unknown form")
    pos = _HEAD.size

    def string() -> str:
        nonlocal pos
        if pos + 4 > len(data):
            raise ValueError("truncated")
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        if length > _MAX_STRING or pos + length > len(data):
            raise ValueError("truncated string")
        try:
            text = data[pos : pos + length].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("invalid UTF-8") from None
        pos += length
        return text

    action, decision, policy = string(), string(), string()
    digest = b""
    values: tuple[str, ...] = ()
    if form == FORM_OPEN:
        values = tuple(string() for _ in SENSITIVE)
    else:
        if pos + DIGEST_SIZE > len(data):
            raise ValueError("truncated fields digest")
        digest = data[pos : pos + DIGEST_SIZE]
        pos += DIGEST_SIZE
    prev = string()
    if pos != len(data):
        raise ValueError("trailing bytes")
    if len(prev) != 64:
        raise ValueError("malformed link")
    return Decoded(seq, time_us, form, (action, decision, policy), digest, values, prev)


def verify_opening(data: bytes, opening: Opening) -> dict[str, str]:
    """The fields ``opening`` reveals of entry ``data``, after checking each against its
    commitment; OpeningError if the entry is not committed, is another entry, or any salt or
    value differs from what was committed."""
    try:
        parts = decode(data)
    except ValueError as exc:
        raise OpeningError(f"entry {opening.seq}: not a version 2 entry ({exc})") from None
    if parts.form != FORM_COMMITTED:
        raise OpeningError(f"entry {parts.seq} is public: it has nothing to open")
    if parts.seq != opening.seq:
        raise OpeningError(f"the opening of entry {opening.seq} was given for entry {parts.seq}")
    digests = [
        commitment(parts.seq, name, salt, value)
        for name, salt, value in zip(SENSITIVE, opening.salts, opening.values, strict=True)
    ]
    if not crypto.constant_time_equal(fields_digest(parts.seq, digests), parts.digest):
        raise OpeningError(f"entry {parts.seq}: the opening does not match its commitments")
    return opening.fields()


def verify_openings(entries: list[bytes], openings: object) -> tuple[int | None, str] | None:
    """Check an export's ``openings`` (a list of :meth:`Opening.to_json` objects) against the
    commitments of the ``entries`` they name: None if every one opens its entry, else (the
    entry, why) for the first that does not. Each entry may be opened once."""
    if not isinstance(openings, list):
        return None, "openings must be a list"
    seen: set[int] = set()
    for item in openings:
        try:
            opening = Opening.from_json(item)
        except OpeningError as exc:
            return None, str(exc)
        seq = opening.seq
        if seq in seen or seq >= len(entries):
            return seq, f"the opening of entry {seq} is repeated or names no entry in the export"
        seen.add(seq)
        try:
            verify_opening(entries[seq], opening)
        except OpeningError as exc:
            return seq, str(exc)
    return None
