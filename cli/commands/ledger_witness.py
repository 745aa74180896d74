"""``blovault ledger`` with witnesses: the witnessed checkpoint, tlog-proof bundles, checks
against a witness policy (C2SP tlog-policy) and each witness's lag.

Registered on the ``ledger`` group by :func:`register`; the flags of existing ledger commands
(``checkpoint --witnessed``, ``prove --format tlog-proof``, ``verify --policy``,
``consistency --policy``) call the helpers here. Like every ledger command, the ones that read
the vault work on the configured database through the service facade, as the local operator;
``verify-proof`` and ``verify --export --policy`` need nothing but their files.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from blo_vault.cli import render
from blo_vault.cli.commands import witness as witness_cli
from blo_vault.cli.commands._common import local_vault
from vault.schemas import WitnessStatus
from vault.service import local_operator
from vault.witness.export import WitnessedExport, verify_export_with_policy
from vault.witness.policy import WitnessedCheckpoint, load_policy, verify_witnessed

__all__ = [
    "ProofFormat",
    "check_witnessed",
    "prove_tlog",
    "register",
    "verify_export",
    "write_witnessed_checkpoint",
]

_out, _err = render.out, render.err


class ProofFormat(enum.StrEnum):
    """What ``ledger prove`` writes."""

    TEXT = "text"
    TLOG_PROOF = "tlog-proof"


def write_witnessed_checkpoint(output: Path | None, as_json: bool) -> None:
    """``ledger checkpoint --witnessed``: print (and save) the witnessed checkpoint."""
    with local_vault() as vault:
        info = vault.witnessed_checkpoint(local_operator())
    if output is not None:
        output.write_text(info.note, encoding="utf-8")
    if as_json:
        render.print_json(info.model_dump(mode="json"))
    else:
        render.print_verbatim(info.note)


def prove_tlog(seq: int, output: Path | None, entry_out: Path | None) -> None:
    """``ledger prove SEQ --format tlog-proof``: the bundle of SEQ in the witnessed checkpoint."""
    with local_vault() as vault:
        bundle, entry, receipt = vault.tlog_proof(local_operator(), seq)
    if entry_out is not None:
        entry_out.write_bytes(entry)
    if output is None:
        render.print_verbatim(bundle)
    else:
        witness_cli.write_atomically(output, bundle)
        _err.print(f"wrote {output} (ledger #{receipt})", highlight=False, markup=False)


def _cosigned(witnessed: WitnessedCheckpoint) -> str:
    return ", ".join(sorted(witnessed.cosigned_at)) or "no witness (quorum none)"


def check_witnessed(old_text: str, policy: Path) -> None:
    """``ledger consistency --policy``: the saved checkpoint must meet the policy's quorum.

    QuorumNotMet (exit 1) if it lacks the quorum or a cosignature is dated in the future."""
    witnessed = verify_witnessed(old_text, load_policy(policy), now=int(time.time()))
    _err.print(
        render.line(
            f"saved checkpoint of {witnessed.checkpoint.size} cosigned by " + _cosigned(witnessed)
        ),
        highlight=False,
    )


def verify_export(
    document: dict[str, object],
    policy: Path,
    vkey: str | None,
    progress: Callable[[int], None] | None = None,
    saved: str | None = None,
) -> WitnessedExport:
    """``ledger verify --export --policy``: the export and its witnessed checkpoint."""
    return verify_export_with_policy(
        document,
        load_policy(policy),
        now=int(time.time()),
        vkey=vkey,
        progress=progress,
        saved=saved,
    )


def report_witnessed(checked: WitnessedExport, as_json: bool) -> None:
    """After a passing ``verify --policy``: say which witnesses vouch for which size."""
    if checked.witnessed is not None and not as_json:
        _out.print(
            render.line(
                f"witnessed: {checked.witnessed.checkpoint.size} entries cosigned by "
                + _cosigned(checked.witnessed)
            ),
            highlight=False,
        )


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    ago = max((now - moment).total_seconds(), 0.0)
    return f"{moment.isoformat(timespec='seconds')} ({ago:.0f} s ago)"


def _print_status(status: WitnessStatus) -> None:
    now = datetime.now(UTC)
    _out.print(f"ledger     {status.ledger_size} entries", highlight=False, markup=False)
    if status.witnessed_size is None:
        _out.print("witnessed  none published yet", highlight=False, markup=False)
    else:
        _out.print(
            f"witnessed  {status.witnessed_size} entries, published "
            + _when(status.witnessed_at, now),
            highlight=False,
            markup=False,
        )
    if not status.witnesses:
        _out.print("witnesses  none heard from (is VAULT_WITNESS_POLICY set on the server?)")
    for lag in status.witnesses:
        line = f"witness {lag.name}: size {lag.size}, {lag.behind} behind, last cosigned " + _when(
            lag.cosigned_at, now
        )
        if lag.error:
            line += f"; last round failed: {lag.error}"
        # Names come from the policy and errors from witnesses' replies: shown, never run.
        _out.print(render.line(line), highlight=False)


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Ledger size, the witnessed checkpoint, and each witness's lag (size and age of its last
    cosignature, and the error of its last round), as the server's publisher recorded them."""
    with local_vault() as vault:
        result = vault.witness_status()
    if as_json:
        data: dict[str, Any] = result.model_dump(mode="json")
        render.print_json(data)
    else:
        _print_status(result)


def register(ledger_app: typer.Typer) -> None:
    """Add ``status`` and ``verify-proof`` to the ``ledger`` command group."""
    ledger_app.command("status")(status)
    # The same offline check as ``blovault witness verify-proof``, under the ledger's name.
    ledger_app.command("verify-proof")(witness_cli.verify_proof)
