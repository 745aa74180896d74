"""Version 2 ledger entries (vault.ledger.commit): known answers, strict decoding, openings."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vault.errors import LedgerCorrupt
from vault.ledger import commit, merkle, note
from vault.ledger.entry import Entry, decode, leaf_hash, opened
from vault.ledger.log import Actor, Record
from vault.ledger.log import _encode as log_encode
from vault.ledger.verify import verify_export

SALTS = bytes(range(144))
PUBLIC = {"action": "download", "decision": "allow", "policy": "p" * 8}
SENSITIVE = {
    "actor_user": "kz.officer",
    "actor_agency": "KZ-CUSTOMS",
    "actor_country": "KZ",
    "package": "a" * 32,
    "handling": "H2",
    "reason": "ok",
}
PREV = "f" * 64
TIME = 1_700_000_000_000_000


def s(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">I", len(raw)) + raw


def test_commitment_known_answer() -> None:
    # Written out from the definition: tag, name, NUL, u64 seq, salt, value.
    expected = hashlib.sha256(
        b"blo-vault/ledger/commit/v2\x00actor_user\x00"
        + (7).to_bytes(8, "big")
        + SALTS[:16]
        + b"kz.officer"
    ).hexdigest()
    assert expected == "a2cce32bc9b619ca8c79caa7cc0765bb4270b6dd5828fb16c50863efd29a95c1"
    assert commit.commitment(7, "actor_user", SALTS[:16], "kz.officer").hex() == expected


def test_committed_entry_known_answer() -> None:
    data, opening = commit.encode(7, TIME, PUBLIC, SENSITIVE, PREV, salts=SALTS)
    layout = [struct.pack(">BQQB", 2, 7, TIME, 0), s("download"), s("allow"), s("p" * 8)]
    digests = b"".join(
        commit.commitment(7, name, SALTS[16 * i : 16 * (i + 1)], SENSITIVE.get(name, ""))
        for i, name in enumerate(commit.SENSITIVE)
    )
    layout.append(
        hashlib.sha256(
            b"blo-vault/ledger/fields/v2\x00" + (7).to_bytes(8, "big") + digests
        ).digest()
    )
    layout.append(s(PREV))
    assert data == b"".join(layout)
    assert hashlib.sha256(data).hexdigest() == (
        "0117b57c5f3f443ec64b60b20593d3bb80521f6c5ba130c976088848315c4814"
    )
    assert len(data) == 151
    assert opening is not None
    assert opening.fields()["actor_agency"] == "KZ-CUSTOMS"
    # Nothing sensitive is in the bytes.
    for value in SENSITIVE.values():
        assert value.encode() not in data


def test_public_action_known_answer() -> None:
    data, opening = commit.encode(
        3, 5, {"action": "key.register", "decision": "allow", "policy": "p"},
        {"actor_user": "u", "subject": "key:abc"}, "0" * 64,
    )  # fmt: skip
    assert opening is None
    assert hashlib.sha256(data).hexdigest() == (
        "10e40ae52a73bdb688a903ceea9247bc51b49868531e25fc805d8160b6588827"
    )
    entry = decode(data)
    assert (entry.version, entry.hidden, entry.actor_user, entry.subject) == (
        2, False, "u", "key:abc",
    )  # fmt: skip


@pytest.mark.parametrize("action", ["download", "stats.read", "crossing.open", "ledger", "keyx"])
def test_unknown_and_ordinary_actions_are_committed(action: str) -> None:
    assert not commit.is_public_action(action)


@pytest.mark.parametrize("action", ["key.register", "key.revoke", "witness", "checkpoint"])
def test_public_actions(action: str) -> None:
    assert commit.is_public_action(action)


def test_decode_hides_and_opening_reveals() -> None:
    data, opening = commit.encode(7, TIME, PUBLIC, SENSITIVE, PREV, salts=SALTS)
    assert opening is not None
    entry = decode(data)
    assert entry.hidden
    assert entry.version == 2
    assert (entry.seq, entry.action, entry.decision, entry.prev) == (7, "download", "allow", PREV)
    assert entry.actor_user == ""
    assert entry.package == ""
    full = opened(data, opening)
    assert isinstance(full, Entry)
    assert not full.hidden
    assert (full.actor_user, full.package, full.handling) == ("kz.officer", "a" * 32, "H2")
    assert commit.Opening.from_bytes(opening.to_bytes()) == opening
    # The bytes encode() packed as it went are the canonical ones.
    assert opening.packed == commit.Opening(opening.seq, opening.salts, opening.values).to_bytes()


def test_strict_decoding() -> None:
    data, _ = commit.encode(7, TIME, PUBLIC, SENSITIVE, PREV, salts=SALTS)
    decode(data)
    for bad in (data + b"\x00", data[:-1], data[:17], data[:17] + b"\x02" + data[18:]):
        with pytest.raises(LedgerCorrupt):
            decode(bad)


def test_openings_are_bound_to_field_entry_and_value() -> None:
    data, opening = commit.encode(7, TIME, PUBLIC, SENSITIVE, PREV, salts=SALTS)
    other, other_opening = commit.encode(8, TIME, PUBLIC, SENSITIVE, PREV, salts=SALTS)
    assert opening is not None
    assert other_opening is not None
    # Same values, same salts, another entry: the digests differ (seq is inside).
    assert decode(data).commitments != decode(other).commitments
    with pytest.raises(commit.OpeningError):
        commit.verify_opening(other, opening)  # swapped between entries
    moved = commit.Opening(8, opening.salts, opening.values)
    with pytest.raises(commit.OpeningError):
        commit.verify_opening(other, commit.Opening(8, opening.salts[::-1], opening.values))
    commit.verify_opening(other, moved)  # same salts and values, right seq: fine
    values = list(opening.values)
    values[0], values[1] = values[1], values[0]  # given for another field
    with pytest.raises(commit.OpeningError):
        commit.verify_opening(data, commit.Opening(7, opening.salts, tuple(values)))
    values = list(opening.values)
    values[3] = "b" * 32  # altered
    with pytest.raises(commit.OpeningError):
        commit.verify_opening(data, commit.Opening(7, opening.salts, tuple(values)))


def test_salts_are_fresh() -> None:
    a, _ = commit.encode(7, TIME, PUBLIC, SENSITIVE, PREV)
    b, _ = commit.encode(7, TIME, PUBLIC, SENSITIVE, PREV)
    assert a != b


def test_v2_entries_verify_in_a_chain_with_v1() -> None:
    """A ledger that switches version mid-way verifies offline like any other."""
    datas: list[bytes] = []
    prev = "0" * 64
    for seq in range(6):
        if seq < 3:
            data = Entry(
                seq, TIME, "u", "A", "UZ", "upload", "a" * 32, "", "", "", "allow", "ok", "H1",
                "p", prev,
            ).encode()  # fmt: skip
        else:
            data, _ = commit.encode(seq, TIME, PUBLIC, SENSITIVE, prev)
        datas.append(data)
        prev = leaf_hash(data).hex()
    document = export_of(datas)
    result = verify_export(document, VKEY)
    assert result.ok, result.problem


ORIGIN = "test.example/ledger"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))
VKEY = note.Verifier.from_public_key(ORIGIN, KEY.public_key()).vkey()


def export_of(datas: list[bytes], openings: Sequence[object] | None = None) -> dict[str, object]:
    """A signed export document of ``datas`` (and openings: a scoped export)."""
    root = merkle.root_from_leaf_hashes([leaf_hash(d) for d in datas])
    body = note.Checkpoint(origin=ORIGIN, size=len(datas), root_hash=root)
    document: dict[str, object] = {
        "origin": ORIGIN,
        "vkey": VKEY,
        "checkpoint": note.sign_checkpoint(body, ORIGIN, KEY),
        "entries": [base64.b64encode(d).decode() for d in datas],
    }
    if openings is not None:
        document["openings"] = list(openings)
    return document


def committed_chain(n: int) -> tuple[list[bytes], list[commit.Opening]]:
    datas, openings, prev = [], [], "0" * 64
    for seq in range(n):
        values = {**SENSITIVE, "package": hashlib.md5(bytes([seq])).hexdigest()}
        data, opening = commit.encode(seq, TIME, PUBLIC, values, prev)
        assert opening is not None
        datas.append(data)
        openings.append(opening)
        prev = leaf_hash(data).hex()
    return datas, openings


def test_scoped_export_verifies_and_fails_on_any_tampering() -> None:
    datas, openings = committed_chain(4)
    good = [o.to_json() for o in openings[1:3]]
    assert verify_export(export_of(datas, good), VKEY).ok
    # Altered value.
    altered = [o.to_json() for o in openings[1:3]]
    altered[0]["fields"]["package"][1] = "e" * 32  # type: ignore[index]
    # Swapped between entries: entry 1's opening given as entry 2's.
    swapped = [{**openings[1].to_json(), "seq": 2}]
    # Given for another field: two fields' salt and value pairs exchanged.
    moved = openings[1].to_json()
    fields = moved["fields"]
    fields["package"], fields["handling"] = fields["handling"], fields["package"]  # type: ignore[index]
    # Altered salt.
    salted = openings[1].to_json()
    salted["fields"]["reason"][0] = base64.b64encode(b"\x01" * 16).decode()  # type: ignore[index]
    for bad, seq in ((altered, 1), (swapped, 2), ([moved], 1), ([salted], 1)):
        result = verify_export(export_of(datas, bad), VKEY)
        assert (result.ok, result.first_bad_seq) == (False, seq), result
    for bad_doc in ([{"seq": 9, "fields": {}}], "x", [good[0], good[0]]):
        assert not verify_export(export_of(datas, bad_doc), VKEY).ok


def test_dictionary_attack_finds_nothing() -> None:
    """Knowing every value and the public entries, no commitment is matched without the salt:
    try every candidate with a zero salt, with the seq-free hash, and the bare hash."""
    datas, openings = committed_chain(8)
    candidates = {v for o in openings for v in o.values} | {"UZ", "KZ", "TJ", "uz.officer"}
    digests = {c for d in datas for _, c in decode(d).commitments}
    assert len(digests) == 8
    # The attacker knows each entry's true values (even which field holds which) but not the
    # salts: guessed salts give other digests.
    for seq, opening in enumerate(openings):
        for guess in (bytes(16), b"\xff" * 16):
            fields = [
                commit.commitment(seq, name, guess, value)
                for name, value in zip(commit.SENSITIVE, opening.values, strict=True)
            ]
            assert commit.fields_digest(seq, fields) not in digests
    for value in candidates:
        assert hashlib.sha256(value.encode()).digest() not in digests
    # And no value appears in the bytes (two-letter codes may occur by chance in random hashes).
    for data in datas:
        assert not any(v.encode() in data for v in candidates if len(v) >= 6)


def test_the_log_commits_each_record_field_under_its_own_name() -> None:
    """The log hands commit.encode_values a tuple in SENSITIVE order: a field out of place would
    commit (and scope, and open) one value under another's name."""
    record = Record(
        actor=Actor("the-user", "the-agency", "CC"), action="download", decision="allow",
        reason="the-reason", policy="the-policy", package="the-package", file="the-file",
        release="the-release", subject="the-subject", handling="the-handling",
    )  # fmt: skip
    data, opening = log_encode(record, 3, TIME, PREV, sink=lambda *_: {})
    assert opening is not None
    expected = {
        "actor_user": "the-user", "actor_agency": "the-agency", "actor_country": "CC",
        "package": "the-package", "file": "the-file", "release": "the-release",
        "subject": "the-subject", "reason": "the-reason", "handling": "the-handling",
    }  # fmt: skip
    assert commit.verify_opening(data, opening) == expected
    assert decode(data).policy == "the-policy"
