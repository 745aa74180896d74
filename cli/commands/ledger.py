"""``blovault ledger``: verify and inspect the access ledger, on this server's database.

Each command is one function over the local vault; what it prints is shaped by a helper beside
it, so a new option or command goes in next to its kin.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from blo_vault.cli import render
from blo_vault.cli import session as stored
from blo_vault.cli.commands import ledger_witness
from blo_vault.cli.commands._common import (
    JsonOpt,
    api_client,
    entry_counter,
    local_vault,
    parse_time,
    read_json,
    read_text,
)
from blo_vault.cli.errors import BadServerReply
from blo_vault.cli.render import err, out, print_json, print_json_line, print_verbatim
from vault.errors import InvalidInput, LedgerCorrupt
from vault.ledger.entry import Entry
from vault.ledger.note import parse_checkpoint, parse_note
from vault.ledger.verify import VerifyResult, verify_export
from vault.service import local_operator
from vault.witness.export import WitnessedExport

app = typer.Typer(help="Verify and inspect the access ledger (compliance).", no_args_is_help=True)
# The witnessed-checkpoint commands (status, verify-proof) come first in the help, as before.
ledger_witness.register(app)


def _report_verify(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(report)
    elif report["ok"]:
        cp = report["checkpoint_size"]
        signed = f"; latest signed checkpoint covers {cp}" if cp is not None else ""
        out.print(
            render.line(f"ledger intact: {report['size']} entries, root {report['root']}{signed}"),
            soft_wrap=True,
        )
    else:
        where = report["first_bad_seq"]
        err.print(
            render.line(
                f"ledger NOT intact: first bad entry #{where}: {report['problem']}"
                if where is not None
                else f"ledger NOT intact: {report['problem']}"
            ),
            soft_wrap=True,
        )
    if not report["ok"]:
        raise typer.Exit(1)


# The members of an export document (README, "Export format"): JSON types, what to call them,
# whether required. vkey is informational only: the key that verifies is the auditor's own.
_EXPORT_MEMBERS: tuple[tuple[str, tuple[type, ...], str, bool], ...] = (
    ("origin", (str,), "a string", True),
    ("checkpoint", (str,), "a string", True),
    ("entries", (list,), "a list", True),
    ("vkey", (str,), "a string", False),
    ("witnessed_checkpoint", (str, type(None)), "a string or null", False),
    ("openings", (list,), "a list", False),
)


def _export_document(document: object) -> dict[str, Any]:
    """``document`` if it has the shape of a ledger export, InvalidInput naming the member
    missing or of the wrong JSON type otherwise. The file may come from a hostile host, and
    the verifier indexes what it is given: a wrong shape must end as this one error, never a
    crash. Whether the values verify (base64, signatures, openings) is the verdict's part."""

    def wrong(why: str) -> InvalidInput:
        return InvalidInput(f"export file is not a ledger export: {why}")

    if not isinstance(document, dict):
        raise wrong("not a JSON object")
    for name, kinds, what, required in _EXPORT_MEMBERS:
        if name not in document:
            if required:
                raise wrong(f"it has no {name!r}")
        elif not isinstance(document[name], kinds):
            raise wrong(f"{name!r} is not {what}")
    for name, kind, what in (("entries", str, "a string"), ("openings", dict, "an object")):
        for i, item in enumerate(document.get(name, ())):
            if not isinstance(item, kind):
                raise wrong(f"{name!r} item {i} is not {what}")
    return document


def _checked_export(
    export: Path, vkey: str | None, policy: Path | None, saved: str | None = None
) -> tuple[dict[str, Any], WitnessedExport | VerifyResult]:
    """An export file's document and its offline check, with ``vkey`` or a witness ``policy``
    (and ``vkey`` if given), extending the ``saved`` checkpoint if given; InvalidInput if
    neither key nor policy is given or the file is no export."""
    if not vkey and policy is None:
        raise InvalidInput("--export needs --vkey: the key you trust, obtained out of band")
    document = _export_document(read_json(export, "export file"))
    with entry_counter("verifying", len(document["entries"])) as advance:
        if policy is not None:
            return document, ledger_witness.verify_export(document, policy, vkey, advance, saved)
        assert vkey is not None
        return document, verify_export(document, vkey, progress=advance, saved=saved)


def _verify_export_file(
    export: Path, vkey: str | None, policy: Path | None, old: Path | None, as_json: bool
) -> None:
    """``ledger verify --export``: check an export file offline, with a key or a policy, and
    that it extends a checkpoint saved earlier (``old``)."""
    saved = read_text(old, "checkpoint") if old is not None else None
    _, checked = _checked_export(export, vkey, policy, saved)
    report = checked.as_dict()
    if saved is not None and report["ok"]:
        # It verified against the log's key inside the check, so it parses.
        report["extends_saved_size"] = parse_checkpoint(parse_note(saved).text).size
    _report_verify(report, as_json)
    if isinstance(checked, WitnessedExport):
        ledger_witness.report_witnessed(checked, as_json)
    if "extends_saved_size" in report and not as_json:
        out.print(
            f"extends the saved checkpoint of {report['extends_saved_size']} entries",
            markup=False,
        )


def verified_export(export: Path, vkey: str | None, policy: Path | None) -> dict[str, Any]:
    """An export file's document once it verified (see _checked_export); LedgerCorrupt naming
    the problem otherwise. For commands that read the entries of an export (``keys audit
    --export``), not just judge it."""
    document, checked = _checked_export(export, vkey, policy)
    result = checked.result if isinstance(checked, WitnessedExport) else checked
    if not result.ok:
        raise LedgerCorrupt(f"the export does not verify: {result.problem}")
    return document


@app.command("verify")
def ledger_verify(
    export: Annotated[
        Path | None, typer.Option(help="Verify this export file offline (no server, no database).")
    ] = None,
    vkey: Annotated[
        str | None, typer.Option(help="The log's verifier key (with --export, unless --policy).")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="Witness policy (tlog-policy): the export's witnessed checkpoint "
            "must meet its quorum, and the log key is taken from it."
        ),
    ] = None,
    old: Annotated[
        Path | None,
        typer.Option(
            help="A checkpoint saved earlier (signed note file): the export must extend it "
            "(with --export; for the database, see 'ledger consistency')."
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Processes to verify a large database ledger with (default: one per CPU).",
        ),
    ] = min(os.cpu_count() or 1, 8),
    as_json: JsonOpt = False,
) -> None:
    """Verify chain, Merkle tree and signed checkpoints; exit 1 naming the first bad entry."""
    if export is not None:
        _verify_export_file(export, vkey, policy, old, as_json)
        return
    if policy is not None:
        raise InvalidInput("--policy checks an export: give --export FILE too")
    if old is not None:
        raise InvalidInput(
            "--old checks an export: give --export FILE too "
            "(for this host's database: blovault ledger consistency --old FILE)"
        )
    # A production ledger whose append-only guard was removed still gets verified (with a
    # warning): that is when an auditor most needs to see what was done to it.
    with local_vault(repair=False, require_guard=False) as vault:
        total = vault.ledger_size()
        with entry_counter("verifying", total) as advance:
            report = vault.verify_ledger(local_operator(), progress=advance, workers=jobs)
    # No receipt: this check writes nothing (see LedgerService.verify_ledger).
    _report_verify(report.model_dump(mode="json", exclude={"receipt"}), as_json)


@app.command("export")
def ledger_export(
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    scoped: Annotated[
        bool, typer.Option("--scoped", help="Add the openings the caller may see.")
    ] = False,
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="Ask the server of the logged-in session (scoped: your own openings).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the ledger and its latest signed checkpoint as one JSON document (the public
    export; --scoped adds the openings of the committed entries the caller may see: with
    --remote the logged-in user, else this server's operator)."""
    if remote:
        _remote_export(output, scoped, as_json)
        return
    with local_vault() as vault:
        total = vault.ledger_size()
        # Private whatever --scoped: a public export is the caller's to publish, not ours.
        with stored.private_file(output) as raw, entry_counter("exporting", total) as advance:
            handle = io.TextIOWrapper(raw, encoding="utf-8")
            info = vault.export_ledger(local_operator(), handle, progress=advance, scoped=scoped)
            handle.detach()  # flushed into ``raw``, which private_file fsyncs and renames
    if as_json:
        print_json({"file": str(output), "size": info.size, "vkey": info.vkey})
    else:
        out.print(render.line(f"exported {info.size} entries to {output}"), soft_wrap=True)
        out.print(f"verifier key: {info.vkey}", soft_wrap=True)


def _remote_export(output: Path, scoped: bool, as_json: bool) -> None:
    """``ledger export --remote``: GET /ledger/export into ``output`` (0600), all or nothing."""
    with api_client() as client, stored.private_file(output) as handle:
        for chunk in client.ledger_export_chunks(scoped=scoped):
            handle.write(chunk)
        handle.seek(0)
        try:
            document = json.load(handle)
            size, vkey = len(document["entries"]), str(document["vkey"])
        except (ValueError, KeyError, TypeError, RecursionError):
            raise BadServerReply("the server's answer is not a ledger export") from None
    if as_json:
        print_json({"file": str(output), "size": size, "vkey": vkey})
    else:
        out.print(render.line(f"exported {size} entries to {output}"), soft_wrap=True)
        out.print(render.line("verifier key: ", render.text(vkey)), soft_wrap=True)


@app.command("checkpoint")
def ledger_checkpoint(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Also save the signed note here.")
    ] = None,
    witnessed: Annotated[
        bool, typer.Option("--witnessed", help="The newest one a quorum of witnesses cosigned.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Sign a checkpoint of the ledger now (or show the latest if nothing changed)."""
    if witnessed:
        ledger_witness.write_witnessed_checkpoint(output, as_json)
        return
    with local_vault() as vault:
        info = vault.latest_checkpoint(local_operator())
    if output is not None:
        output.write_text(info.note, encoding="utf-8")
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        print_verbatim(info.note)


@app.command("prove")
def ledger_prove(
    seq: Annotated[int, typer.Argument(min=0)],
    as_json: JsonOpt = False,
    fmt: Annotated[
        ledger_witness.ProofFormat,
        typer.Option(
            "--format", help="tlog-proof: a C2SP bundle against the witnessed checkpoint."
        ),
    ] = ledger_witness.ProofFormat.TEXT,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="tlog-proof: write the bundle here.")
    ] = None,
    entry_out: Annotated[
        Path | None, typer.Option(help="tlog-proof: write the entry's exact bytes here.")
    ] = None,
) -> None:
    """Inclusion proof of entry SEQ against the latest checkpoint (or the witnessed one)."""
    if fmt is ledger_witness.ProofFormat.TLOG_PROOF:
        ledger_witness.prove_tlog(seq, output, entry_out)
        return
    with local_vault() as vault:
        proof = vault.inclusion_proof(local_operator(), seq)
    if as_json:
        print_json(proof.model_dump(mode="json"))
        return
    out.print(
        f"entry {seq} is included in the tree of {proof.tree_size} entries (root {proof.root})",
        soft_wrap=True,
    )
    for h in proof.hashes:
        out.print(f"  {h}", soft_wrap=True)


@app.command("consistency")
def ledger_consistency(
    old: Annotated[Path, typer.Option(help="A checkpoint saved earlier (signed note file).")],
    as_json: JsonOpt = False,
    policy: Annotated[
        Path | None,
        typer.Option(help="Witness policy: the saved checkpoint must meet its quorum too."),
    ] = None,
) -> None:
    """Prove the ledger extends a saved checkpoint; exit 1 if it was rolled back or forked."""
    old_text = read_text(old, "checkpoint")
    if policy is not None:
        ledger_witness.check_witnessed(old_text, policy)
    with local_vault() as vault:
        proof = vault.consistency_proof(local_operator(), old_text)
    if as_json:
        print_json(proof.model_dump(mode="json"))
    else:
        out.print(
            f"consistent: the ledger of {proof.new_size} entries extends "
            f"the saved checkpoint of {proof.old_size}",
            soft_wrap=True,
        )


_SHOW_COLUMNS = (
    "seq",
    "time (UTC)",
    "actor",
    "agency",
    "action",
    "package",
    "decision",
    "reason",
    "handling",
)


def _entry_filter(
    wanted: dict[str, str | None], start: datetime | None, stop: datetime | None
) -> Callable[[Entry], bool]:
    """Whether an entry has every ``wanted`` field value given and a time in [start, stop)."""

    def keep(entry: Entry) -> bool:
        if any(v is not None and getattr(entry, k) != v for k, v in wanted.items()):
            return False
        return not ((start and entry.time < start) or (stop and entry.time >= stop))

    return keep


def _entry_row(entry: Entry) -> list[Text]:
    """The cells of one entry in ``ledger show``'s table (_SHOW_COLUMNS)."""
    return render.cells(
        entry.seq,
        entry.time.strftime("%Y-%m-%d %H:%M:%S"),
        entry.actor_user,
        entry.actor_agency,
        entry.action,
        entry.package[:12],
        entry.decision,
        entry.reason,
        entry.handling,
    )


@app.command("show")
def ledger_show(
    actor: Annotated[str | None, typer.Option(help="Username.")] = None,
    agency: Annotated[str | None, typer.Option(help="Actor's agency code.")] = None,
    country: Annotated[str | None, typer.Option(help="Actor's country code.")] = None,
    package: Annotated[str | None, typer.Option(help="Package id.")] = None,
    action: Annotated[str | None, typer.Option(help="Action, e.g. download.")] = None,
    decision: Annotated[str | None, typer.Option(help="allow, deny or error.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time with zone.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 time with zone.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search the ledger: who did what to which package, allowed or refused."""
    start, stop = parse_time(since, "--since"), parse_time(until, "--until")
    wanted = {
        "actor_user": actor,
        "actor_agency": agency,
        "actor_country": country,
        "package": package,
        "action": action,
        "decision": decision,
    }
    keep = _entry_filter(wanted, start, stop)
    table = Table(*_SHOW_COLUMNS)
    with local_vault() as vault:
        for entry in filter(keep, vault.ledger_show(local_operator())):
            if as_json:
                commitments = {name: digest.hex() for name, digest in entry.commitments}
                print_json_line(
                    {**entry.__dict__, "time": entry.time.isoformat(), "commitments": commitments}
                )
            else:
                table.add_row(*_entry_row(entry))
    if not as_json:
        out.print(table)
