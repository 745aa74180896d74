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
from blo_vault.cli.commands._common import JsonOpt
from blo_vault.cli.commands.keys import VkeyOpt, passphrase_for
from blo_vault.cli.render import out, print_json
from vault.errors import InvalidInput

__all__ = ["download_check", "package_verify", "signature_line", "upload_signer"]


def upload_signer() -> local.UploadSigner | None:
    """A signer for the next upload: this machine's current key, if it is registered for the
    user of the stored session on its server; None (unsigned) without one."""
    key = local.current_key()
    if key is None or key.registration is None:
        return None
    saved = stored.load()
    reg = key.registration
    if (reg.get("username"), reg.get("server")) != (saved.username, saved.server):
        return None
    return local.UploadSigner(
        key=key.private_key(passphrase_for(key)), key_id=key.key_id, agency=str(reg["agency"])
    )


def signature_line(signature: dict[str, Any] | None, *, checked: bool = False) -> str:
    """How a package's signature is described to the person at the terminal."""
    if signature is None:
        return "unsigned: nothing proves who sent this package"
    who = f"signed by {signature['signer']} ({signature['agency']}), key {signature['key_id']}"
    if checked:
        return who + " (checked here against the ledger, without trusting the server)"
    revoked = " [key since revoked]" if signature.get("key_revoked") else ""
    return who + revoked + " (as the server checked; 'package download' checks it again)"


def download_check(
    client: ApiClient, detail: dict[str, Any], vkey: str | None, save: Path | None
) -> Callable[[], None] | None:
    """The check to run once a signed package's files are downloaded, before any is kept
    (None for an unsigned package). Asks for the key's proof now, so a refusal comes before
    the transfer."""
    signature = detail.get("signature")
    if signature is None:
        if save is not None:
            raise InvalidInput("--manifest: the package is unsigned")
        return None
    if not vkey:
        raise InvalidInput(
            "a signed package is checked against the ledger: give --vkey (or VAULT_LEDGER_VKEY), "
            "the ledger's verifier key obtained out of band"
        )
    proof = client.show_key(signature["key_id"])["proof"]
    verify.check_key_proof(signature, proof, vkey)

    def check() -> None:
        verify.check_package(detail, proof, vkey)
        if save is not None:
            save.write_text(json.dumps(verify.bundle(detail, proof), indent=1), encoding="utf-8")

    return check


def package_verify(
    folder: Annotated[Path, typer.Argument(help="Where the package's files were saved.")],
    manifest: Annotated[Path, typer.Option(help="The file 'package download --manifest' saved.")],
    vkey: VkeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-check saved files against their signed manifest, offline (only the ledger's key)."""
    if not vkey:
        raise InvalidInput("give --vkey (or VAULT_LEDGER_VKEY): the ledger's verifier key")
    try:
        saved = json.loads(manifest.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {manifest}: {exc}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("signature"), dict):
        raise InvalidInput("not a blo-vault signed package bundle")
    signed = verify.check_signed(saved["signature"])
    names = local_names([f.name for f in signed.files])
    verify.check_files_on_disk(saved, folder, vkey, names)
    signature = saved["signature"]
    if as_json:
        print_json({"id": signed.package_id, "files": names, "signer": signature["signer"]})
        return
    out.print(render.line(f"ok: {len(names)} files match package {signed.package_id}"))
    out.print(render.line(signature_line(signature, checked=True)))
