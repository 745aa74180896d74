"""C2SP tlog-cosignature ``cosignature/v1``: timestamped Ed25519 witness cosignatures.

A cosignature is a signed-note signature line (c2sp.org/signed-note) over a checkpoint body
whose key has signature type 0x04 (signed-note "Signature types"):

* key ID = SHA-256(name || 0x0A || 0x04 || 32-byte Ed25519 public key)[:4];
* signature = u64 big-endian timestamp || Ed25519 signature of
  ``"cosignature/v1\\ntime <timestamp>\\n" || checkpoint body``;
* verifier key (vkey) = ``name+hexid+base64(0x04 || public key)``.

Where the spec and issue 12 differ: the current tlog-cosignature text says the ML-DSA-44 type
(0x06, quantum-safe, commits to the cosigner's name) SHOULD be used for new deployments; issue
12 asks for Ed25519, which the spec still defines and which every existing verifier reads. This
module implements Ed25519 only. Because its signed message does not commit to the cosigner
name, one key must never serve two witness names (the spec's MUST; ``witness init`` always
makes a fresh key).

The spec defines no format for a cosigner's *private* key; the witness keeps its own in the
form golang.org/x/mod/sumdb/note uses for signer keys, ``PRIVATE+KEY+name+hexid+base64(0x04 ||
seed)``, so the file says what it is. Parsing errors are :class:`~vault.ledger.note.NoteError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field

from vault import crypto
from vault.ledger.note import (
    NoteError,
    NoteSignature,
    Signer,
    Verifier,
    is_valid_key_name,
    parse_checkpoint,
)

__all__ = [
    "ALG_COSIGNATURE_V1",
    "MAX_TIMESTAMP",
    "CosignatureVerifier",
    "Cosigner",
    "cosignature_message",
    "cosigner_key_id",
    "parse_cosigner_key",
]

ALG_COSIGNATURE_V1 = 0x04
"""Signature type byte of timestamped Ed25519 cosignatures (c2sp.org/signed-note)."""

MAX_TIMESTAMP = (1 << 63) - 1
"""Largest timestamp a cosignature may carry (tlog-cosignature: "MUST NOT exceed 2^63 - 1")."""

_HEADER = "cosignature/v1\n"
_KEY_SIZE = 32
_SIG_SIZE = 64
_HEX_ID = re.compile(r"[0-9a-f]{8}")
_SKEY_PREFIX = "PRIVATE+KEY+"


def cosigner_key_id(name: str, public_key: bytes) -> int:
    """Key ID of an Ed25519 cosigner: SHA-256(name || 0x0A || 0x04 || key)[:4], big endian."""
    if not is_valid_key_name(name):
        raise NoteError(f"invalid key name {name!r}")
    if len(public_key) != _KEY_SIZE:
        raise NoteError(f"Ed25519 public key must be {_KEY_SIZE} bytes")
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ALG_COSIGNATURE_V1]) + public_key
    ).digest()
    return int.from_bytes(digest[:4], "big")


def _check_body(body: str) -> None:
    """A cosignature covers a whole checkpoint body: parse it strictly, so nothing else gets one."""
    parse_checkpoint(body)
    if "\n\n" in body:
        raise NoteError("checkpoint body must not contain a blank line")


def cosignature_message(body: str, timestamp: int) -> bytes:
    """The bytes a ``cosignature/v1`` signs: header line, time line, then the checkpoint body."""
    _check_timestamp(timestamp)
    return f"{_HEADER}time {timestamp}\n{body}".encode()


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise NoteError("cosignature timestamp must be an int")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")


def _b64decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _split_key(body: str, what: str) -> tuple[str, int, bytes]:
    """``name+hexid+base64(0x04 || 32 bytes)`` -> (name, key ID, the 32 bytes)."""
    parts = body.split("+", 2)  # base64 may itself contain "+"
    if len(parts) != 3:
        raise NoteError(f"malformed {what}")
    name, hex_id, key64 = parts
    if not is_valid_key_name(name):
        raise NoteError(f"malformed {what}: invalid key name")
    if not _HEX_ID.fullmatch(hex_id):
        raise NoteError(f"malformed {what}: key ID must be 8 lowercase hex digits")
    raw = _b64decode(key64, what)
    if len(raw) != 1 + _KEY_SIZE:
        raise NoteError(f"malformed {what}: expected a type byte and {_KEY_SIZE} key bytes")
    if raw[0] != ALG_COSIGNATURE_V1:
        raise NoteError(f"{what} has signature type 0x{raw[0]:02x}, not 0x04 (cosignature/v1)")
    return name, int(hex_id, 16), raw[1:]


@dataclass(frozen=True)
class CosignatureVerifier:
    """A witness's name and Ed25519 public key, checking ``cosignature/v1`` signatures."""

    name: str
    key_id: int
    public_key: bytes

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        """Parse a type 0x04 vkey; NoteError if malformed or its key ID does not match."""
        name, kid, raw = _split_key(vkey, "witness verifier key")
        if cosigner_key_id(name, raw) != kid:
            raise NoteError("witness verifier key ID does not match its name and public key")
        try:
            crypto.ed25519_public_key(raw)
        except ValueError:
            raise NoteError("witness verifier key is not an Ed25519 public key") from None
        return cls(name, kid, raw)

    def vkey(self) -> str:
        """This key as ``name+hexid+base64(0x04 || public key)``."""
        blob = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{blob}"

    def matches(self, sig: NoteSignature) -> bool:
        """True if the signature line names this key (name and key ID); it may still be bad."""
        return sig.name == self.name and sig.key_id == self.key_id

    @staticmethod
    def split_signature(signature: bytes) -> tuple[int, bytes]:
        """``timestamped_signature`` -> (timestamp, 64-byte Ed25519 signature); NoteError if bad."""
        if len(signature) != 8 + _SIG_SIZE:
            raise NoteError("cosignature must be an 8-byte timestamp and a 64-byte signature")
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            raise NoteError("cosignature timestamp exceeds 2^63 - 1")
        return timestamp, signature[8:]

    def verify(self, body: str, sig: NoteSignature) -> int:
        """Check ``sig`` is this key's cosignature of checkpoint ``body``; return its timestamp.

        Raises NoteError if the line is not from this key or does not verify."""
        if not self.matches(sig):
            raise NoteError(f"cosignature is not from {self.name}+{self.key_id:08x}")
        timestamp, raw = self.split_signature(sig.signature)
        verifier = Verifier(self.name, self.key_id, crypto.ed25519_public_key(self.public_key))
        if not verifier.verify(cosignature_message(body, timestamp), raw):
            raise NoteError(f"invalid cosignature from {self.name}+{self.key_id:08x}")
        return timestamp


@dataclass(frozen=True)
class Cosigner:
    """A witness's name and Ed25519 private key, making ``cosignature/v1`` signatures."""

    name: str
    key_id: int
    _signer: Signer = field(repr=False)

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> Cosigner:
        """A cosigner from a 32-byte Ed25519 seed."""
        if len(seed) != _KEY_SIZE:
            raise NoteError(f"Ed25519 seed must be {_KEY_SIZE} bytes")
        private_key = crypto.ed25519_from_seed(seed)
        public = crypto.ed25519_public_bytes(private_key.public_key())
        kid = cosigner_key_id(name, public)
        return cls(name, kid, Signer(name, kid, private_key))

    @classmethod
    def generate(cls, name: str) -> Cosigner:
        """A cosigner with a fresh random key."""
        return cls.from_seed(name, crypto.ed25519_seed(crypto.new_ed25519_private_key()))

    def verifier(self) -> CosignatureVerifier:
        """The matching verifier."""
        public = crypto.ed25519_public_bytes(self._signer.private_key.public_key())
        return CosignatureVerifier(self.name, self.key_id, public)

    def vkey(self) -> str:
        """The public verifier key string (type 0x04)."""
        return self.verifier().vkey()

    def skey(self) -> str:
        """The private key string ``PRIVATE+KEY+name+hexid+base64(0x04 || seed)`` (secret)."""
        seed = crypto.ed25519_seed(self._signer.private_key)
        blob = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + seed).decode("ascii")
        return f"{_SKEY_PREFIX}{self.name}+{self.key_id:08x}+{blob}"

    def cosign(self, body: str, timestamp: int) -> NoteSignature:
        """Cosign checkpoint ``body`` as of ``timestamp``; NoteError if either is invalid."""
        _check_body(body)
        message = cosignature_message(body, timestamp)
        blob = timestamp.to_bytes(8, "big") + self._signer.sign(message)
        return NoteSignature(self.name, self.key_id, blob)


def parse_cosigner_key(skey: str) -> Cosigner:
    """Parse ``PRIVATE+KEY+name+hexid+base64(0x04 || seed)``; NoteError if malformed."""
    if not skey.startswith(_SKEY_PREFIX):
        raise NoteError("malformed witness signer key: missing PRIVATE+KEY+ prefix")
    name, kid, seed = _split_key(skey[len(_SKEY_PREFIX) :], "witness signer key")
    cosigner = Cosigner.from_seed(name, seed)
    if cosigner.key_id != kid:
        raise NoteError("witness signer key ID does not match its name and public key")
    return cosigner
