"""Tests for vault.ledger.note: C2SP signed-note (Ed25519) and tlog-checkpoint.

Known-answer vectors come from golang.org/x/mod/sumdb/note (note_test.go: the PeterNeumann
and EnochRoot keys and signatures) and from the examples in the C2SP signed-note and
tlog-checkpoint specifications.
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vault.ledger import note as note_mod
from vault.ledger.merkle import root_from_leaf_hashes
from vault.ledger.note import (
    Checkpoint,
    NoteError,
    NoteSignature,
    Signer,
    Verifier,
    format_signer_key,
    format_verifier_key,
    generate_signer_key,
    is_valid_key_name,
    key_id,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_signer_key,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
)

# golang.org/x/mod/sumdb/note note_test.go.
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSN"
    "XgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01o"
    "OTGwnWLox33WWd1RvMc+QQ=\n"
)

# c2sp.org/signed-note and c2sp.org/tlog-checkpoint examples (keys not published).
C2SP_NOTE = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed \u00e8 subito sera.\n"
    "\n"
    "\u2014 quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKO"
    "NrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)
C2SP_CHECKPOINT = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
    "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)

PETER = parse_verifier_key(PETER_VKEY)
ENOCH = parse_verifier_key(ENOCH_VKEY)


def mangle(s: str, at: int, insert: str) -> str:
    return s[:at] + insert + s[at:]


# --------------------------------------------------------------------------- keys


def test_key_vectors_round_trip() -> None:
    assert PETER.name == "PeterNeumann"
    assert PETER.key_id == 0xC74F20A3
    assert PETER.vkey() == PETER_VKEY
    assert ENOCH.key_id == 0xAF0CFE78
    assert ENOCH.vkey() == ENOCH_VKEY
    signer = parse_signer_key(PETER_SKEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_id == 0xC74F20A3
    assert signer.skey() == PETER_SKEY
    assert signer.verifier().vkey() == PETER_VKEY
    assert key_id("PeterNeumann", PETER.public_key) == 0xC74F20A3
    assert key_id("PeterNeumann", PETER.public_bytes()) == 0xC74F20A3


def test_verifier_key_manglings_rejected() -> None:
    # NewVerifier test: every proper substring and every single-byte increment fails.
    vkey = PETER_VKEY
    for i in range(len(vkey) + 1):
        for j in range(i + 1, len(vkey) + 1):
            if (i, j) != (0, len(vkey)):
                with pytest.raises(NoteError):
                    parse_verifier_key(vkey[i:j])
    for i in range(len(vkey)):
        with pytest.raises(NoteError):
            parse_verifier_key(vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :])


@pytest.mark.parametrize(
    "vkey",
    [
        # Wrong key length, with adjusted key hash (golang.org/x/mod note_test.go).
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        # Unknown algorithm, with adjusted key hash.
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        # Upper-case hex key ID.
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        # Key name with a space.
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "",
        "PeterNeumann",
        "PeterNeumann+c74f20a3+",
    ],
)
def test_bad_verifier_keys(vkey: str) -> None:
    with pytest.raises(NoteError):
        parse_verifier_key(vkey)


def test_signer_key_manglings_rejected() -> None:
    skey = PETER_SKEY
    for i in range(len(skey) + 1):
        for j in range(i + 1, len(skey) + 1):
            if (i, j) != (0, len(skey)):
                with pytest.raises(NoteError):
                    parse_signer_key(skey[i:j])
    for i in range(len(skey)):
        with pytest.raises(NoteError):
            parse_signer_key(skey[:i] + chr(ord(skey[i]) + 1) + skey[i + 1 :])


def test_generated_keys_round_trip() -> None:
    skey, vkey = generate_signer_key("vault.example/ledger")
    signer = parse_signer_key(skey)
    verifier = parse_verifier_key(vkey)
    assert signer.verifier() == verifier
    assert signer.skey() == skey
    assert format_signer_key(signer.name, signer.private_key) == skey
    assert format_verifier_key(verifier.name, verifier.public_key) == vkey
    assert Signer.from_private_key(signer.name, signer.private_key) == signer
    assert Verifier.from_public_key(verifier.name, verifier.public_key) == verifier
    assert len({verifier, parse_verifier_key(vkey), PETER}) == 2
    assert "private_key" not in repr(signer)
    sig = signer.sign(b"hi")
    assert verifier.verify(b"hi", sig)
    assert not verifier.verify(b"hi", bytes([sig[0] ^ 1]) + sig[1:])
    assert not verifier.verify(b"ho", sig)
    assert not verifier.verify(b"hi", sig[:-1])


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("PeterNeumann", True),
        ("example.com/log42", True),
        ("caf\u00e9", True),
        ("", False),
        ("a+b", False),
        ("a b", False),
        ("a\tb", False),
        ("a\u00a0b", False),  # no-break space
        ("a\u2003b", False),  # em space
        ("a\u3000b", False),  # ideographic space
        ("a\u0085b", False),  # next line
        ("a\x01b", False),
        ("a\ud800b", False),  # lone surrogate: not UTF-8
    ],
)
def test_key_name_rules(name: str, valid: bool) -> None:
    assert is_valid_key_name(name) is valid
    if not valid:
        with pytest.raises(NoteError):
            key_id(name, PETER.public_key)


# --------------------------------------------------------------------------- signing


def test_sign_known_answer() -> None:
    signer = parse_signer_key(PETER_SKEY)
    assert sign_note(TEXT, "PeterNeumann", signer.private_key) == TEXT + "\n" + PETER_SIG


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("abc", "PeterNeumann"),  # no final newline
        ("a\x00b\n", "PeterNeumann"),
        ("a\rb\n", "PeterNeumann"),
        ("a\ud800\n", "PeterNeumann"),
        (TEXT, "bad name"),
        (TEXT, "a+b"),
        (TEXT, ""),
    ],
)
def test_sign_rejects_bad_input(text: str, name: str) -> None:
    with pytest.raises(NoteError):
        sign_note(text, name, parse_signer_key(PETER_SKEY).private_key)


# --------------------------------------------------------------------------- opening


def test_open_known_answer() -> None:
    msg = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(msg, [PETER]) == TEXT
    assert open_note(msg, [ENOCH]) == TEXT
    assert open_note(msg, [PETER, ENOCH]) == TEXT
    assert open_note(msg.encode("utf-8"), [PETER]) == TEXT
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(msg, [])


def test_parse_note_structure() -> None:
    parsed = parse_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG)
    assert parsed.text == TEXT
    assert [(s.name, s.key_id) for s in parsed.signatures] == [
        ("PeterNeumann", 0xC74F20A3),
        ("EnochRoot", 0xAF0CFE78),
    ]
    assert all(len(s.signature) == 64 for s in parsed.signatures)
    assert "".join(s.line() for s in parsed.signatures) == PETER_SIG + ENOCH_SIG


def test_c2sp_spec_examples_parse() -> None:
    parsed = parse_note(C2SP_NOTE)
    # The text keeps its inner blank line: the last blank line is the separator.
    assert parsed.text.endswith("subito sera.\n")
    assert "\n\n" in parsed.text
    assert [s.name for s in parsed.signatures] == ["quasimodo.example/salvatore"]
    with pytest.raises(NoteError):
        open_note(C2SP_NOTE, [PETER])

    cp_note = parse_note(C2SP_CHECKPOINT)
    cp = parse_checkpoint(cp_note.text)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert base64.b64encode(cp.root_hash) == b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    assert cp.extensions == ()
    assert cp.to_text() == cp_note.text


def test_invalid_signature_from_known_key_rejects_note() -> None:
    # golang.org/x/mod inserts "ABCD" at byte 60 of the signature line; the em dash is three
    # bytes in UTF-8 and one character here, hence 58.
    bad = mangle(PETER_SIG, 58, "ABCD")
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        open_note(TEXT + "\n" + bad, [PETER])
    # A good signature from another known key does not rescue it.
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(TEXT + "\n" + ENOCH_SIG + bad, [PETER, ENOCH])
    # But an unknown key's bad signature is ignored.
    enoch_bad = mangle(ENOCH_SIG, 55, "ABCD")
    assert open_note(TEXT + "\n" + PETER_SIG + enoch_bad, [PETER]) == TEXT


def test_duplicate_signatures_accepted() -> None:
    msg = TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG
    assert open_note(msg, [PETER]) == TEXT


@pytest.mark.parametrize(
    "msg",
    [
        # The badMsgs list of golang.org/x/mod note_test.go TestOpen.
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZ"
        "SNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        # More malformations.
        TEXT + "\n" + PETER_SIG.replace("\u2014", "-"),
        TEXT + "\n" + PETER_SIG.replace("\u2014 ", "\u2014"),
        TEXT + "\n" + PETER_SIG.replace("\u2014 ", "\u2014  "),
        TEXT + "\n" + PETER_SIG.replace("=\n", "\n"),  # unpadded base64
        TEXT + "\n" + PETER_SIG.replace("=\n", "=\r\n"),
        TEXT + "\n" + PETER_SIG.replace("=\n", "= \n"),
        TEXT + "\n" + PETER_SIG.replace("/", "_"),  # URL-safe alphabet
        TEXT + "\n" + PETER_SIG + "\n",  # blank line after the signatures
        TEXT + "\n" + PETER_SIG + "\n" + PETER_SIG,
        TEXT + "\n" + "\u2014 PeterNeumann \n",
        TEXT + "\n" + "\u2014 PeterNeumann AAAAAA==\n",  # key ID but no signature
        TEXT + "\n" + "\u2014  x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuG=\n",
        "\n" + PETER_SIG,
        "",
        TEXT.replace("\n", "\t", 1) + "\n" + PETER_SIG,
        TEXT + "\n" + PETER_SIG * (note_mod.MAX_SIGNATURES + 1),
    ],
)
def test_malformed_notes_rejected(msg: str) -> None:
    with pytest.raises(NoteError):
        open_note(msg, [PETER])


def test_invalid_utf8_rejected() -> None:
    with pytest.raises(NoteError, match="UTF-8"):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode("utf-8"), [PETER])
    with pytest.raises(NoteError, match="UTF-8"):
        open_note("\ud800" + TEXT + "\n" + PETER_SIG, [PETER])


def test_non_canonical_base64_rejected() -> None:
    # 68 bytes encode to 91 characters plus one "=": the last character carries two unused
    # bits, which must be zero.
    line = PETER_SIG.rstrip("\n")
    assert line.endswith("M=")
    padded_bits_set = line[:-2] + "N="
    with pytest.raises(NoteError, match="canonical"):
        open_note(TEXT + "\n" + padded_bits_set + "\n", [PETER])


def test_wrong_key_rejected() -> None:
    other = Ed25519PrivateKey.generate()
    # Same name, different key: different key ID, so the signature is from an unknown key.
    impostor = Verifier.from_public_key("PeterNeumann", other.public_key())
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(TEXT + "\n" + PETER_SIG, [impostor])
    # Same name and key ID but a different key: the signature must fail.
    colliding = Verifier("PeterNeumann", 0xC74F20A3, other.public_key())
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(TEXT + "\n" + PETER_SIG, [colliding])
    # Two different keys under one name and ID are ambiguous.
    with pytest.raises(NoteError, match="ambiguous"):
        open_note(TEXT + "\n" + PETER_SIG, [PETER, colliding])
    # The same key listed twice is fine.
    assert open_note(TEXT + "\n" + PETER_SIG, [PETER, PETER]) == TEXT


@pytest.mark.parametrize(
    "text",
    [
        "hello\n",
        "\n",
        "with\n\nblank lines\n\n",
        "trailing blank line\n\n",
        "unicode \u2014 caf\u00e9 \u2603\n",
    ],
)
def test_round_trip(text: str) -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign_note(text, "vault.example/ledger", key)
    verifier = Verifier.from_public_key("vault.example/ledger", key.public_key())
    assert open_note(signed, [verifier]) == text
    # Any change to the text breaks the signature.
    tampered = "X" + signed
    with pytest.raises(NoteError):
        open_note(tampered, [verifier])


def test_cosigned_note() -> None:
    # A second signature line from another key (e.g. a witness) keeps both verifiable.
    log_key = Ed25519PrivateKey.generate()
    witness_key = Ed25519PrivateKey.generate()
    text = "vault.example/ledger\n1\n" + base64.b64encode(b"\x00" * 32).decode() + "\n"
    signed = sign_note(text, "vault.example/ledger", log_key)
    witness = Signer.from_private_key("witness.example", witness_key)
    cosig = NoteSignature("witness.example", witness.key_id, witness.sign(text.encode()))
    cosigned = signed + cosig.line()
    assert open_note(cosigned, [witness.verifier()]) == text
    log_verifier = Verifier.from_public_key("vault.example/ledger", log_key.public_key())
    assert open_note(cosigned, [log_verifier, witness.verifier()]) == text


# --------------------------------------------------------------------------- checkpoints


ROOT = bytes(range(32))
ROOT64 = base64.b64encode(ROOT).decode()


def test_checkpoint_round_trip() -> None:
    cp = Checkpoint("vault.example/ledger", 42, ROOT, ("ext one", "ext two"))
    text = cp.to_text()
    assert text == f"vault.example/ledger\n42\n{ROOT64}\next one\next two\n"
    assert parse_checkpoint(text) == cp
    assert parse_checkpoint("o\n0\n" + ROOT64 + "\n") == Checkpoint("o", 0, ROOT)
    assert parse_checkpoint(f"o\n{2**64 - 1}\n{ROOT64}\n").size == 2**64 - 1


@pytest.mark.parametrize(
    "text",
    [
        f"o\n1\n{ROOT64}",  # no final newline
        "o\n1\n",
        "o\n",
        "",
        f"\n1\n{ROOT64}\n",  # empty origin
        f"o\n01\n{ROOT64}\n",
        f"o\n00\n{ROOT64}\n",
        f"o\n+1\n{ROOT64}\n",
        f"o\n-1\n{ROOT64}\n",
        f"o\n 1\n{ROOT64}\n",
        f"o\n1 \n{ROOT64}\n",
        f"o\n1_000\n{ROOT64}\n",
        f"o\n0x10\n{ROOT64}\n",
        f"o\n\u0661\n{ROOT64}\n",  # ARABIC-INDIC DIGIT ONE
        f"o\n\n{ROOT64}\n",
        f"o\n{2**64}\n{ROOT64}\n",
        "o\n1\n" + base64.b64encode(ROOT[:31]).decode() + "\n",
        "o\n1\n" + base64.b64encode(ROOT + b"\x00").decode() + "\n",
        "o\n1\n" + ROOT64.rstrip("=") + "\n",
        "o\n1\n" + base64.urlsafe_b64encode(b"\xff" * 32).decode() + "\n",
        "o\n1\n" + ROOT64[:-2] + "F=\n",  # non-zero padding bits
        "o\n1\n\n",
        f"o\n1\n{ROOT64}\n\n",  # empty extension line
        f"o\n1\n{ROOT64}\next\n\n",
        f"o\x01\n1\n{ROOT64}\n",
        f"o\n1\n{ROOT64}\r\n",
    ],
)
def test_bad_checkpoints_rejected(text: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint(text)


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("", 1, ROOT, ()),
        ("a\nb", 1, ROOT, ()),
        ("o", -1, ROOT, ()),
        ("o", 2**64, ROOT, ()),
        ("o", True, ROOT, ()),
        ("o", 1, ROOT[:31], ()),
        ("o", 1, ROOT, ("",)),
        ("o", 1, ROOT, ("a\nb",)),
    ],
)
def test_checkpoint_constructor_validates(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(NoteError):
        Checkpoint(origin, size, root, extensions)


def test_signed_checkpoint_over_merkle_root() -> None:
    leaves = [bytes(32 * [i]) for i in range(5)]
    cp = Checkpoint("vault.example/ledger", 5, root_from_leaf_hashes(leaves))
    key = Ed25519PrivateKey.generate()
    signed = sign_checkpoint(cp, "vault.example/ledger", key)
    verifier = Verifier.from_public_key("vault.example/ledger", key.public_key())
    assert open_checkpoint(signed, [verifier]) == cp
    assert open_checkpoint(signed, [verifier], origin="vault.example/ledger") == cp
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(signed, [verifier], origin="other.example/log")
    with pytest.raises(NoteError):
        open_checkpoint(signed.replace("\n5\n", "\n6\n"), [verifier])


def test_module_exports_exist() -> None:
    for name in note_mod.__all__:
        assert hasattr(note_mod, name), name
