"""``blovault witness``: run a counterpart country's witness (c2sp.org/tlog-witness).

A witness shares nothing with the vault: its own directory (Ed25519 key, state database), its
own process. Errors are VaultErrors, turned into one line and an exit code by
``blo_vault.cli.main.run``.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from blo_vault.cli import render
from blo_vault.cli.commands._common import read_text
from vault.errors import InvalidInput, StorageUnavailable
from vault.witness.core import Witness, init_witness
from vault.witness.policy import load_policy, verify_witnessed

witness_app = typer.Typer(
    help="Run a witness that cosigns the vault's checkpoints it has checked (counterparts).",
    no_args_is_help=True,
)

_out, _err = render.out, render.err

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
    render.print_verbatim(cosigner.vkey() + "\n")


@witness_app.command("serve")
def serve(
    directory: DirOpt = _DEFAULT_DIR,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8380,
    header_timeout: Annotated[
        float,
        typer.Option(
            min=0.001,
            envvar="VAULT_WITNESS_HEADER_TIMEOUT_SECONDS",
            help="Seconds a client has to send a request's headers (408 after).",
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            min=0.001,
            envvar="VAULT_WITNESS_BODY_TIMEOUT_SECONDS",
            help="Seconds a client has to send a whole request body (408 after).",
        ),
    ] = 10.0,
    max_connections: Annotated[
        int,
        typer.Option(
            min=4,
            envvar="VAULT_WITNESS_MAX_CONNECTIONS",
            help="Connections open at once (a quarter per client address); more are refused.",
        ),
    ] = 256,
) -> None:
    """Serve POST /add-checkpoint (c2sp.org/tlog-witness) until interrupted.

    With the vault server's HTTP limits: deadlines for headers and body, and a cap on open
    connections kept below the file descriptor limit, so idle or half-sent requests can't stop
    the witness answering."""
    import uvicorn

    from blo_vault.api.witness import connection_cap, create_witness_app, witness_server_options

    # Open before binding, so a missing directory or an unsafe key stops us with its message.
    witness = Witness.open(directory)
    cap = connection_cap(max_connections)
    if cap < max_connections:
        _err.print(
            f"warning: the open file limit allows {cap} connections, not {max_connections}",
            highlight=False,
            markup=False,
        )
    _err.print(
        f"witness {witness.cosigner.name} listening on http://{host}:{port}",
        highlight=False,
        markup=False,
    )
    uvicorn.run(
        create_witness_app(witness, body_timeout=body_timeout),
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        **witness_server_options(header_timeout=header_timeout, max_connections=cap),
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
        render.print_json(data)
        return
    # Plain lines, not a table: a table squeezes origins and roots to the terminal's width,
    # and people compare these values by eye or with grep.
    _out.print(f"witness {witness.cosigner.vkey()}", highlight=False, markup=False)
    for h in heads:
        _out.print(render.line(f"log {h.origin}"), highlight=False)
        _out.print(f"  size          {h.size}", highlight=False, markup=False)
        root = base64.b64encode(h.root_hash).decode()
        _out.print(f"  root          {root}", highlight=False, markup=False)
        _out.print(f"  last cosigned {_when(h.cosigned_at)}", highlight=False, markup=False)


PolicyOpt = Annotated[
    Path,
    typer.Option(
        "--policy",
        envvar="VAULT_WITNESS_POLICY",
        help="Witness policy file (c2sp.org/tlog-policy: log, witness, group, quorum lines).",
    ),
]


@witness_app.command("verify")
def verify(
    checkpoint: Annotated[Path, typer.Argument(help="A witnessed checkpoint (signed note).")],
    policy: PolicyOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Check offline that a checkpoint is signed by a policy log and meets the policy's quorum.

    Cosignatures dated in the future (beyond 60 s of clock skew) are rejected. Exit 1 if the
    checkpoint does not meet the policy."""
    try:
        note = checkpoint.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read checkpoint {checkpoint}: {exc.strerror}") from None
    result = verify_witnessed(note, load_policy(policy), now=int(time.time()))
    cp = result.checkpoint
    root = base64.b64encode(cp.root_hash).decode()
    if as_json:
        data = {
            "origin": cp.origin,
            "size": cp.size,
            "root": root,
            "cosigned_at": {name: _when(t) for name, t in sorted(result.cosigned_at.items())},
        }
        render.print_json(data)
        return
    # Origins and witness names come from files a counterpart was handed: shown, never run.
    _out.print(render.line(f"OK {cp.origin} size {cp.size} root {root}"), highlight=False)
    for name, t in sorted(result.cosigned_at.items()):
        _out.print(render.line(f"  cosigned by {name} at {_when(t)}"), highlight=False)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


@witness_app.command("publish")
def publish(
    policy: PolicyOpt,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Also write each witnessed checkpoint published to this file."),
    ] = None,
    cadence: Annotated[float, typer.Option(help="Seconds between rounds.")] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="One round, then exit.")] = False,
) -> None:
    """Vault side, by hand: the server's publishing rounds (VAULT_WITNESS_POLICY) from here.

    Sends the ledger's checkpoints to the policy's witnesses and stores the cosigned one in
    the vault's database at quorum, exactly as ``blovault serve`` does with
    VAULT_WITNESS_POLICY set; for a first test of a policy, or a vault served without one.
    With --once, exit 7 if the quorum was not met."""
    from vault.config import load_settings
    from vault.service import Vault

    settings = load_settings(witness_policy=policy)
    vault = Vault.open(settings, create=False)
    try:
        publishing = vault.witness_publisher()
        assert publishing is not None  # a policy is set
        stop = threading.Event()
        try:
            while True:
                published = publishing.round()
                if published is not None:
                    if out_file is not None:
                        write_atomically(out_file, published)
                    _err.print("published a witnessed checkpoint", markup=False)
                for lag in publishing.lag():
                    if lag.error:
                        _err.print(
                            render.line(f"witness {lag.name} at size {lag.size}: {lag.error}"),
                            highlight=False,
                        )
                if once:
                    if published is None:
                        raise StorageUnavailable("the policy's quorum of witnesses was not met")
                    return
                stop.wait(cadence)
        finally:
            publishing.stop()
    finally:
        vault.close()


@witness_app.command("prove")
def prove(
    seq: Annotated[int, typer.Argument(help="Ledger entry number.")],
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="The witnessed checkpoint to prove against.")
    ],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the .tlog-proof.")],
    entry_out: Annotated[
        Path, typer.Option("--entry-out", help="Where to write the entry's exact bytes.")
    ],
) -> None:
    """Vault side: write a C2SP tlog-proof bundle for entry SEQ in a witnessed checkpoint."""
    from vault.config import load_settings
    from vault.db import session_scope
    from vault.ledger import log
    from vault.ledger.note import NoteError, open_checkpoint
    from vault.service import Vault
    from vault.witness.proof import format_tlog_proof

    note = read_text(checkpoint, "checkpoint")
    settings = load_settings()
    vault = Vault.open(settings, create=False)
    try:
        try:
            cp = open_checkpoint(note, [vault.ledger_verifier], settings.ledger_origin)
        except NoteError as exc:
            raise InvalidInput(f"checkpoint is not this log's: {exc}") from None
        if not 0 <= seq < cp.size:
            raise InvalidInput(f"entry {seq} is not in the checkpoint of size {cp.size}")
        with session_scope(vault.engine, readonly=True) as session:
            entry = log.entry_bytes(session, seq)
            hashes = log.inclusion_proof(session, seq, cp.size)
    finally:
        vault.close()
    write_atomically(out_file, format_tlog_proof(seq, hashes, note))
    entry_out.write_bytes(entry)
    _err.print(f"wrote {out_file} and {entry_out}", highlight=False, markup=False)


@witness_app.command("verify-proof")
def verify_proof(
    bundle: Annotated[Path, typer.Argument(help="A .tlog-proof bundle.")],
    policy: PolicyOpt,
    entry: Annotated[Path, typer.Option("--entry", help="The entry's exact bytes.")],
) -> None:
    """Check offline that ENTRY is in a checkpoint meeting the policy (C2SP tlog-proof).

    Exit 1 if the checkpoint fails the policy or the entry is not at the bundle's index."""
    from vault.witness.proof import verify_tlog_proof

    try:
        data, entry_bytes = bundle.read_bytes(), entry.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {exc.filename}: {exc.strerror}") from None
    parsed, witnessed = verify_tlog_proof(
        data, entry_bytes, load_policy(policy), now=int(time.time())
    )
    cp = witnessed.checkpoint
    _out.print(
        render.line(
            f"OK entry {parsed.index} is in {cp.origin} at size {cp.size}, cosigned by "
            + ", ".join(sorted(witnessed.cosigned_at))
        ),
        highlight=False,
    )
