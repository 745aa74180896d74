"""Tests for vault.witness.cosignature: C2SP tlog-cosignature ``cosignature/v1`` (Ed25519).

Known answers come from the C2SP texts themselves: the worked example of tlog-cosignature
(its witness line, its timestamp and its signed-message layout) and the verifier key of the
signed-note "Verifier keys" example. The specification publishes no witness private key, so
signatures are checked with a verifier written here from the specification's words that shares
no code with the signer (only the Ed25519 primitive of ``cryptography``).
"""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vault.ledger.note import Checkpoint, NoteError, NoteSignature, parse_note
from vault.witness.cosignature import (
    ALG_COSIGNATURE_V1,
    MAX_TIMESTAMP,
    CosignatureVerifier,
    Cosigner,
    cosignature_message,
    cosigner_key_id,
    parse_cosigner_key,
)

# c2sp.org/tlog-cosignature, "Format": the example checkpoint with a log signature and one
# witness cosignature, and ("Ed25519 signed message") the message that example signs.
SPEC_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_WITNESS_LINE = (
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZC"
    "B9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
SPEC_NOTE = (
    SPEC_BODY
    + "\n\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4U"
    "RYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n" + SPEC_WITNESS_LINE
)
SPEC_TIMESTAMP = 1679315147
SPEC_MESSAGE = (
    "cosignature/v1\n"
    "time 1679315147\n"
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
# c2sp.org/signed-note, "Verifier keys" example (type 0x01), whose ID 530d903a is known.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
# RFC 8032 section 7.1, TEST 1: a fixed seed, so the cosignature below is a fixed answer.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


# ------------------------------------------------------------------- an independent verifier


def spec_verify(vkey: str, body: str, line: str) -> int:
    """Verify one cosignature line over checkpoint ``body``, from the C2SP texts alone.

    signed-note: a vkey is ``name+hexid+base64(type || key)``; a signature line is
    ``— name base64(key ID || sig)``. tlog-cosignature: type 0x04, key ID
    SHA-256(name || 0x0A || 0x04 || key)[:4], sig = u64 big-endian timestamp || Ed25519 over
    "cosignature/v1\\ntime <t>\\n" || body. Returns the timestamp; raises on any mismatch.
    """
    name, hex_id, key64 = vkey.split("+", 2)
    raw = base64.b64decode(key64, validate=True)
    if raw[0] != 4 or len(raw) != 33:
        raise ValueError("not a cosignature/v1 Ed25519 vkey")
    want_id = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    if bytes.fromhex(hex_id) != want_id:
        raise ValueError("vkey ID does not match")
    if not line.startswith("\u2014 ") or not line.endswith("\n"):
        raise ValueError("not a signature line")
    line_name, blob64 = line[2:-1].split(" ")
    blob = base64.b64decode(blob64, validate=True)
    if line_name != name or blob[:4] != want_id or len(blob) != 4 + 8 + 64:
        raise ValueError("line is not from this key")
    timestamp = int(struct.unpack(">Q", blob[4:12])[0])
    if timestamp > 2**63 - 1:
        raise ValueError("timestamp out of range")
    message = f"cosignature/v1\ntime {timestamp}\n{body}".encode()
    Ed25519PublicKey.from_public_bytes(raw[1:]).verify(blob[12:], message)
    return timestamp


# --------------------------------------------------------------------------- known answers


def test_spec_example_line_frames_key_id_timestamp_and_signature() -> None:
    sig = parse_note(SPEC_NOTE).signatures[1]
    assert sig.name == "witness.example.com/w1"
    assert sig.key_id == 0x8D66CF3F
    assert CosignatureVerifier.split_signature(sig.signature) == (
        SPEC_TIMESTAMP,
        sig.signature[8:],
    )
    assert len(sig.signature[8:]) == 64
    assert sig.line() == SPEC_WITNESS_LINE


def test_signed_message_is_the_spec_example_byte_for_byte() -> None:
    assert cosignature_message(SPEC_BODY, SPEC_TIMESTAMP) == SPEC_MESSAGE.encode()


def test_key_id_uses_type_byte_0x04() -> None:
    # The signed-note example key, whose 0x01 ID the spec states, gets a different 0x04 ID.
    raw = base64.b64decode(SPEC_VKEY.split("+", 2)[2])[1:]
    assert hashlib.sha256(b"example.com/foo\n\x01" + raw).digest()[:4].hex() == "530d903a"
    assert ALG_COSIGNATURE_V1 == 0x04
    want = int.from_bytes(hashlib.sha256(b"example.com/foo\n\x04" + raw).digest()[:4], "big")
    assert cosigner_key_id("example.com/foo", raw) == want != 0x530D903A


def test_vkey_of_rfc8032_key_is_type_0x04() -> None:
    cosigner = Cosigner.from_seed("witness.example/kz", RFC8032_SEED)
    vkey = cosigner.vkey()
    name, hex_id, key64 = vkey.split("+", 2)
    assert name == "witness.example/kz"
    assert base64.b64decode(key64) == b"\x04" + RFC8032_PUBLIC
    kid = hashlib.sha256(b"witness.example/kz\n\x04" + RFC8032_PUBLIC).digest()[:4]
    assert hex_id == kid.hex()
    assert CosignatureVerifier.from_vkey(vkey) == cosigner.verifier()


def test_cosignature_of_fixed_key_and_time_is_fixed() -> None:
    # Ed25519 is deterministic: same key, time and body give the same line, and the independent
    # verifier accepts it.
    cosigner = Cosigner.from_seed("witness.example/kz", RFC8032_SEED)
    line = cosigner.cosign(SPEC_BODY, SPEC_TIMESTAMP).line()
    assert line == cosigner.cosign(SPEC_BODY, SPEC_TIMESTAMP).line()
    assert spec_verify(cosigner.vkey(), SPEC_BODY, line) == SPEC_TIMESTAMP


# --------------------------------------------------------------------------- sign / verify


def test_independent_verifier_accepts_a_fresh_cosignature() -> None:
    cosigner = Cosigner.generate("witness.kz.example/blo")
    body = Checkpoint("blo-vault.local/ledger", 7, bytes(range(32))).to_text()
    line = cosigner.cosign(body, 1_790_000_000).line()
    assert spec_verify(cosigner.vkey(), body, line) == 1_790_000_000


def test_independent_verifier_rejects_other_body_time_or_key() -> None:
    cosigner = Cosigner.generate("witness.kz.example/blo")
    body = Checkpoint("blo-vault.local/ledger", 7, bytes(32)).to_text()
    other = Checkpoint("blo-vault.local/ledger", 7, bytes([1]) * 32).to_text()
    line = cosigner.cosign(body, 1_790_000_000).line()
    with pytest.raises(InvalidSignature):
        spec_verify(cosigner.vkey(), other, line)
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    blob[11] ^= 1  # a different timestamp
    forged = f"\u2014 witness.kz.example/blo {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(InvalidSignature):
        spec_verify(cosigner.vkey(), body, forged)
    with pytest.raises(ValueError, match="not from this key"):
        spec_verify(Cosigner.generate("witness.kz.example/blo").vkey(), body, line)


def test_own_verifier_round_trip_and_rejections() -> None:
    cosigner = Cosigner.generate("witness.tj.example/blo")
    verifier = cosigner.verifier()
    body = Checkpoint("blo-vault.local/ledger", 3, bytes(32)).to_text()
    sig = cosigner.cosign(body, 1_790_000_123)
    assert verifier.verify(body, sig) == 1_790_000_123
    other = Checkpoint("blo-vault.local/ledger", 4, bytes(32)).to_text()
    with pytest.raises(NoteError):
        verifier.verify(other, sig)
    with pytest.raises(NoteError):
        verifier.verify(body, NoteSignature(sig.name, sig.key_id, sig.signature[:-1]))
    with pytest.raises(NoteError):
        verifier.verify(body, NoteSignature(sig.name, sig.key_id ^ 1, sig.signature))


def test_timestamp_range() -> None:
    cosigner = Cosigner.generate("w.example/a")
    body = Checkpoint("o.example/log", 1, bytes(32)).to_text()
    assert MAX_TIMESTAMP == 2**63 - 1
    assert cosigner.verifier().verify(body, cosigner.cosign(body, MAX_TIMESTAMP)) == MAX_TIMESTAMP
    for bad in (-1, MAX_TIMESTAMP + 1):
        with pytest.raises(NoteError):
            cosigner.cosign(body, bad)
    # A verifier refuses a timestamp over 2^63 - 1 even when the signature is valid for it.
    over = (MAX_TIMESTAMP + 1).to_bytes(8, "big")
    msg = b"cosignature/v1\ntime " + str(MAX_TIMESTAMP + 1).encode() + b"\n" + body.encode()
    raw_sig = cosigner._signer.sign(msg)
    with pytest.raises(NoteError, match="timestamp"):
        cosigner.verifier().verify(
            body, NoteSignature(cosigner.name, cosigner.key_id, over + raw_sig)
        )


def test_cosign_refuses_text_that_is_not_a_checkpoint_body() -> None:
    cosigner = Cosigner.generate("w.example/a")
    for bad in ("no newline", "a\n\nb\n", ""):
        with pytest.raises(NoteError):
            cosigner.cosign(bad, 1)


def test_signer_key_round_trip_and_parse_errors() -> None:
    cosigner = Cosigner.generate("witness.uz.example/blo")
    again = parse_cosigner_key(cosigner.skey())
    assert again.vkey() == cosigner.vkey()
    assert cosigner.skey() not in repr(cosigner)
    for bad in (
        "",
        "PRIVATE+KEY+n",
        cosigner.skey().replace("PRIVATE+KEY+", ""),
        cosigner.skey()[:-4] + "AAAA",  # seed changed, ID no longer matches
    ):
        with pytest.raises(NoteError):
            parse_cosigner_key(bad)
    for bad_vkey in (SPEC_VKEY, "", "a+b+c", cosigner.vkey() + "A", cosigner.vkey().upper()):
        with pytest.raises(NoteError):
            CosignatureVerifier.from_vkey(bad_vkey)
