"""What ``package upload``, ``show``, ``download`` and ``verify`` do about originator
signatures (issue 13), kept apart from the transfer code they hook into."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from blo_vault.cli import keys as local
from blo_vault.cli import render, verify
from blo_vault.cli import session as stored
from blo_vault.cli.client import ApiClient, local_names
from blo_vault.cli.commands._common import JsonOpt, read_json
from blo_vault.cli.commands.keys import VkeyOpt, passphrase_for
from blo_vault.cli.errors import BadServerReply, field
from blo_vault.cli.render import err, out, print_json
from vault.errors import IntegrityError, InvalidInput
from vault.witness.policy import WitnessedCheckpoint, load_policy

__all__ = [
    "PolicyOpt",
    "download_check",
    "package_verify",
    "signature_json",
    "signature_line",
    "signature_of",
    "upload_signer",
    "witnessed_line",
]


def upload_signer() -> local.UploadSigner | None:
    """A signer for the next upload: this machine's current key, if it is registered for the
    user of the stored session on its server; None (unsigned) without one."""
    key = local.current_key()
    if key is None:
        return None
    saved = stored.load()
    reg = key.registration or {}
    if (reg.get("username"), reg.get("server")) != (saved.username, saved.server):
        # An officer who made a key expects signed packages: say so rather than send this
        # one unsigned without a word (--unsigned says it on purpose, and skips this).
        err.print(
            render.line(
                "warning: this machine's key ",
                render.text(key.key_id),
                " is not registered for ",
                render.text(saved.username),
                " on this server, so this package goes unsigned (blovault keys register)",
            )
        )
        return None
    return local.UploadSigner(
        key=key.private_key(passphrase_for(key)), key_id=key.key_id, agency=str(reg["agency"])
    )


def witnessed_line(witnessed: WitnessedCheckpoint) -> str:
    """What a passing --policy check adds to the signature line."""
    return (
        f"the key's registration is in a checkpoint of {witnessed.checkpoint.size} entries "
        "cosigned by " + ", ".join(sorted(witnessed.cosigned_at))
    )


def signature_of(detail: dict[str, Any]) -> dict[str, Any] | None:
    """A package's ``signature`` (None: unsigned); BadServerReply if it is something else."""
    signature = detail.get("signature")
    if signature is None:
        return None
    if not isinstance(signature, dict):
        raise BadServerReply("the server's package signature is not a JSON object")
    for name in ("signer", "agency", "key_id"):  # what every description of it shows
        field(signature, name, str, "package signature")
    return signature


def signature_line(signature: dict[str, Any] | None, *, checked: bool = False) -> str:
    """How a package's signature is described to the person at the terminal."""
    if signature is None:
        return "unsigned: nothing proves who sent this package"
    who = f"signed by {signature['signer']} ({signature['agency']}), key {signature['key_id']}"
    # The ledger proof shows the key was registered, not that it is still good: a revocation
    # the server reports is kept in view after the check too (a server can hide it, not fake
    # a registration).
    revoked = " [key since revoked]" if signature.get("key_revoked") is True else ""
    if checked:
        return who + revoked + " (checked here against the ledger, without trusting the server)"
    return who + revoked + " (as the server checked; 'package download' checks it again)"


def signature_json(signature: dict[str, Any] | None) -> dict[str, Any]:
    """A downloaded package's signature status for ``--json``: ``verified`` (checked here
    against the ledger before anything was kept) or ``unsigned``; ``key_revoked`` is what the
    server reported."""
    if signature is None:
        return {"status": "unsigned", "signer": None, "key_id": None, "key_revoked": None}
    return {
        "status": "verified",
        "signer": signature["signer"],
        "key_id": signature["key_id"],
        "key_revoked": signature.get("key_revoked") is True,
    }


PolicyOpt = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="Witness policy file (c2sp.org/tlog-policy): also require the signer's key "
        "registration to be in a checkpoint cosigned by a quorum of its witnesses.",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]


class _BundleObject(dict[str, Any]):
    """A JSON object of a saved bundle: a member it lacks makes it no bundle (exit 2), not a
    crash of the check that read it."""

    def __missing__(self, key: str) -> Any:
        raise InvalidInput(f"not a blo-vault signed package bundle: it has no {key!r}")


RequireSignedOpt = Annotated[
    bool,
    typer.Option(
        "--require-signed",
        envvar="VAULT_REQUIRE_SIGNED",
        help="Refuse (exit 6, nothing kept) a package that carries no signature: a host "
        "could otherwise strip one and serve other files as unsigned.",
    ),
]


def download_check(
    client: ApiClient,
    detail: dict[str, Any],
    vkey: str | None,
    save: Path | None,
    policy: Path | None = None,
    *,
    require_signed: bool = False,
) -> Callable[[], None] | None:
    """The check to run once a signed package's files are downloaded, before any is kept
    (None for an unsigned package, unless ``require_signed`` refuses it). Asks for the key's
    proofs now, so a refusal comes before the transfer; with ``policy``, the registration
    must be in a witnessed checkpoint."""
    signature = signature_of(detail)
    if signature is None:
        if require_signed:
            raise IntegrityError(
                "the package carries no signature: nothing proves who sent it (--require-signed)"
            )
        if save is not None or policy is not None:
            raise InvalidInput("--manifest and --policy: the package is unsigned")
        return None
    if not vkey:
        raise InvalidInput(
            "a signed package is checked against the ledger: give --vkey (or VAULT_LEDGER_VKEY), "
            "the ledger's verifier key obtained out of band"
        )
    rules = load_policy(policy) if policy is not None else None
    key = client.show_key(field(signature, "key_id", str, "package signature"))
    proof, witnessed = field(key, "proof", dict, "key reply"), key.get("witnessed_proof")
    verify.check_key_proof(signature, proof, vkey)
    if rules is not None:
        verify.check_witnessed_key(signature, proof, witnessed, rules)

    def check() -> None:
        verify.check_package(detail, proof, vkey)
        if save is not None:
            saved = verify.bundle(detail, proof, witnessed)
            # The bundle holds the package's seizure records: private to its owner.
            stored.write_private(save, json.dumps(saved, indent=1).encode())

    return check


def package_verify(
    folder: Annotated[Path, typer.Argument(help="Where the package's files were saved.")],
    manifest: Annotated[Path, typer.Option(help="The file 'package download --manifest' saved.")],
    vkey: VkeyOpt = None,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-check saved files against their signed manifest, offline (only the ledger's key,
    and the witness policy with --policy)."""
    if not vkey:
        raise InvalidInput("give --vkey (or VAULT_LEDGER_VKEY): the ledger's verifier key")
    saved = read_json(manifest, "bundle", object_hook=_BundleObject)
    if not isinstance(saved, dict) or not isinstance(saved.get("signature"), dict):
        raise InvalidInput("not a blo-vault signed package bundle")
    signed = verify.check_signed(saved["signature"])
    names = local_names([f.name for f in signed.files])
    verify.check_files_on_disk(saved, folder, vkey, names)
    signature = saved["signature"]
    witnessed = None
    if policy is not None:
        witnessed = verify.check_witnessed_key(
            signature, saved["proof"], saved.get("witnessed_proof"), load_policy(policy)
        )
    if as_json:
        print_json(
            {
                "id": signed.package_id,
                "files": names,
                "signer": signature["signer"],
                "witnessed_by": sorted(witnessed.cosigned_at) if witnessed else None,
            }
        )
        return
    out.print(render.line(f"ok: {len(names)} files match package {signed.package_id}"))
    out.print(render.line(signature_line(signature, checked=True)))
    if witnessed is not None:
        out.print(render.line(witnessed_line(witnessed)))
