"""Signed manifests (issue 13): known answers for the encoding and the signature, so the
format can't drift unnoticed, and a refusal for every way a manifest can be wrong."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from vault import crypto
from vault import manifest as m
from vault.errors import IntegrityError, InvalidInput
from vault.seizures.digest import canonical_records, records_sha256
from vault.seizures.schema import validate_records

SEED = bytes(range(32))
# One record as an officer types it (Russian names, a local date, a decimal comma), its
# canonical encoding once validated, and the digest the KAT manifest states.
KAT_RECORD_INPUT = {
    "date": "01.05.2024 14:30",
    "crossing_point": "oybek",
    "direction": "въезд",
    "commodity": "героин",
    "quantity": "1 234,5",
    "unit": "г",
    "concealment": "fuel tank",
    "transport": "truck",
    "detained": "2",
}
KAT_RECORDS_CANONICAL = (
    b"blo-vault seizure records v1\x00"
    b'[["2024-05-01T14:30:00","OYBEK","entry","heroin",1234.5,"g","fuel tank","truck",2]]'
)
KAT_RECORDS_SHA256 = "cef2a547df54f5c227fb3ad25a414ae628ad3de4aaf989bcca25e297d635423d"
EMPTY_RECORDS_SHA256 = "34f08a9b3979e003711287f850fb92bef644e484bde6fb846824afed920f91ea"
KAT_MANIFEST = m.Manifest(
    package_id="0123456789abcdef0123456789abcdef",
    agency="UZ-CUSTOMS",
    classification="RESTRICTED",
    handling="H1",
    handling_note="",
    title_sha256=m.sha256_text("Oybek seizure"),
    description_sha256=m.sha256_text(""),
    records_sha256=KAT_RECORDS_SHA256,
    files=(
        m.ManifestFile("report.pdf", 3, "ab" * 32),
        m.ManifestFile("фото.jpg", 0, m.sha256_text("")),
    ),
)
KAT_BYTES = bytes.fromhex(
    "626c6f2d7661756c74206d616e6966657374207632000000002030313233343536373839616263646566"
    "303132333435363738396162636465660000000a555a2d435553544f4d530000000a5245535452494354"
    "454400000002483100000000000000406264666635356266383733333361353632633132633931346531"
    "643463663466356163613762626138663562373235323931646663366637326336663362656500000040"
    "653362306334343239386663316331343961666266346338393936666239323432376165343165343634"
    "396239333463613439353939316237383532623835350000004063656632613534376466353466356332"
    "323766623361643235613431346165363238616433646534616166393839626363613235653239376436"
    "333534323364000000020000000a7265706f72742e706466000000000000000300000040616261626162"
    "616261626162616261626162616261626162616261626162616261626162616261626162616261626162"
    "616261626162616261626162616261620000000cd184d0bed182d0be2e6a706700000000000000000000"
    "004065336230633434323938666331633134396166626634633839393666623932343237616534316534"
    "363439623933346361343935393931623738353262383535"
)
KAT_SIGNATURE = bytes.fromhex(
    "1a01caf05c994d06349582ca5153493d7adb66c9985610a92be4a3a3f972b49f"
    "877533149f1ea04e294d2491aaa1ca5f3846323dce20fd2bb2e57a99473ed20c"
)
KAT_PUBLIC = bytes.fromhex("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
KAT_KEY_ID = "4312c0d20d7a718be6930f0246c98561"


def test_encoding_known_answer() -> None:
    assert KAT_MANIFEST.encode() == KAT_BYTES
    assert m.decode(KAT_BYTES) == KAT_MANIFEST


def test_records_digest_known_answer() -> None:
    records = validate_records([KAT_RECORD_INPUT])
    assert canonical_records(records) == KAT_RECORDS_CANONICAL
    assert records_sha256(records) == KAT_RECORDS_SHA256
    # What the server returns (the validated record as JSON) hashes the same once re-validated.
    again = validate_records([records[0].model_dump(mode="json")])
    assert records_sha256(again) == KAT_RECORDS_SHA256
    assert records_sha256([]) == EMPTY_RECORDS_SHA256
    assert records_sha256(validate_records([{**KAT_RECORD_INPUT, "detained": "3"}])) != (
        KAT_RECORDS_SHA256
    )


def test_signature_known_answer() -> None:
    key = crypto.ed25519_from_seed(SEED)
    assert crypto.ed25519_public_bytes(key.public_key()) == KAT_PUBLIC
    assert m.key_id(KAT_PUBLIC) == KAT_KEY_ID
    assert m.sign(key, KAT_MANIFEST) == KAT_SIGNATURE
    m.check_signature(KAT_PUBLIC, KAT_BYTES, KAT_SIGNATURE)


@pytest.mark.parametrize("flip", [0, 10, 63])
def test_a_changed_signature_is_refused(flip: int) -> None:
    bad = bytearray(KAT_SIGNATURE)
    bad[flip] ^= 1
    with pytest.raises(IntegrityError):
        m.check_signature(KAT_PUBLIC, KAT_BYTES, bytes(bad))


def test_a_truncated_signature_is_refused() -> None:
    with pytest.raises(IntegrityError):
        m.check_signature(KAT_PUBLIC, KAT_BYTES, KAT_SIGNATURE[:63])
    with pytest.raises(InvalidInput, match="64 bytes"):
        m.decode_signature(base64.b64encode(KAT_SIGNATURE[:63]).decode())
    with pytest.raises(InvalidInput, match="base64"):
        m.decode_signature("not base64!")
    assert m.decode_signature(base64.b64encode(KAT_SIGNATURE).decode()) == KAT_SIGNATURE


def test_another_key_or_changed_bytes_fail() -> None:
    other = crypto.ed25519_public_bytes(crypto.new_ed25519_private_key().public_key())
    with pytest.raises(IntegrityError):
        m.check_signature(other, KAT_BYTES, KAT_SIGNATURE)
    with pytest.raises(IntegrityError):
        m.check_signature(KAT_PUBLIC, KAT_BYTES + b"\x00", KAT_SIGNATURE)
    with pytest.raises(IntegrityError):
        m.check_signature(b"short", KAT_BYTES, KAT_SIGNATURE)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"blo-vault manifest v2\x00",
        KAT_BYTES.replace(b"manifest v2", b"manifest v1"),
        KAT_BYTES[:-1],
        KAT_BYTES + b"\x00",
        KAT_BYTES[: len(m.DOMAIN) + 3],
    ],
)
def test_malformed_manifests_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        m.decode(data)


def test_every_field_is_covered() -> None:
    # A change to any one field changes the bytes, so the signature no longer verifies.
    for name in (
        "package_id",
        "agency",
        "classification",
        "handling",
        "handling_note",
        "records_sha256",
    ):
        changed = dataclasses.replace(KAT_MANIFEST, **{name: "x"})  # type: ignore[arg-type]
        with pytest.raises(IntegrityError):
            m.check_signature(KAT_PUBLIC, changed.encode(), KAT_SIGNATURE)


def _files(*items: m.ManifestFile) -> m.Manifest:
    return dataclasses.replace(KAT_MANIFEST, files=items)


def test_check_matches_names_the_difference() -> None:
    a, b = KAT_MANIFEST.files
    m.check_matches(KAT_MANIFEST, KAT_MANIFEST)
    cases = [
        (dataclasses.replace(KAT_MANIFEST, package_id="f" * 32), "another package id"),
        (dataclasses.replace(KAT_MANIFEST, agency="KZ-BGS"), "originating agency"),
        (dataclasses.replace(KAT_MANIFEST, title_sha256="0" * 64), "title"),
        (dataclasses.replace(KAT_MANIFEST, records_sha256="0" * 64), "seizure records"),
        (_files(b, a), "position 2"),
        (_files(a), "lists 2 files; 1 were sent"),
        (_files(a, b, m.ManifestFile("extra.txt", 1, "00" * 32)), "file 3 is not in"),
        (_files(a, m.ManifestFile(b.name, 1, b.sha256)), "file 2 does not match"),
        (_files(m.ManifestFile(a.name, a.size, "cd" * 32), b), "file 1 does not match"),
    ]
    for actual, message in cases:
        with pytest.raises(InvalidInput, match=message):
            m.check_matches(KAT_MANIFEST, actual)


def test_officer_key_pem_round_trip_with_and_without_passphrase() -> None:
    key = crypto.ed25519_from_seed(SEED)
    for passphrase in (None, b"correct horse"):
        pem = crypto.officer_key_pem(key, passphrase)
        assert (b"ENCRYPTED" in pem) == (passphrase is not None)
        loaded = crypto.load_officer_key_pem(pem, passphrase)
        assert crypto.ed25519_seed(loaded) == SEED
    from vault.errors import ConfigError

    with pytest.raises(ConfigError, match="passphrase"):
        crypto.load_officer_key_pem(crypto.officer_key_pem(key, b"right"), b"wrong")
