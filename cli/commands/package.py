"""``blovault package`` upload, list, show and download; the group also carries the release
commands (:mod:`blo_vault.cli.commands.release`) and the auditor's view
(:mod:`blo_vault.cli.commands.audit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from blo_vault.cli import render
from blo_vault.cli.client import file_list
from blo_vault.cli.commands import audit, release, signing
from blo_vault.cli.commands._common import JsonOpt, api_client, transfer_progress
from blo_vault.cli.commands.keys import VkeyOpt
from blo_vault.cli.errors import field, obj, objects
from blo_vault.cli.render import err, out, print_json
from vault.kinds import Classification, Handling
from vault.seizures.importer import read_records

app = typer.Typer(help="Upload, list, show, download and release packages.", no_args_is_help=True)

HANDLING_NOTICE = {
    "H0": "",
    "H1": "H1: not for use as evidence without the originator's consent",
    "H2": "H2: no onward dissemination without the originator's consent",
    "H3": "H3: other restrictions apply (acknowledged before download)",
}


@app.command("upload")
def package_upload(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Files to upload.", exists=True, dir_okay=False, readable=True),
    ],
    title: Annotated[str, typer.Option(help="Package title (stored encrypted).")],
    description: Annotated[str, typer.Option(help="Description (stored encrypted).")] = "",
    classification: Annotated[
        Classification, typer.Option(help="Classification.")
    ] = Classification.UNCLASSIFIED,
    handling: Annotated[Handling, typer.Option(help="Handling code.")] = Handling.H0,
    handling_note: Annotated[str, typer.Option(help="H3 restrictions, in words.")] = "",
    records: Annotated[
        Path | None,
        typer.Option(
            help="Seizure records (.csv or .xlsx) to store with the package; every row is "
            "checked first, nothing is uploaded if any is bad.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    unsigned: Annotated[
        bool, typer.Option("--unsigned", help="Do not sign, even with a registered key.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Upload files as one package (with its seizure records, if given), signed with your
    registered key if you have one."""
    total = sum(p.stat().st_size for p in paths)
    seizures = None
    if records is not None:
        # Checked here, before a byte is sent, by the same schema the server checks again.
        seizures = [r.model_dump(mode="json") for r in read_records(records)]
    signer = None if unsigned else signing.upload_signer()
    with api_client() as client, transfer_progress(total, "uploading") as advance:
        result = client.upload(
            paths,
            title=title,
            description=description,
            classification=classification.value,
            handling=handling.value,
            handling_note=handling_note,
            progress=advance,
            records=seizures,
            signer=signer,
        )
    if as_json:
        print_json({"id": result["package"]["id"], **result})
    else:
        out.print(
            render.line(
                "uploaded package ",
                render.text(result["package"]["id"], style="bold"),
                f" (ledger #{result['receipt']})",
            )
        )


# The columns of ``package list``, in order, as the server names them.
_SUMMARY_FIELDS = (
    "id",
    "title",
    "agency",
    "classification",
    "handling",
    "file_count",
    "size",
    "created_at",
)
# What ``package show`` prints of a package's details (each checked present before printing).
_DETAIL_FIELDS = (
    "id",
    "title",
    "agency",
    "country",
    "classification",
    "handling",
    "handling_note",
    "description",
)


@app.command("list")
def package_list(
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOpt = False,
) -> None:
    """List the packages you may read."""
    with api_client() as client:
        result = client.list_packages(limit=limit, offset=offset)
    if as_json:
        print_json(result)
        return
    table = Table("id", "title", "from", "class.", "handling", "files", "size", "created")
    for p in objects(result, "items", "package list"):
        values = [field(p, name, object, "package summary") for name in _SUMMARY_FIELDS]
        values[-1] = str(values[-1])[:19]  # created_at, to the second
        table.add_row(*render.cells(*values))
    out.print(table)


@app.command("show")
def package_show(package_id: str, as_json: JsonOpt = False) -> None:
    """Show one package."""
    with api_client() as client:
        detail = client.show(package_id)
    if as_json:
        print_json(detail)
        return
    for name in _DETAIL_FIELDS:
        field(detail, name, object, "package details")
    files = file_list(detail)
    out.print(render.line(render.text(detail["title"], style="bold"), f"  ({detail['id']})"))
    out.print(
        render.line(
            f"from {detail['agency']} ({detail['country']}), "
            f"{detail['classification']}, {detail['handling']}"
        )
    )
    notice = HANDLING_NOTICE.get(detail["handling"]) if isinstance(detail["handling"], str) else ""
    if notice:
        out.print(render.text(notice, style="bold yellow"))
    if detail["handling_note"]:
        out.print(
            render.line("restrictions: ", render.text(detail["handling_note"], multiline=True))
        )
    if detail["description"]:
        out.print(render.text(detail["description"], multiline=True))
    signature = signing.signature_of(detail)
    fields = obj(detail.get("fields") or {}, "package fields")
    if fields and signature is not None:
        # The manifest covers title, description, records and files, not these.
        out.print(render.line("fields (not covered by the signature):"))
    for key, value in fields.items():
        out.print(render.line(f"{key}: {value}"))
    out.print(render.line(signing.signature_line(signature)))
    table = Table("file id", "name", "size", "sha256")
    for f in files:
        table.add_row(*render.cells(f["id"], f["name"], f["size"], f["sha256"]))
    out.print(table)
    releases = objects(detail, "releases", "package details") if detail.get("releases") else []
    if releases:
        rel = Table("release id", "country", "agency", "status", "not before", "expires")
        for r in releases:
            rel.add_row(
                *render.cells(
                    *(field(r, name, object, "release") for name in ("id", "country")),
                    r.get("agency") or "(all)",
                    field(r, "status", object, "release"),
                    r.get("not_before") or "",
                    r.get("expires_at") or "",
                )
            )
        out.print(rel)


@app.command("download")
def package_download(
    package_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="Destination folder.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
    vkey: VkeyOpt = None,
    manifest: Annotated[
        Path | None,
        typer.Option(help="Save the signature and its proofs here, for 'package verify'."),
    ] = None,
    policy: signing.PolicyOpt = None,
    require_signed: signing.RequireSignedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Download every file of a package; each is checked against its digest, and a signed
    package against its originator's signature, before anything is kept."""
    with api_client() as client:
        detail = client.show(package_id)
        check = signing.download_check(
            client, detail, vkey, manifest, policy, require_signed=require_signed
        )
        total = sum(f["size"] for f in file_list(detail))
        with transfer_progress(total, "downloading") as advance:
            written = client.download(
                package_id,
                output,
                force=force,
                progress=advance,
                detail=detail,
                before_keeping=check,
            )
    handling = detail.get("handling")
    notice = HANDLING_NOTICE.get(handling, "") if isinstance(handling, str) else ""
    signature = signing.signature_of(detail)
    if as_json:
        print_json(
            {
                "id": package_id,
                "handling": handling,
                "files": [str(p) for p in written],
                "signature": signing.signature_json(signature),
            }
        )
    else:
        if notice:
            err.print(render.text(notice, style="bold yellow"))
        err.print(render.line(signing.signature_line(signature, checked=True)))
        if policy is not None:
            err.print(render.line("the key's registration is in a checkpoint the policy accepts"))
        for path in written:
            out.print(render.line(f"saved {path}"))


app.command("verify")(signing.package_verify)

# Merged after the commands above: the help lists them in this order.
app.add_typer(release.app)
app.add_typer(audit.package_app)
