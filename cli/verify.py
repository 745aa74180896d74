"""The recipient's check of an originator-signed package, trusting nothing the server says
(issue 13).

Three links, each checked here with the vault's ledger key (``vkey``, obtained out of band)
as the only thing trusted:

1. the signer's key was registered in the ledger: its ``key.register`` entry (owner, agency,
   key id, public key) is proved by an inclusion proof up to a checkpoint signed by ``vkey``;
2. the manifest's signature verifies with that key;
3. the files received (names, sizes and SHA-256 computed here), the package's fields and its
   seizure records (as the package's details return them, validated and hashed here) match
   the signed manifest.

The bundle :func:`bundle` makes (``package download --manifest FILE``) holds the signature,
the key's proof and the records, so that ``package verify`` can redo all of it later, offline.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from pathlib import Path
from typing import Any

from vault import manifest
from vault.errors import IntegrityError, InvalidInput, LedgerCorrupt
from vault.ledger import merkle, note
from vault.ledger.entry import Entry, decode
from vault.seizures.digest import records_sha256
from vault.seizures.schema import validate_records
from vault.witness.policy import Policy, WitnessedCheckpoint
from vault.witness.proof import verify_tlog_proof

__all__ = [
    "bundle",
    "check_files_on_disk",
    "check_inclusion",
    "check_key_proof",
    "check_package",
    "check_signed",
    "check_witnessed_key",
    "records_digest",
]


def _b64(text: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{what} is not valid base64") from None


def check_inclusion(proof: dict[str, Any], vkey: str) -> Entry:
    """The ledger entry ``proof`` proves, up to a checkpoint ``vkey`` signed; IntegrityError
    unless the proof holds (InvalidInput for a malformed ``vkey``)."""
    try:
        verifier = note.parse_verifier_key(vkey)
    except note.NoteError as exc:
        raise InvalidInput(f"--vkey is not a verifier key: {exc}") from None
    try:
        checkpoint = note.open_checkpoint(str(proof["checkpoint"]), [verifier])
        data = _b64(proof["entry"], "ledger entry")
        hashes = [_b64(h, "proof hash") for h in proof["hashes"]]
        merkle.verify_inclusion(
            merkle.leaf_hash(data),
            int(proof["leaf_index"]),
            checkpoint.size,
            hashes,
            checkpoint.root_hash,
        )
        entry = decode(data)
    except (note.NoteError, merkle.ProofError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"the ledger entry is not proved: {exc}") from None
    if entry.seq != int(proof["leaf_index"]):
        raise IntegrityError("the ledger entry proved is not at the position claimed")
    return entry


def check_key_proof(signature: dict[str, Any], proof: dict[str, Any], vkey: str) -> None:
    """IntegrityError unless ``proof`` proves, up to a checkpoint ``vkey`` signed, the
    ledger entry registering ``signature``'s key for its signer and agency."""
    entry = check_inclusion(proof, vkey)
    expected = f"ed25519 {signature['key_id']} {signature['public_key']} {signature['agency']}"
    if (entry.action, entry.decision, entry.subject, entry.reason) != (
        "key.register",
        "allow",
        signature["signer"],
        expected,
    ) or entry.seq != int(signature["registered_seq"]):
        raise IntegrityError("the ledger entry proved is not this key's registration")


def check_witnessed_key(
    signature: dict[str, Any], proof: dict[str, Any], bundle: object, policy: Policy
) -> WitnessedCheckpoint:
    """IntegrityError unless ``bundle`` (C2SP tlog-proof) proves the key's registration entry
    (``proof``'s entry, which :func:`check_key_proof` matched to the key) at its position in a
    checkpoint that meets ``policy``: cosigned by a quorum of the witnesses it names."""
    if not isinstance(bundle, str):
        raise IntegrityError(
            "the signer's key registration is not yet in a witnessed checkpoint (the witnesses "
            "have not cosigned it); try again later, or check without --policy"
        )
    entry = _b64(proof.get("entry"), "ledger entry")
    try:
        parsed, witnessed = verify_tlog_proof(bundle, entry, policy, now=int(time.time()))
    except (InvalidInput, LedgerCorrupt) as exc:
        raise IntegrityError(
            f"the key's registration is not proved up to a witnessed checkpoint: {exc.message}"
        ) from None
    if parsed.index != int(signature["registered_seq"]):
        raise IntegrityError("the witnessed proof is not of this key's registration entry")
    return witnessed


def check_signed(signature: dict[str, Any]) -> manifest.Manifest:
    """The signed manifest, once its signature verified with the key named (IntegrityError)."""
    public = _b64(signature["public_key"], "public key")
    if manifest.key_id(public) != signature["key_id"]:
        raise IntegrityError("the signer's key does not match its key id")
    raw = _b64(signature["manifest"], "manifest")
    manifest.check_signature(public, raw, _b64(signature["signature"], "signature"))
    try:
        return manifest.decode(raw)
    except InvalidInput as exc:
        raise IntegrityError(f"signed manifest: {exc.message}") from None


def records_digest(records: object) -> str:
    """The digest of seizure records as a package's details return them; IntegrityError if
    they are not a list of valid records (the server, not the signer, sent those)."""
    if not isinstance(records, list):
        raise IntegrityError("the package's seizure records are not a list")
    try:
        return records_sha256(validate_records(records))
    except InvalidInput as exc:
        raise IntegrityError(f"the package's seizure records are malformed: {exc}") from None


def check_package(detail: dict[str, Any], proof: dict[str, Any], vkey: str) -> None:
    """Check a downloaded package (``detail``, whose files' sizes and digests the download
    checked on the bytes it wrote) against its signature; IntegrityError on any mismatch."""
    signature = detail["signature"]
    check_key_proof(signature, proof, vkey)
    signed = check_signed(signature)
    received = manifest.Manifest(
        package_id=detail["id"],
        agency=detail["agency"],
        classification=detail["classification"],
        handling=detail["handling"],
        handling_note=detail["handling_note"],
        title_sha256=manifest.sha256_text(detail["title"]),
        description_sha256=manifest.sha256_text(detail["description"]),
        records_sha256=records_digest(detail.get("records", [])),
        files=tuple(
            manifest.ManifestFile(f["name"], int(f["size"]), f["sha256"]) for f in detail["files"]
        ),
    )
    if signature["agency"] != detail["agency"]:
        raise IntegrityError("the signer is not of the package's originating agency")
    try:
        manifest.check_matches(signed, received)
    except InvalidInput as exc:
        raise IntegrityError(f"the package does not match its signed manifest: {exc}") from None


def bundle(
    detail: dict[str, Any], proof: dict[str, Any], witnessed: str | None = None
) -> dict[str, Any]:
    """What ``package verify`` needs later, offline: the signature, the key's proof (and its
    witnessed tlog-proof, when there is one) and the seizure records."""
    return {
        "format": "blo-vault signed package v1",
        "signature": detail["signature"],
        "proof": proof,
        "witnessed_proof": witnessed,
        "records": detail.get("records", []),
    }


def _file_digest(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def check_files_on_disk(
    saved: dict[str, Any], folder: Path, vkey: str, local_names: list[str]
) -> manifest.Manifest:
    """Re-check files saved in ``folder`` (named ``local_names``, in manifest order) against
    a bundle; IntegrityError on any mismatch. Returns the signed manifest."""
    if saved.get("format") != "blo-vault signed package v1":
        raise InvalidInput("not a blo-vault signed package bundle")
    signature, proof = saved["signature"], saved["proof"]
    check_key_proof(signature, proof, vkey)
    signed = check_signed(signature)
    if records_digest(saved.get("records", [])) != signed.records_sha256:
        raise IntegrityError("the saved seizure records do not match the signed manifest")
    files = []
    for item, name in zip(signed.files, local_names, strict=True):
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{name}: missing")
        size, sha = _file_digest(path)
        files.append(manifest.ManifestFile(item.name, size, sha))
    try:
        manifest.check_files(signed, files)
    except InvalidInput as exc:
        raise IntegrityError(f"the files do not match the signed manifest: {exc}") from None
    return signed
