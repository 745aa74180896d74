"""``blovault keys``: the officer's signing key: init, register, revoke, audit (issue 13)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from blo_vault.cli import keys as local
from blo_vault.cli import render
from blo_vault.cli import session as stored
from blo_vault.cli.commands._common import JsonOpt, api_client, read_password
from blo_vault.cli.errors import BadServerReply, field, objects
from blo_vault.cli.render import err, out, print_json
from blo_vault.cli.verify import check_inclusion
from vault.errors import ConfigError, IntegrityError, LedgerCorrupt
from vault.ledger.entry import decode

app = typer.Typer(
    help="Your signing key: packages you upload are signed on this machine.",
    no_args_is_help=True,
)

VKEY_ENV = "VAULT_LEDGER_VKEY"
VkeyOpt = Annotated[
    str | None,
    typer.Option(
        "--vkey",
        envvar=VKEY_ENV,
        help="The ledger's verifier key, obtained out of band (checks the proofs).",
    ),
]


def passphrase_for(key: local.LocalKey) -> bytes | None:
    """The passphrase of an encrypted key: $VAULT_SIGNING_PASSPHRASE, else a prompt."""
    pem = (local.keys_dir() / f"{key.key_id}.pem").read_bytes()
    if b"ENCRYPTED" not in pem:
        return None
    env = os.environ.get(local.PASSPHRASE_ENV)
    if env is not None:
        return env.encode()
    value: str = typer.prompt("Signing key passphrase", hide_input=True, err=True)
    return value.encode()


@app.command("init")
def keys_init(
    no_passphrase: Annotated[
        bool, typer.Option("--no-passphrase", help="Store the key unencrypted (0600 only).")
    ] = False,
    passphrase_stdin: Annotated[
        bool, typer.Option("--passphrase-stdin", help="Read the passphrase from stdin.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a new Ed25519 signing key on this machine (the private key never leaves it)."""
    passphrase: bytes | None = None
    if passphrase_stdin:
        passphrase = read_password(True).encode() or None
    elif not no_passphrase:
        typed: str = typer.prompt(
            "Passphrase for the key (empty: none)",
            hide_input=True,
            confirmation_prompt=True,
            default="",
            show_default=False,
            err=True,
        )
        passphrase = typed.encode() or None
    key = local.create_key(passphrase)
    if as_json:
        print_json({"key_id": key.key_id, "public_key": key.public_key})
        return
    out.print(render.line(f"created signing key {key.key_id}"))
    out.print(render.line("register it with: blovault keys register"))


@app.command("register")
def keys_register(as_json: JsonOpt = False) -> None:
    """Register this machine's current key with the vault (recorded in the ledger)."""
    key = local.current_key()
    if key is None:
        raise ConfigError("no signing key on this machine: run 'blovault keys init'")
    saved = stored.load()
    with api_client() as client:
        info = client.register_key(key.public_key)
    local.mark_registered(
        key, {"username": info["username"], "agency": info["agency"], "server": saved.server}
    )
    if as_json:
        print_json(info)
        return
    out.print(
        render.line(
            f"registered key {info['id']} for {info['username']} ({info['agency']}) "
            f"(ledger #{info['registered_seq']})"
        )
    )


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str | None, typer.Argument(help="Default: this machine's key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke one of your keys: packages can no longer be signed with it."""
    if key_id is None:
        key = local.current_key()
        if key is None:
            raise ConfigError("no signing key on this machine: name the key to revoke")
        key_id = key.key_id
    with api_client() as client:
        info = client.revoke_key(key_id)
    if as_json:
        print_json(info)
    else:
        out.print(render.line(f"revoked key {info['id']} (ledger #{info['revoked_seq']})"))


def _audit_rows(history: dict[str, Any], vkey: str | None, mine: set[str] | None) -> list[Any]:
    """One row per key entry; every entry's inclusion proof checked with ``vkey`` if given."""
    rows = []
    for proof in objects(history, "entries", "key history"):
        if vkey is not None:
            entry = check_inclusion(proof, vkey)
        else:
            try:
                data = base64.b64decode(field(proof, "entry", str, "key entry"), validate=True)
                entry = decode(data)
            except (ValueError, LedgerCorrupt):  # binascii.Error is a ValueError
                raise BadServerReply(
                    "the server's key history holds an entry that is not one"
                ) from None
        if not entry.action.startswith("key.") or entry.subject != history["username"]:
            raise IntegrityError(f"ledger entry {entry.seq} is not a key entry of this user")
        parts = entry.reason.split(" ")
        key_id = parts[1] if len(parts) == 4 else "?"
        foreign = mine is not None and entry.action == "key.register" and key_id not in mine
        rows.append(
            {
                "seq": entry.seq,
                "time": entry.time.isoformat(),
                "action": entry.action,
                "key_id": key_id,
                "agency": parts[3] if len(parts) == 4 else "?",
                "by": entry.actor_user,
                "created_here": None if mine is None else key_id in mine,
                "flag": "NOT CREATED BY YOU" if foreign else "",
            }
        )
    return rows


def _export_history(export: Path, vkey: str | None, policy: Path | None, user: str) -> list[Any]:
    """Every key entry of ``user`` in a verified export, as proofs _audit_rows can read (the
    entries themselves: the export's verification proved them all, and that none is missing
    up to its checkpoint)."""
    # Here, not at the top: `ledger` imports the service layer, which the commands that talk
    # to a server never load (tests/cli/test_cli_startup.py).
    from blo_vault.cli.commands import ledger

    document = ledger.verified_export(export, vkey, policy)
    history = []
    for data in document["entries"]:
        entry = decode(base64.b64decode(data))
        if entry.action.startswith("key.") and entry.subject == user:
            history.append({"entry": data})
    return history


@app.command("audit")
def keys_audit(
    user: Annotated[
        str | None, typer.Option(help="Another user of your agency (auditors).")
    ] = None,
    vkey: VkeyOpt = None,
    export: Annotated[
        Path | None,
        typer.Option(
            help="Read the key entries from this ledger export, verified offline, instead of "
            "asking the server: the server's list proves each entry, not that none is left out."
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(help="With --export: a witness policy its checkpoint must meet."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List every key the ledger says was registered for you, and flag any not made here.

    Exit code 6 when a key was registered for you that this machine did not create."""
    saved = stored.load()
    username = user or saved.username
    if export is not None:
        history = {"username": username, "entries": _export_history(export, vkey, policy, username)}
    else:
        with api_client() as client:
            history = client.key_history(user)
    own = user is None or user == saved.username
    # From an export, each entry was proved with the whole export: none needs its own proof.
    proofs_by = None if export is not None else vkey
    rows = _audit_rows(history, proofs_by, local.known_key_ids() if own else None)
    if as_json:
        print_json({"username": history["username"], "entries": rows})
    else:
        table = Table("seq", "time", "action", "key id", "agency", "by", "")
        for row in rows:
            table.add_row(
                *render.cells(
                    row["seq"],
                    row["time"][:19],
                    row["action"],
                    row["key_id"],
                    row["agency"],
                    row["by"],
                    row["flag"],
                )
            )
        out.print(table)
        if vkey is None and export is None:
            err.print("note: proofs not checked (give --vkey, the ledger's verifier key)")
        elif export is None:
            err.print("note: the server chose this list; --export checks that none is missing")
    foreign = sorted({r["key_id"] for r in rows if r["flag"]})
    if foreign:
        raise IntegrityError(
            f"{len(foreign)} key(s) registered for you were not created here: " + ", ".join(foreign)
        )
