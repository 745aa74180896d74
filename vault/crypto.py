"""The vault's cryptographic recipe; the only module that calls ``cryptography`` primitives.

Content is sealed with a streaming AEAD in the STREAM construction (Hoang, Reyhanitabar, Rogaway
and Vizár, as used by Tink's streaming AEAD and by age): the plaintext is cut into fixed-size
segments, each sealed with AES-256-GCM under a fresh per-file data key with the nonce

    nonce = prefix (7 random bytes) || segment counter (uint32, big endian) || last flag (1 byte)

and the associated data ``header || identity``. The counter makes dropping or reordering
segments fail; the last flag makes truncation at a segment boundary fail; the identity (the
file's and package's ids) makes splicing segments or whole objects between files fail.

Sealed stream layout, version 1::

    "BLOV" | 0x01 | segment size (uint32 BE) | nonce prefix (7 bytes)    -- 16-byte header
    segment 0 ciphertext || tag  ...  segment n-1 ciphertext || tag         -- tag = 16 bytes

Every segment but the last holds exactly ``segment size`` plaintext bytes; the last holds 0 to
``segment size`` bytes and is empty only when the whole plaintext is. Data keys are wrapped by a
key-encryption key (KEK) with AES-256-GCM; the KEK's id is stored beside each wrapped key so
KEKs rotate by re-wrapping alone. Callers never choose nonces and never see which check failed:
every failure to open is one :class:`~vault.errors.IntegrityError`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import queue
import struct
import threading
from collections.abc import Generator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault.errors import ConfigError, IntegrityError
from vault.streams import Readable, read_full

__all__ = [
    "HEADER_SIZE",
    "KEY_SIZE",
    "SEGMENT_SIZE",
    "TAG_SIZE",
    "BackgroundDigest",
    "Kek",
    "Keyring",
    "Readable",
    "RecordSealer",
    "SealingReader",
    "WrappedKey",
    "constant_time_equal",
    "derive_key",
    "ed25519_from_seed",
    "ed25519_public_bytes",
    "ed25519_public_key",
    "ed25519_seed",
    "ed25519_verify",
    "keyed_digest",
    "load_officer_key_pem",
    "new_data_key",
    "new_ed25519_private_key",
    "new_token_signing_key_pem",
    "officer_key_pem",
    "open_bytes",
    "open_stream",
    "random_bytes",
    "seal_bytes",
    "sealed_size",
    "token_public_key_pem",
]

# 1 MiB segments, as in Tink's "…_1MB" streaming templates: per-segment work in Python (nonce,
# slicing, a call into AES-GCM, a queue hand-off) is paid 16 times less often than with 64 KiB,
# which is what kept large transfers well behind a plain copy. Memory stays at a few segments.
# The header records the size, so objects sealed with other sizes still open.
SEGMENT_SIZE = 1024 * 1024
TAG_SIZE = 16
KEY_SIZE = 32
_MAGIC = b"BLOV"
_STREAM_VERSION = 1
_PREFIX_SIZE = 7
_HEADER = struct.Struct(">4sBI7s")
HEADER_SIZE = _HEADER.size
# Segments are counted in 32 bits: 2**32 segments of 1 MiB is 4 PiB, far above any limit.
_MAX_SEGMENTS = 2**32
_WRAP_VERSION = 1
_SMALL_VERSION = 1
_NONCE_SIZE = 12


def random_bytes(size: int) -> bytes:
    """Bytes from the operating system's CSPRNG."""
    return os.urandom(size)


def new_data_key() -> bytes:
    """A fresh random 256-bit data key (one per stored file or sealed record)."""
    return os.urandom(KEY_SIZE)


def constant_time_equal(a: bytes | str, b: bytes | str) -> bool:
    """Compare two secrets or digests in time independent of where they differ."""
    a_bytes = a.encode() if isinstance(a, str) else a
    b_bytes = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)


# --- key-encryption keys ---------------------------------------------------------------------


@dataclass(frozen=True)
class Kek:
    """A key-encryption key and its public id (derived from the key, so it can't be mislabelled)."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ConfigError("a KEK must be exactly 32 bytes")

    @functools.cached_property  # every wrap names its KEK: hashing the key each time showed
    def id(self) -> str:  # up in the ledger's append profile (one wrap per committed entry)
        """Stable identifier stored beside every key wrapped under this KEK."""
        return "kek-" + hashlib.sha256(b"blo-vault kek id\x00" + self.key).hexdigest()[:16]


@dataclass(frozen=True)
class WrappedKey:
    """A data key sealed under the KEK named by ``kek_id``."""

    kek_id: str
    blob: bytes


class Keyring:
    """The current KEK, which wraps new keys, plus older ones still able to unwrap."""

    def __init__(self, *, current: Kek, previous: tuple[Kek, ...] = ()) -> None:
        self.current = current
        self._by_id = {k.id: k for k in (*previous, current)}
        self._subkeys: dict[tuple[str, bytes], bytes] = {}

    @property
    def ids(self) -> frozenset[str]:
        """Ids of every KEK this keyring can unwrap with."""
        return frozenset(self._by_id)

    def wrap(
        self, data_key: bytes, *, context: bytes, unsafe_fixed_nonce: bytes | None = None
    ) -> WrappedKey:
        """Seal ``data_key`` under the current KEK, bound to ``context`` (the owner's identity).

        ``unsafe_fixed_nonce`` exists only for known-answer tests: a nonce used twice under one
        KEK breaks AES-GCM, so production code never passes it.
        """
        kek = self.current
        nonce = _nonce_or_random(unsafe_fixed_nonce, _NONCE_SIZE)
        aad = _wrap_aad(kek.id, context)
        blob = bytes([_WRAP_VERSION]) + nonce + AESGCM(kek.key).encrypt(nonce, data_key, aad)
        return WrappedKey(kek_id=kek.id, blob=blob)

    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes:
        """Open a wrapped data key; raises IntegrityError if it or its context was tampered with."""
        kek = self._by_id.get(wrapped.kek_id)
        if kek is None:
            raise IntegrityError("the key needed to open this item is not available")
        blob = wrapped.blob
        if len(blob) != 1 + _NONCE_SIZE + KEY_SIZE + TAG_SIZE or blob[0] != _WRAP_VERSION:
            raise IntegrityError("stored key is malformed")
        try:
            return AESGCM(kek.key).decrypt(
                blob[1 : 1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE :], _wrap_aad(kek.id, context)
            )
        except InvalidTag:
            raise IntegrityError("stored key failed authentication") from None

    def subkey(self, kek_id: str, purpose: bytes) -> bytes:
        """The key for ``purpose`` derived from KEK ``kek_id`` (derive_key), computed once.

        For small records written so often that a data key of their own, wrapped, would be
        most of their cost (ledger openings: one per committed entry). Records sealed under
        it with random 96-bit nonces: rotate the KEK well before 2^32 of them.
        """
        found = self._subkeys.get((kek_id, purpose))
        if found is None:
            kek = self._by_id.get(kek_id)
            if kek is None:
                raise IntegrityError("the key needed to open this item is not available")
            found = self._subkeys[(kek_id, purpose)] = derive_key(kek.key, purpose=purpose)
        return found

    def rewrap(self, wrapped: WrappedKey, *, context: bytes) -> WrappedKey:
        """Re-seal a wrapped key under the current KEK without touching the content it protects."""
        return self.wrap(self.unwrap(wrapped, context=context), context=context)


def _nonce_or_random(fixed: bytes | None, size: int) -> bytes:
    """A fresh random nonce, or the fixed one a known-answer test asked for (checked for size)."""
    if fixed is None:
        return os.urandom(size)
    if len(fixed) != size:
        raise ValueError(f"a fixed nonce here must be {size} bytes")
    return fixed


def _wrap_aad(kek_id: str, context: bytes) -> bytes:
    return b"blo-vault/wrap/v1\x00" + kek_id.encode() + b"\x00" + context


# --- small records (titles, descriptions, filenames) -----------------------------------------


class RecordSealer:
    """Seals and opens small records under one key (AES-256-GCM, bound to a context), with the
    cipher's key schedule built once: for records sealed on every append (ledger openings),
    where building it per record was most of what sealing cost."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(
        self, plaintext: bytes, *, context: bytes, unsafe_fixed_nonce: bytes | None = None
    ) -> bytes:
        """``unsafe_fixed_nonce`` is for known-answer tests only (see :meth:`Keyring.wrap`)."""
        nonce = _nonce_or_random(unsafe_fixed_nonce, _NONCE_SIZE)
        aad = b"blo-vault/record/v1\x00" + context
        return bytes([_SMALL_VERSION]) + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, *, context: bytes) -> bytes:
        """The record :meth:`seal` sealed under this key; IntegrityError on any failure."""
        if len(sealed) < 1 + _NONCE_SIZE + TAG_SIZE or sealed[0] != _SMALL_VERSION:
            raise IntegrityError("sealed record is malformed")
        aad = b"blo-vault/record/v1\x00" + context
        try:
            return self._aead.decrypt(sealed[1 : 1 + _NONCE_SIZE], sealed[1 + _NONCE_SIZE :], aad)
        except InvalidTag:
            raise IntegrityError("sealed record failed authentication") from None


def seal_bytes(
    key: bytes, plaintext: bytes, *, context: bytes, unsafe_fixed_nonce: bytes | None = None
) -> bytes:
    """Seal a small record in one AES-256-GCM message bound to ``context``.

    ``unsafe_fixed_nonce`` is for known-answer tests only (see :meth:`Keyring.wrap`).
    """
    return RecordSealer(key).seal(plaintext, context=context, unsafe_fixed_nonce=unsafe_fixed_nonce)


def open_bytes(key: bytes, sealed: bytes, *, context: bytes) -> bytes:
    """Open a record sealed by :func:`seal_bytes`; IntegrityError on any failure."""
    return RecordSealer(key).open(sealed, context=context)


# --- streams ----------------------------------------------------------------------------------


def sealed_size(plaintext_size: int, segment_size: int = SEGMENT_SIZE) -> int:
    """Exact ciphertext length for a plaintext of ``plaintext_size`` bytes."""
    segments = max(1, -(-plaintext_size // segment_size))
    return HEADER_SIZE + plaintext_size + segments * TAG_SIZE


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= _MAX_SEGMENTS:
        raise IntegrityError("stream has too many segments")
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class BackgroundDigest:
    """SHA-256 computed on a second thread while the caller reads, seals or opens.

    hashlib releases the GIL for large updates, so on two cores hashing overlaps the rest of a
    transfer instead of adding to it (SHA-256 is the slowest step: about 1.6 GB/s here, against
    7 GB/s for AES-GCM). At most ``depth`` pending chunks are held, so memory stays bounded.

    The thread starts with the first full batch: less data than that (a small file's whole
    transfer) is hashed on the caller's thread by :meth:`hexdigest`, since starting a thread
    and handing over cost more than hashing it (under load, several times more).
    """

    # Chunks are handed over in batches of about this many bytes: a queue hand-off costs tens
    # of microseconds, too much to pay per 64 KiB segment.
    _BATCH_BYTES = 1 << 20

    def __init__(self, *, depth: int = 8) -> None:
        self._hash = hashlib.sha256()
        self._depth = depth
        self._queue: queue.Queue[list[bytes]] | None = None
        self._thread: threading.Thread | None = None
        self._batch: list[bytes] = []
        self._batched = 0
        self._result: str | None = None

    def _run(self, batches: queue.Queue[list[bytes]]) -> None:
        update = self._hash.update
        while batch := batches.get():
            for chunk in batch:
                update(chunk)

    def update(self, chunk: bytes) -> None:
        """Queue ``chunk`` (an immutable bytes object) for hashing."""
        if chunk:
            self._batch.append(chunk)
            self._batched += len(chunk)
            if self._batched >= self._BATCH_BYTES:
                self._hand_over()

    def _hand_over(self) -> None:
        if self._queue is None:
            self._queue = queue.Queue(maxsize=self._depth)
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="sha256", daemon=True
            )
            self._thread.start()
        self._queue.put(self._batch)
        self._batch, self._batched = [], 0

    def hexdigest(self) -> str:
        """Wait for everything queued and return the hex digest (further updates are errors)."""
        if self._result is None:
            if self._queue is None or self._thread is None:  # never a full batch: hash here
                for chunk in self._batch:
                    self._hash.update(chunk)
            else:
                if self._batch:
                    self._queue.put(self._batch)
                self._queue.put([])  # the end
                self._thread.join()
            self._batch = []
            self._result = self._hash.hexdigest()
        return self._result

    def close(self) -> None:
        """Stop the thread without a result (the transfer was abandoned)."""
        self.hexdigest()


class SealingReader:
    """Reads plaintext from ``source`` and returns the sealed stream from :meth:`read`.

    Pull-based so any store can consume it like a file. :meth:`read` hands out whole sealed
    segments where it can (short reads, as files may give), so sealed bytes are not copied
    again; memory stays at about two segments. After the end of stream, :attr:`plaintext_size` and
    :meth:`sha256_hex` describe the plaintext that was sealed. ``max_size`` stops an oversized
    source early by raising ``limit_error``. ``unsafe_fixed_prefix`` (the 7-byte nonce prefix)
    is for known-answer tests only: a prefix used twice under one data key breaks AES-GCM.
    """

    def __init__(
        self,
        source: Readable,
        key: bytes,
        *,
        identity: bytes,
        max_size: int | None = None,
        limit_error: Exception | None = None,
        segment_size: int = SEGMENT_SIZE,
        unsafe_fixed_prefix: bytes | None = None,
    ) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("data key must be 32 bytes")
        self._source = source
        self._aead = AESGCM(key)
        self._segment_size = segment_size
        self._prefix = _nonce_or_random(unsafe_fixed_prefix, _PREFIX_SIZE)
        self._header = _HEADER.pack(_MAGIC, _STREAM_VERSION, segment_size, self._prefix)
        self._aad = self._header + identity
        self._digest = BackgroundDigest()
        self._counter = 0
        self._max_size = max_size
        self._limit_error = limit_error
        self.plaintext_size = 0
        self._pending: bytes | None = None
        self._out = b""  # sealed bytes, handed out from self._pos on
        self._pos = 0
        self._done = False

    def _next_plain(self) -> bytes:
        chunk = read_full(self._source, self._segment_size)
        self.plaintext_size += len(chunk)
        if self._max_size is not None and self.plaintext_size > self._max_size:
            raise self._limit_error or ValueError("source exceeds the size limit")
        self._digest.update(chunk)
        return chunk

    def _seal_next(self) -> bytes:
        """Seal one more segment; the lookahead tells whether it is the last."""
        if self._pending is None:
            self._pending = self._next_plain()
        current = self._pending
        following = self._next_plain() if len(current) == self._segment_size else b""
        last = not following
        nonce = _nonce(self._prefix, self._counter, last)
        sealed = self._aead.encrypt(nonce, current, self._aad)
        if self._counter == 0:
            sealed = self._header + sealed
        self._counter += 1
        self._pending = following
        if last:
            self._done = True
        return sealed

    def read(self, size: int = -1, /) -> bytes:
        """Return up to ``size`` sealed bytes (all that remain when ``size`` < 0); ``b""`` only
        at the end."""
        if size < 0:
            parts = [self._out[self._pos :]]
            while not self._done:
                parts.append(self._seal_next())
            self._out, self._pos = b"", 0
            return b"".join(parts)
        if self._pos >= len(self._out):
            if self._done or size == 0:
                return b""
            self._out, self._pos = self._seal_next(), 0
        start = self._pos
        if start == 0 and len(self._out) <= size:
            self._pos = len(self._out)
            return self._out  # a whole segment: no copy
        self._pos = min(len(self._out), start + size)
        return self._out[start : self._pos]

    def sha256_hex(self) -> str:
        """Hex SHA-256 of the plaintext, once the stream has ended."""
        return self._digest.hexdigest()

    def close(self) -> None:
        """Release the hashing thread (call it whether or not the stream was read to the end)."""
        self._digest.close()


def open_stream(source: Readable, key: bytes, *, identity: bytes) -> Generator[bytes, None, None]:
    """Yield the plaintext of a sealed stream, one authenticated segment at a time.

    Raises IntegrityError at the first segment that fails, including a stream that ends early,
    has extra bytes, or was sealed for another identity; plaintext already yielded was
    authentic, but the caller must discard the whole result on error. Errors from reading
    ``source`` are raised as they are.

    Segments are read on the caller's thread. A read-ahead thread used to overlap reading with
    decryption and the download's SHA-256; with the reads kept aligned (the local store's
    reader) and no digest, decryption (over 7 GB/s) is too little to hide, and handing
    segments between threads cost more than it saved (BENCHMARKS.md, issue 14). The kernel
    still reads the file ahead, and a socket's buffer fills while a segment is decrypted.
    """
    header = read_full(source, HEADER_SIZE)
    if len(header) != HEADER_SIZE:
        raise IntegrityError("sealed object is truncated")
    magic, version, segment_size, prefix = _HEADER.unpack(header)
    if magic != _MAGIC or version != _STREAM_VERSION or not 16 <= segment_size <= 2**24:
        raise IntegrityError("sealed object has an unknown header")
    aead = AESGCM(key)
    aad = header + identity
    sealed_segment = segment_size + TAG_SIZE
    current = read_full(source, sealed_segment)
    counter = 0
    while True:
        # Whether a segment is the last depends on whether another follows, so the next one
        # is read before the current one is opened (a short segment is the end).
        following = read_full(source, sealed_segment) if len(current) == sealed_segment else b""
        last = not following
        if len(current) < TAG_SIZE:
            raise IntegrityError("sealed object is truncated")
        try:
            plain = aead.decrypt(_nonce(prefix, counter, last), current, aad)
        except InvalidTag:
            raise IntegrityError("sealed object failed authentication") from None
        if last:
            if not plain and counter > 0:
                # An empty final segment only exists for an empty plaintext.
                raise IntegrityError("sealed object has a malformed final segment")
            yield plain
            return
        yield plain
        counter += 1
        current = following


# --- derived keys and keyed digests ----------------------------------------------------------


def derive_key(secret: bytes, *, purpose: bytes) -> bytes:
    """A 256-bit key for one ``purpose`` from a secret (HKDF-SHA256, RFC 5869): independent of
    the secret's own use and of every other purpose's key."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=purpose).derive(secret)


def keyed_digest(key: bytes, data: bytes) -> str:
    """HMAC-SHA256 of ``data`` under ``key``, as hex: stable, and meaningless without the key."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


# --- signing keys (token signing and the ledger's log key) ------------------------------------


def new_token_signing_key_pem() -> bytes:
    """A fresh ECDSA P-256 private key (for ES256 tokens), PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def token_public_key_pem(private_pem: bytes) -> bytes:
    """The public half of a P-256 private key, SubjectPublicKeyInfo PEM; ConfigError if unusable."""
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError("token signing key is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError("token signing key must be an ECDSA P-256 key")
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def new_ed25519_private_key() -> ed25519.Ed25519PrivateKey:
    """A fresh Ed25519 key (the ledger's log key)."""
    return ed25519.Ed25519PrivateKey.generate()


def ed25519_from_seed(seed: bytes) -> ed25519.Ed25519PrivateKey:
    """Ed25519 private key from its 32-byte seed; ConfigError if malformed."""
    try:
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    except ValueError:
        raise ConfigError("ledger key must be a 32-byte Ed25519 seed") from None


def ed25519_seed(key: ed25519.Ed25519PrivateKey) -> bytes:
    """The 32-byte seed of an Ed25519 private key."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def ed25519_public_key(raw: bytes) -> ed25519.Ed25519PublicKey:
    """Ed25519 public key from its 32 raw bytes; ValueError if malformed."""
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def ed25519_public_bytes(key: ed25519.Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- officers' signing keys (originator-signed packages, vault/manifest.py) --------------------
def ed25519_verify(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` signs ``message`` under ``public_raw`` (False if malformed)."""
    try:
        ed25519_public_key(public_raw).verify(signature, message)
    except (ValueError, InvalidSignature):
        return False
    return True


def officer_key_pem(key: ed25519.Ed25519PrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM of an officer's key, encrypted under ``passphrase`` when one is given."""
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else None
    fmt = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc or serialization.NoEncryption())


def load_officer_key_pem(pem: bytes, passphrase: bytes | None) -> ed25519.Ed25519PrivateKey:
    """An officer's key from :func:`officer_key_pem`; ConfigError if unreadable or wrong."""
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase or None)
    except (ValueError, TypeError):
        raise ConfigError("cannot open the signing key (wrong passphrase, or not a key)") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError("the signing key is not an Ed25519 key")
    return key
