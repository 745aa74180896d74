"""C2SP signed notes (Ed25519) and tlog checkpoints.

Implements https://c2sp.org/signed-note (signature type 0x01, Ed25519) and
https://c2sp.org/tlog-checkpoint, with the key string formats of golang.org/x/mod/sumdb/note:
verifier keys ``name+hexid+base64(0x01 || public key)`` and signer keys
``PRIVATE+KEY+name+hexid+base64(0x01 || seed)``. Parsing is strict: anything the specs do not
allow is a :class:`NoteError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Checkpoint",
    "NoteError",
    "NoteSignature",
    "ParsedNote",
    "Signer",
    "Verifier",
    "format_signer_key",
    "format_verifier_key",
    "generate_signer_key",
    "is_valid_key_name",
    "key_id",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "parse_note",
    "parse_signer_key",
    "parse_verifier_key",
    "sign_checkpoint",
    "sign_note",
]

ALG_ED25519 = 0x01
"""Signature type byte for Ed25519 (c2sp.org/signed-note)."""

MAX_SIGNATURES = 100
"""Most signature lines accepted in one note (the spec requires at least 16)."""

_EM_DASH_PREFIX = "\u2014 "  # U+2014 EM DASH, then a space
_SIG_SPLIT = "\n\n"
_ED25519_KEY_SIZE = 32
_ED25519_SIG_SIZE = 64
_HASH_SIZE = 32
_MAX_TREE_SIZE = (1 << 64) - 1
_HEX_ID = re.compile(r"[0-9a-f]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
# Unicode spaces per Go's unicode.IsSpace, which the reference implementation uses.
_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class NoteError(ValueError):
    """A note, key or checkpoint is malformed, or its signatures do not verify."""


# --------------------------------------------------------------------------- helpers


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64: padded, no whitespace, canonical encoding only."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise NoteError(f"{what} is not valid base64") from exc
    # Reject non-zero padding bits, so each value has exactly one accepted spelling.
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _check_text_chars(text: str, what: str) -> None:
    """UTF-8 encodable and free of ASCII control characters other than newline."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError(f"{what} is not valid UTF-8") from exc
    bad = _CONTROL.search(text)
    if bad:
        raise NoteError(f"{what} contains control character U+{ord(bad.group()):04X}")


def is_valid_key_name(name: str) -> bool:
    """True if ``name`` is non-empty and has no Unicode spaces, plus signs or controls."""
    if not isinstance(name, str) or not name or "+" in name:
        return False
    if any(ch in _SPACES or ch.isspace() or ch < " " for ch in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_key_name(name: str) -> None:
    if not is_valid_key_name(name):
        raise NoteError(f"invalid key name {name!r}")


def _raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey | bytes) -> int:
    """Key ID: first 4 bytes, big endian, of SHA-256(name || 0x0A || 0x01 || public key)."""
    _check_key_name(name)
    raw = public_key if isinstance(public_key, bytes) else _raw_public_key(public_key)
    if len(raw) != _ED25519_KEY_SIZE:
        raise NoteError(f"Ed25519 public key must be {_ED25519_KEY_SIZE} bytes, got {len(raw)}")
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + raw).digest()
    return int.from_bytes(digest[:4], "big")


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Verifier:
    """A named Ed25519 public key that checks note signatures."""

    name: str
    key_id: int
    public_key: Ed25519PublicKey

    @classmethod
    def from_public_key(cls, name: str, public_key: Ed25519PublicKey) -> Verifier:
        """Build a verifier, deriving the key ID."""
        return cls(name, key_id(name, public_key), public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True if ``signature`` is this key's Ed25519 signature of ``message``."""
        if len(signature) != _ED25519_SIG_SIZE:
            return False
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return _raw_public_key(self.public_key)

    def __hash__(self) -> int:
        """Hash by name, key ID and raw key (the key object itself is unhashable)."""
        return hash((self.name, self.key_id, self.public_bytes()))

    def vkey(self) -> str:
        """This key as a verifier key string ``name+hexid+base64(0x01 || key)``."""
        return format_verifier_key(self.name, self.public_key)


@dataclass(frozen=True)
class Signer:
    """A named Ed25519 private key that signs notes."""

    name: str
    key_id: int
    private_key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_private_key(cls, name: str, private_key: Ed25519PrivateKey) -> Signer:
        """Build a signer, deriving the key ID."""
        return cls(name, key_id(name, private_key.public_key()), private_key)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of ``message``."""
        return self.private_key.sign(message)

    def verifier(self) -> Verifier:
        """The matching verifier."""
        return Verifier(self.name, self.key_id, self.private_key.public_key())

    def skey(self) -> str:
        """This key as a signer key string (secret)."""
        return format_signer_key(self.name, self.private_key)


def format_verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """Encode ``name+hexid+base64(0x01 || public key)``."""
    raw = _raw_public_key(public_key)
    return f"{name}+{key_id(name, raw):08x}+{_b64encode(bytes([ALG_ED25519]) + raw)}"


def format_signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """Encode ``PRIVATE+KEY+name+hexid+base64(0x01 || seed)``."""
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    kid = key_id(name, private_key.public_key())
    return f"PRIVATE+KEY+{name}+{kid:08x}+{_b64encode(bytes([ALG_ED25519]) + seed)}"


def _split_key(body: str, what: str) -> tuple[str, int, bytes]:
    """Split ``name+hexid+base64key`` and check each part's syntax."""
    parts = body.split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"malformed {what}")
    name, hex_id, key64 = parts
    _check_key_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise NoteError(f"malformed {what}: key ID must be 8 lowercase hex digits")
    key = _b64decode(key64, f"{what} key")
    if not key:
        raise NoteError(f"malformed {what}: empty key")
    if key[0] != ALG_ED25519:
        raise NoteError(f"unsupported {what} algorithm 0x{key[0]:02x}")
    if len(key) != 1 + _ED25519_KEY_SIZE:
        raise NoteError(f"malformed {what}: Ed25519 key must be {_ED25519_KEY_SIZE} bytes")
    return name, int(hex_id, 16), key[1:]


def parse_verifier_key(vkey: str) -> Verifier:
    """Parse a verifier key string ``name+hexid+base64(0x01 || public key)``."""
    name, kid, raw = _split_key(vkey, "verifier key")
    if key_id(name, raw) != kid:
        raise NoteError("verifier key ID does not match its name and public key")
    return Verifier(name, kid, Ed25519PublicKey.from_public_bytes(raw))


def parse_signer_key(skey: str) -> Signer:
    """Parse a signer key string ``PRIVATE+KEY+name+hexid+base64(0x01 || seed)``."""
    prefix = "PRIVATE+KEY+"
    if not skey.startswith(prefix):
        raise NoteError("malformed signer key: missing PRIVATE+KEY+ prefix")
    name, kid, seed = _split_key(skey[len(prefix) :], "signer key")
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    # The ID names the public key, so it can only be checked after deriving it.
    if key_id(name, private_key.public_key()) != kid:
        raise NoteError("signer key ID does not match its name and public key")
    return Signer(name, kid, private_key)


def generate_signer_key(name: str) -> tuple[str, str]:
    """Generate a fresh key pair; return ``(signer key, verifier key)`` strings."""
    _check_key_name(name)
    private_key = Ed25519PrivateKey.generate()
    return (
        format_signer_key(name, private_key),
        format_verifier_key(name, private_key.public_key()),
    )


# --------------------------------------------------------------------------- notes


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes after the ID."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        """The signature line, including the trailing newline."""
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_EM_DASH_PREFIX}{self.name} {_b64encode(blob)}\n"


@dataclass(frozen=True)
class ParsedNote:
    """A syntactically valid note whose signatures have NOT been verified."""

    text: str
    signatures: tuple[NoteSignature, ...]


def _as_text(note: str | bytes) -> str:
    if isinstance(note, bytes):
        try:
            return note.decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise NoteError("note is not valid UTF-8") from exc
    return note


def parse_note(note: str | bytes) -> ParsedNote:
    """Split a signed note into text and signature lines, checking syntax only."""
    msg = _as_text(note)
    _check_text_chars(msg, "note")
    split = msg.rfind(_SIG_SPLIT)
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = msg[: split + 1], msg[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteError("note signature block is empty or does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    sigs: list[NoteSignature] = []
    for line in lines:
        if not line.startswith(_EM_DASH_PREFIX):
            raise NoteError("note signature line does not start with an em dash and a space")
        name, sep, sig64 = line[len(_EM_DASH_PREFIX) :].partition(" ")
        if not sep or not is_valid_key_name(name):
            raise NoteError("note signature line has an invalid key name")
        blob = _b64decode(sig64, "note signature")
        if len(blob) < 5:
            raise NoteError("note signature is too short")
        sigs.append(NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:]))
    return ParsedNote(text, tuple(sigs))


def _verifier_index(verifiers: Iterable[Verifier]) -> dict[tuple[str, int], Verifier]:
    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        key = (v.name, v.key_id)
        other = known.get(key)
        if other is not None and other.public_bytes() != v.public_bytes():
            raise NoteError(f"ambiguous verifier keys for {v.name}+{v.key_id:08x}")
        known[key] = v
    return known


def open_note(note: str | bytes, verifiers: Iterable[Verifier]) -> str:
    """Verify a signed note and return its text.

    Signatures from unknown keys (by name and ID) are ignored; every signature from a known
    key must verify, and at least one must be present.
    """
    parsed = parse_note(note)
    known = _verifier_index(verifiers)
    message = parsed.text.encode("utf-8")
    verified = 0
    for sig in parsed.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        if not verifier.verify(message, sig.signature):
            raise NoteError(f"invalid signature for key {sig.name}+{sig.key_id:08x}")
        verified += 1
    if not verified:
        raise NoteError("note has no signature from a known key")
    return parsed.text


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign ``text`` (which must end in a newline) and return the signed note."""
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    _check_text_chars(text, "note text")
    signer = Signer.from_private_key(name, private_key)
    sig = NoteSignature(name, signer.key_id, signer.sign(text.encode("utf-8")))
    return text + "\n" + sig.line()


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A tlog checkpoint body: origin, tree size, root hash and optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Reject values that cannot be written as a valid checkpoint."""
        _check_line(self.origin, "checkpoint origin")
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise NoteError("checkpoint tree size must be an int")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise NoteError(f"checkpoint tree size {self.size} is out of range")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != _HASH_SIZE:
            raise NoteError(f"checkpoint root hash must be {_HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise NoteError("checkpoint extensions must be a tuple of lines")
        for ext in self.extensions:
            _check_line(ext, "checkpoint extension line")

    def to_text(self) -> str:
        """The checkpoint note text, ending with a newline."""
        lines = [self.origin, str(self.size), _b64encode(self.root_hash), *self.extensions]
        return "\n".join(lines) + "\n"


def _check_line(line: str, what: str) -> None:
    if not isinstance(line, str) or not line:
        raise NoteError(f"{what} must be a non-empty string")
    if "\n" in line:
        raise NoteError(f"{what} must be a single line")
    _check_text_chars(line, what)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint note text (origin, size, root hash, extensions), strictly."""
    if not text.endswith("\n"):
        raise NoteError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint needs an origin, a tree size and a root hash line")
    origin, size_text, root64, *extensions = lines
    if not origin:
        raise NoteError("checkpoint origin is empty")
    if not _DECIMAL.fullmatch(size_text):
        raise NoteError("checkpoint tree size is not a decimal number without leading zeros")
    size = int(size_text)
    if size > _MAX_TREE_SIZE:
        raise NoteError("checkpoint tree size does not fit in 64 bits")
    root_hash = _b64decode(root64, "checkpoint root hash")
    if len(root_hash) != _HASH_SIZE:
        raise NoteError(f"checkpoint root hash must be {_HASH_SIZE} bytes, got {len(root_hash)}")
    if any(not ext for ext in extensions):
        raise NoteError("checkpoint extension lines must not be empty")
    # __post_init__ re-checks control characters and the rest.
    return Checkpoint(origin, size, root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign a checkpoint and return the signed note."""
    return sign_note(checkpoint.to_text(), name, private_key)


def open_checkpoint(
    note: str | bytes, verifiers: Iterable[Verifier], origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint note and parse it; optionally require its origin."""
    checkpoint = parse_checkpoint(open_note(note, verifiers))
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
    return checkpoint
