"""``blovault witness``: run a counterpart country's witness (c2sp.org/tlog-witness).

A witness shares nothing with the vault: its own directory (Ed25519 key, state database), its
own process. Errors are VaultErrors, turned into one line and an exit code by ``cli.main.run``.
"""

from __future__ import annotations

import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from vault.witness.core import Witness, init_witness

witness_app = typer.Typer(
    help="Run a witness that cosigns the vault's checkpoints it has checked (counterparts).",
    no_args_is_help=True,
)

_out = Console(soft_wrap=True)
_err = Console(stderr=True, soft_wrap=True)

DirOpt = Annotated[
    Path,
    typer.Option(
        "--dir",
        envvar="VAULT_WITNESS_DIR",
        help="Witness directory (key and state; made mode 0700).",
    ),
]
_DEFAULT_DIR = Path("blovault-witness")


@witness_app.command("init")
def init(
    name: Annotated[
        str, typer.Option("--name", help="Witness key name, e.g. witness.kz.example/blo.")
    ],
    log_vkey: Annotated[
        list[str],
        typer.Option("--log-vkey", help="Verifier key of a log to follow (repeatable)."),
    ],
    directory: DirOpt = _DEFAULT_DIR,
) -> None:
    """Make a witness key (mode 0600) and state database; print the witness's vkey (type 0x04).

    Give the printed vkey to the vault's operator and to everyone who verifies checkpoints."""
    cosigner = init_witness(directory, name=name, log_vkeys=log_vkey)
    _err.print(f"witness created in {directory}", highlight=False, markup=False)
    sys.stdout.write(cosigner.vkey() + "\n")


@witness_app.command("serve")
def serve(
    directory: DirOpt = _DEFAULT_DIR,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8380,
) -> None:
    """Serve POST /add-checkpoint (c2sp.org/tlog-witness) until interrupted."""
    import uvicorn

    from api.witness import create_witness_app

    # Open before binding, so a missing directory or an unsafe key stops us with its message.
    witness = Witness.open(directory)
    _err.print(
        f"witness {witness.cosigner.name} listening on http://{host}:{port}",
        highlight=False,
        markup=False,
    )
    uvicorn.run(
        create_witness_app(witness),
        host=host,
        port=port,
        server_header=False,
        access_log=False,
        log_level="warning",
    )


def _when(timestamp: int | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@witness_app.command("status")
def status(
    directory: DirOpt = _DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show, per log, the size, root and time of the last checkpoint this witness cosigned."""
    witness = Witness.open(directory)
    heads = witness.heads()
    if as_json:
        data = {
            "witness": witness.cosigner.vkey(),
            "logs": [
                {
                    "origin": h.origin,
                    "size": h.size,
                    "root": base64.b64encode(h.root_hash).decode(),
                    "cosigned_at": None if h.cosigned_at is None else _when(h.cosigned_at),
                }
                for h in heads
            ],
        }
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    # Plain lines, not a table: a table squeezes origins and roots to the terminal's width,
    # and people compare these values by eye or with grep.
    _out.print(f"witness {witness.cosigner.vkey()}", highlight=False, markup=False)
    for h in heads:
        _out.print(f"log {h.origin}", highlight=False, markup=False)
        _out.print(f"  size          {h.size}", highlight=False, markup=False)
        root = base64.b64encode(h.root_hash).decode()
        _out.print(f"  root          {root}", highlight=False, markup=False)
        _out.print(f"  last cosigned {_when(h.cosigned_at)}", highlight=False, markup=False)
