"""Known-answer vectors that freeze the sealed-object format, key wrapping and record sealing.

A change to the nonce, header or associated-data layout that still round-trips passes every
other test while every stored object stops opening. These vectors fail on such a change: each
is checked both ways (sealing the fixed inputs gives exactly these bytes, opening these bytes
gives the plaintext), and each is decrypted a third time with ``AESGCM`` directly, following
the layout that ``vault.crypto``'s docstring states, so the literals pin the documented format
rather than whatever the module happens to do.

The vectors were computed once with fixed keys and nonces (the ``unsafe_fixed_*`` arguments
that only tests pass) and are literal here on purpose: never regenerate them to make a test
pass; a new format gets a new version byte and new vectors beside these.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault import crypto
from vault.errors import IntegrityError

KEK = bytes(range(32))
DATA_KEY = bytes(range(32, 64))
PACKAGE_KEY = bytes(range(64, 96))
PREFIX = bytes.fromhex("b0b1b2b3b4b5b6")
WRAP_NONCE = bytes.fromhex("c0c1c2c3c4c5c6c7c8c9cacb")
META_NONCE = bytes.fromhex("d0d1d2d3d4d5d6d7d8d9dadb")
PACKAGE_ID = "0123456789abcdef0123456789abcdef"
FILE_ID = "fedcba9876543210fedcba9876543210"
# The identities the service binds objects to (service.py: _file_identity, _package_identity).
FILE_IDENTITY = f"blo-vault/file/v1\x00{PACKAGE_ID}\x00{FILE_ID}".encode()
PACKAGE_IDENTITY = f"blo-vault/package/v1\x00{PACKAGE_ID}".encode()

MULTI_PLAINTEXT = b"Border Liaison Office report: 40 bytes.."
MULTI_SEGMENT_SIZE = 16  # 40 bytes: two full segments and a last one of 8
MULTI_SEALED = bytes.fromhex(
    "424c4f560100000010b0b1b2b3b4b5b6"  # "BLOV" | v1 | segment size 16 | nonce prefix
    "a2b199d86a7453e9db067dcc2159f210"  # segment 0
    "25e966a090c84d90dfaa3b1b9636b122"  # tag 0
    "e7f25e65818c454c42a9419454783d19"  # segment 1
    "e13b8310307c81967f140b07abf37405"  # tag 1
    "363f5b9efd143bd0"  # segment 2 (last, 8 bytes)
    "f2bd1abe00556a17aab744f20ce04b29"  # tag 2
)
EMPTY_SEALED = bytes.fromhex(
    "424c4f560100100000b0b1b2b3b4b5b6"  # default segment size, 1 MiB
    "4e778b672ae8cbd0d0c9da6d60f75d6b"  # one empty last segment: the tag alone
)
ONE_PLAINTEXT = b"one segment"
ONE_SEALED = bytes.fromhex(
    "424c4f560100100000b0b1b2b3b4b5b60e74f0fbb2e87180ac18087c8b0fad33253552ace6a4005eb7aea3"
)

KEK_ID = "kek-378974ee2bf8433d"
WRAPPED_DATA_KEY = bytes.fromhex(
    "01"  # wrap format v1
    "c0c1c2c3c4c5c6c7c8c9cacb"  # nonce
    "20690544535db079b0f0d7891e81c6797c42d10c08d7298d12fa71310b404189"  # the data key, sealed
    "b74ac36cb081260c756be4702fa7349c"  # tag
)

META_PLAINTEXT = json.dumps(
    {"title": "T", "description": "D", "handling_note": "", "fields": {}, "digest": "0" * 64}
).encode()
SEALED_META = bytes.fromhex(
    "01d0d1d2d3d4d5d6d7d8d9dadb"  # record format v1 | nonce
    "a4eea2be823b8071cb6b08db8261c558c8c4afd536484a9fb52dec6ebd6ee43f46b418092ddf4a8399a63a98"
    "ac7219d103d4da3d9dfa112306d13083d335f878a4a820ba1fb27f002f905faef0cbd4dfccdc7437ff94484f"
    "44784f58c188367f2a8683205390542d41ef6c5e9e52a9523caa17fc3068b6c1e207232f4a8ce132aeec4e43"
    "37d1f238ef26e18b64383612a2c6c159826040e9647cbaada687bf636c3868"
)

STREAMS = [
    pytest.param(MULTI_PLAINTEXT, MULTI_SEGMENT_SIZE, MULTI_SEALED, id="three-segments"),
    pytest.param(b"", crypto.SEGMENT_SIZE, EMPTY_SEALED, id="empty"),
    pytest.param(ONE_PLAINTEXT, crypto.SEGMENT_SIZE, ONE_SEALED, id="one-segment"),
]


def seal(plaintext: bytes, segment_size: int) -> bytes:
    """The sealed stream of ``plaintext`` under the fixed data key, prefix and identity."""
    reader = crypto.SealingReader(
        io.BytesIO(plaintext),
        DATA_KEY,
        identity=FILE_IDENTITY,
        segment_size=segment_size,
        unsafe_fixed_prefix=PREFIX,
    )
    try:
        return reader.read()
    finally:
        reader.close()


def open_sealed(sealed: bytes, identity: bytes = FILE_IDENTITY) -> bytes:
    """Plaintext of a sealed stream through ``vault.crypto.open_stream``."""
    with contextlib.closing(
        crypto.open_stream(io.BytesIO(sealed), DATA_KEY, identity=identity)
    ) as it:
        return b"".join(it)


def open_by_the_documented_layout(sealed: bytes, key: bytes, identity: bytes) -> bytes:
    """Decrypt a sealed stream with AESGCM alone, from the layout in vault.crypto's docstring."""
    header = sealed[:16]
    magic, version, segment_size, prefix = struct.unpack(">4sBI7s", header)
    assert (magic, version) == (b"BLOV", 1)
    body = sealed[16:]
    step = segment_size + 16
    segments = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    plain = []
    for counter, segment in enumerate(segments):
        last = counter == len(segments) - 1
        nonce = prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        plain.append(AESGCM(key).decrypt(nonce, segment, header + identity))
    return b"".join(plain)


@pytest.mark.parametrize(("plaintext", "segment_size", "sealed"), STREAMS)
def test_sealing_the_fixed_inputs_gives_the_vector(
    plaintext: bytes, segment_size: int, sealed: bytes
) -> None:
    assert seal(plaintext, segment_size) == sealed
    assert len(sealed) == crypto.sealed_size(len(plaintext), segment_size)


@pytest.mark.parametrize(("plaintext", "segment_size", "sealed"), STREAMS)
def test_opening_the_vector_gives_the_plaintext(
    plaintext: bytes, segment_size: int, sealed: bytes
) -> None:
    assert open_sealed(sealed) == plaintext
    assert open_by_the_documented_layout(sealed, DATA_KEY, FILE_IDENTITY) == plaintext


def test_the_vector_is_bound_to_its_identity_and_last_flag() -> None:
    other = f"blo-vault/file/v1\x00{PACKAGE_ID}\x00{PACKAGE_ID}".encode()
    with pytest.raises(IntegrityError):
        open_sealed(MULTI_SEALED, identity=other)
    # Cut after the second full segment: it was sealed as "not last", so this must not open.
    with pytest.raises(IntegrityError):
        open_sealed(MULTI_SEALED[: 16 + 2 * (MULTI_SEGMENT_SIZE + 16)])


def test_wrapping_the_fixed_key_gives_the_vector() -> None:
    keyring = crypto.Keyring(current=crypto.Kek(KEK))
    wrapped = keyring.wrap(DATA_KEY, context=FILE_IDENTITY, unsafe_fixed_nonce=WRAP_NONCE)
    assert wrapped == crypto.WrappedKey(kek_id=KEK_ID, blob=WRAPPED_DATA_KEY)
    assert keyring.unwrap(wrapped, context=FILE_IDENTITY) == DATA_KEY


def test_the_wrapped_key_vector_follows_the_documented_layout() -> None:
    kek_id = "kek-" + hashlib.sha256(b"blo-vault kek id\x00" + KEK).hexdigest()[:16]
    assert kek_id == KEK_ID
    version, nonce, sealed = WRAPPED_DATA_KEY[0], WRAPPED_DATA_KEY[1:13], WRAPPED_DATA_KEY[13:]
    aad = b"blo-vault/wrap/v1\x00" + KEK_ID.encode() + b"\x00" + FILE_IDENTITY
    assert version == 1
    assert AESGCM(KEK).decrypt(nonce, sealed, aad) == DATA_KEY


def test_sealing_the_fixed_metadata_gives_the_vector() -> None:
    sealed = crypto.seal_bytes(
        PACKAGE_KEY, META_PLAINTEXT, context=PACKAGE_IDENTITY, unsafe_fixed_nonce=META_NONCE
    )
    assert sealed == SEALED_META
    assert crypto.open_bytes(PACKAGE_KEY, SEALED_META, context=PACKAGE_IDENTITY) == META_PLAINTEXT


def test_the_metadata_vector_follows_the_documented_layout() -> None:
    version, nonce, sealed = SEALED_META[0], SEALED_META[1:13], SEALED_META[13:]
    aad = b"blo-vault/record/v1\x00" + PACKAGE_IDENTITY
    assert version == 1
    assert AESGCM(PACKAGE_KEY).decrypt(nonce, sealed, aad) == META_PLAINTEXT


@pytest.mark.parametrize("size", [0, 7, 11, 13])
def test_a_fixed_nonce_of_the_wrong_size_is_refused(size: int) -> None:
    keyring = crypto.Keyring(current=crypto.Kek(KEK))
    with pytest.raises(ValueError, match="fixed nonce"):
        keyring.wrap(DATA_KEY, context=b"x", unsafe_fixed_nonce=bytes(size))
    with pytest.raises(ValueError, match="fixed nonce"):
        crypto.seal_bytes(PACKAGE_KEY, b"x", context=b"x", unsafe_fixed_nonce=bytes(size))


@pytest.mark.parametrize("size", [0, 6, 8, 12])
def test_a_fixed_prefix_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="fixed nonce"):
        crypto.SealingReader(
            io.BytesIO(b""), DATA_KEY, identity=b"x", unsafe_fixed_prefix=bytes(size)
        )


def test_without_a_fixed_nonce_every_seal_differs() -> None:
    keyring = crypto.Keyring(current=crypto.Kek(KEK))
    assert keyring.wrap(DATA_KEY, context=b"x") != keyring.wrap(DATA_KEY, context=b"x")
    assert crypto.seal_bytes(PACKAGE_KEY, b"x", context=b"x") != crypto.seal_bytes(
        PACKAGE_KEY, b"x", context=b"x"
    )
    first = crypto.SealingReader(io.BytesIO(b"x"), DATA_KEY, identity=b"x")
    second = crypto.SealingReader(io.BytesIO(b"x"), DATA_KEY, identity=b"x")
    try:
        assert first.read() != second.read()
    finally:
        first.close()
        second.close()
