"""The release commands of ``blovault package``: release, request, decide, revoke, and the
recipient's acknowledgement of an H3 package's restrictions."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from blo_vault.cli import render
from blo_vault.cli.commands._common import JsonOpt, api_client, parse_time
from blo_vault.cli.errors import field
from blo_vault.cli.render import out, print_json

# Unnamed: ``blo_vault.cli.commands.package`` merges these commands into its group.
app = typer.Typer()


@app.command("release")
def package_release(
    package_id: str,
    country: Annotated[str, typer.Option(help="Country code to release to.")],
    agency: Annotated[str | None, typer.Option(help="Only this agency of the country.")] = None,
    not_before: Annotated[
        str | None,
        typer.Option(help="When the release starts: ISO 8601 with a zone, or +12h, +1d, +2w."),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(help="When the release ends: ISO 8601 with a zone, or +12h, +30d, +2w."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Release a package to a country, or one agency of it."""
    starts = parse_time(not_before, "--not-before")
    ends = parse_time(expires, "--expires")
    with api_client() as client:
        result = client.release(
            package_id, country=country, agency=agency, not_before=starts, expires_at=ends
        )
    release = field(result, "release", dict, "release reply")
    if as_json:
        print_json({"id": release["id"], **result})
    else:
        out.print(
            render.line(
                f"release {release['id']} ({release['status']}) (ledger #{result['receipt']})"
            )
        )


def _print_release(result: dict[str, Any], as_json: bool) -> None:
    release = field(result, "release", dict, "release reply")
    if as_json:
        print_json({"id": release["id"], **result})
        return
    note = (
        " - waiting for a supervisor of the originating agency"
        if release["status"] == "pending"
        else ""
    )
    out.print(
        render.line(
            f"release {release['id']} is {release['status']}{note} (ledger #{result['receipt']})"
        )
    )


@app.command("request-release")
def package_request_release(
    package_id: str,
    country: Annotated[str, typer.Option(help="Country the release is asked for.")],
    agency: Annotated[str | None, typer.Option(help="Only this agency of the country.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask the originating agency to release a package onward (H2); its supervisor decides."""
    with api_client() as client:
        result = client.request_release(package_id, country=country, agency=agency)
    _print_release(result, as_json)


@app.command("approve")
def package_approve(release_id: str, as_json: JsonOpt = False) -> None:
    """Approve a pending release (supervisor of the originating agency, not the requester)."""
    with api_client() as client:
        result = client.approve_release(release_id)
    _print_release(result, as_json)


@app.command("reject")
def package_reject(release_id: str, as_json: JsonOpt = False) -> None:
    """Reject a pending release."""
    with api_client() as client:
        result = client.reject_release(release_id)
    _print_release(result, as_json)


@app.command("revoke")
def package_revoke(
    package_id: str,
    release: Annotated[str, typer.Option("--release", help="Release id to revoke.")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a release; it stops granting access on the next request."""
    with api_client() as client:
        result = client.revoke_release(package_id, release)
    _print_release(result, as_json)


@app.command("acknowledge")
def package_acknowledge(package_id: str, as_json: JsonOpt = False) -> None:
    """Acknowledge an H3 package's restrictions (required before the first download)."""
    with api_client() as client:
        detail = client.show(package_id)
        if not as_json:
            note = render.text(detail["handling_note"] or "(none stated)", multiline=True)
            out.print(render.line("restrictions: ", note))
        result = client.acknowledge(package_id)
    if as_json:
        print_json({"id": package_id, **result})
    else:
        out.print(render.line(f"acknowledged (ledger #{result['receipt']})"))
