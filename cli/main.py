"""``blovault``: the command line of BLO Vault.

Officer commands (login, package ...) talk to a vault server over HTTP. Admin bootstrap and
ledger commands work on the configured database directly, through the same service layer,
as the local operator.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TransferSpeedColumn,
)
from rich.table import Table

from cli import session as stored
from cli.client import ApiClient
from cli.errors import exit_code_for
from vault.config import load_settings
from vault.errors import InvalidInput, VaultError
from vault.models import Classification, Handling, Role
from vault.service import Vault, local_operator

app = typer.Typer(
    name="blovault",
    help="BLO Vault: encrypted, access-controlled, audited exchange between Border Liaison Offices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
admin_app = typer.Typer(help="Bootstrap and manage countries, agencies and users (on this server).", no_args_is_help=True)
package_app = typer.Typer(help="Upload, list, show, download and release packages.", no_args_is_help=True)
ledger_app = typer.Typer(help="Verify and inspect the access ledger (compliance).", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(package_app, name="package")
app.add_typer(ledger_app, name="ledger")

out = Console()
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def _local_vault() -> Iterator[Vault]:
    vault = Vault.open(load_settings())
    try:
        yield vault
    finally:
        vault.close()


def _client() -> ApiClient:
    saved = stored.load()
    return ApiClient(saved.server, saved.token)


def _read_password(from_stdin: bool, *, confirm: bool = False) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return value


@contextmanager
def _progress(total: int, label: str) -> Iterator[Any]:
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


# --- server ---------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
) -> None:
    """Run the API server (embedded defaults unless VAULT_* settings say otherwise)."""
    import uvicorn

    settings = load_settings()
    # Open once here so configuration errors (e.g. development keys in production) stop us
    # before the server binds, with a clear message.
    Vault.open(settings).close()
    err.print(f"BLO Vault listening on {'https' if tls_cert else 'http'}://{host}:{port}")
    uvicorn.run(
        "api.asgi:app",
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        server_header=False,
        log_level="info",
    )


@app.command()
def login(
    server: Annotated[str, typer.Option(help="Vault server URL, e.g. https://vault.example:8443")],
    username: Annotated[str, typer.Option(help="Your username.")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Log in and keep the token in the config directory (mode 0600)."""
    password = _read_password(password_stdin)
    with ApiClient(server) as client:
        result = client.login(username, password)
    path = stored.save(stored.StoredSession(server=server, username=username, token=result["access_token"]))
    err.print(f"logged in as {username}; token kept in {path} (expires in {result['expires_in']} s)")


# --- admin ----------------------------------------------------------------------------------


@admin_app.command("init")
def admin_init() -> None:
    """Create the database schema, data folder and (in development) keys."""
    with _local_vault() as vault:
        err.print(f"vault initialised: database {vault.engine.url.render_as_string(hide_password=True)}")


@admin_app.command("add-country")
def add_country(
    code: Annotated[str, typer.Argument(help="ISO 3166-1 alpha-2 code, e.g. UZ.")],
    name: Annotated[str, typer.Option(help="Country name.")],
) -> None:
    """Add a country."""
    with _local_vault() as vault:
        receipt = vault.add_country(local_operator(), code, name)
    err.print(f"country {code} added (ledger #{receipt})")


@admin_app.command("add-agency")
def add_agency(
    code: Annotated[str, typer.Argument(help="Agency code, e.g. UZ-CUSTOMS.")],
    country: Annotated[str, typer.Option(help="Country code.")],
    name: Annotated[str, typer.Option(help="Agency name.")],
) -> None:
    """Add an agency of a country."""
    with _local_vault() as vault:
        receipt = vault.add_agency(local_operator(), code, country, name)
    err.print(f"agency {code} added (ledger #{receipt})")


@admin_app.command("add-user")
def add_user(
    username: Annotated[str, typer.Argument(help="Login name (a-z, 0-9, '.', '_', '-').")],
    agency: Annotated[str, typer.Option(help="Agency code.")],
    role: Annotated[Role, typer.Option(help="Role.")],
    clearance: Annotated[Classification, typer.Option(help="Highest classification the user may read.")] = Classification.UNCLASSIFIED,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add a user (password prompted twice, or read from stdin)."""
    password = _read_password(password_stdin, confirm=True)
    with _local_vault() as vault:
        user = vault.add_user(
            local_operator(), username=username, agency=agency, role=role, password=password,
            clearance=clearance,
        )
    if as_json:
        _print_json(user.model_dump(mode="json"))
    else:
        err.print(f"user {user.username} ({user.role.value}, {user.agency}) added")


# --- packages -------------------------------------------------------------------------------


def _parse_time(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{what}: use ISO 8601 with a zone, e.g. 2026-12-01T00:00:00+05:00") from None
    if moment.tzinfo is None:
        raise InvalidInput(f"{what}: the time must carry a zone, e.g. +05:00 or Z")
    return moment


@package_app.command("upload")
def package_upload(
    paths: Annotated[list[Path], typer.Argument(help="Files to upload.", exists=True, dir_okay=False, readable=True)],
    title: Annotated[str, typer.Option(help="Package title (stored encrypted).")],
    description: Annotated[str, typer.Option(help="Description (stored encrypted).")] = "",
    classification: Annotated[Classification, typer.Option(help="Classification.")] = Classification.UNCLASSIFIED,
    handling: Annotated[Handling, typer.Option(help="Handling code.")] = Handling.H0,
    handling_note: Annotated[str, typer.Option(help="H3 restrictions, in words.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Upload files as one package."""
    metadata = {
        "title": title, "description": description, "classification": classification.value,
        "handling": handling.value, "handling_note": handling_note,
    }
    total = sum(p.stat().st_size for p in paths)
    with _client() as client, _progress(total, "uploading") as advance:
        result = client.upload(paths, metadata, advance)
    if as_json:
        _print_json({"id": result["package"]["id"], **result})
    else:
        out.print(f"uploaded package [bold]{result['package']['id']}[/] (ledger #{result['receipt']})")


@package_app.command("list")
def package_list(
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOpt = False,
) -> None:
    """List the packages you may read."""
    with _client() as client:
        result = client.list_packages(limit=limit, offset=offset)
    if as_json:
        _print_json(result)
        return
    table = Table("id", "title", "from", "class.", "handling", "files", "size", "created")
    for p in result["items"]:
        table.add_row(p["id"], p["title"], p["agency"], p["classification"], p["handling"],
                      str(p["file_count"]), str(p["size"]), p["created_at"][:19])
    out.print(table)


@package_app.command("show")
def package_show(package_id: str, as_json: JsonOpt = False) -> None:
    """Show one package."""
    with _client() as client:
        detail = client.show(package_id)
    if as_json:
        _print_json(detail)
        return
    out.print(f"[bold]{detail['title']}[/]  ({detail['id']})")
    out.print(f"from {detail['agency']} ({detail['country']}), {detail['classification']}, {detail['handling']}")
    if detail["handling_note"]:
        out.print(f"handling: {detail['handling_note']}")
    if detail["description"]:
        out.print(detail["description"])
    files = Table("file id", "name", "size", "sha256")
    for f in detail["files"]:
        files.add_row(f["id"], f["name"], str(f["size"]), f["sha256"])
    out.print(files)
    if detail["releases"]:
        rel = Table("release id", "country", "agency", "status", "not before", "expires")
        for r in detail["releases"]:
            rel.add_row(r["id"], r["country"], r["agency"] or "(all)", r["status"],
                        str(r["not_before"] or ""), str(r["expires_at"] or ""))
        out.print(rel)


@package_app.command("download")
def package_download(
    package_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="Destination folder.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download every file of a package; each is checked against its digest before it is kept."""
    with _client() as client:
        detail = client.show(package_id)
        total = sum(f["size"] for f in detail["files"])
        with _progress(total, "downloading") as advance:
            written = client.download(package_id, output, force=force, progress=advance)
    if as_json:
        _print_json({"id": package_id, "files": [str(p) for p in written]})
    else:
        for path in written:
            out.print(f"saved {path}")


@package_app.command("release")
def package_release(
    package_id: str,
    country: Annotated[str, typer.Option(help="Country code to release to.")],
    agency: Annotated[str | None, typer.Option(help="Only this agency of the country.")] = None,
    not_before: Annotated[str | None, typer.Option(help="ISO 8601 time the release starts.")] = None,
    expires: Annotated[str | None, typer.Option(help="ISO 8601 time the release ends.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Release a package to a country, or one agency of it."""
    body = {
        "country": country,
        "agency": agency,
        "not_before": (t.isoformat() if (t := _parse_time(not_before, "--not-before")) else None),
        "expires_at": (t.isoformat() if (t := _parse_time(expires, "--expires")) else None),
    }
    with _client() as client:
        result = client.release(package_id, body)
    if as_json:
        _print_json({"id": result["release"]["id"], **result})
    else:
        out.print(f"release {result['release']['id']} ({result['release']['status']}) (ledger #{result['receipt']})")


# --- ledger ---------------------------------------------------------------------------------


@ledger_app.command("verify")
def ledger_verify(as_json: JsonOpt = False) -> None:
    """Verify the ledger in the configured database; exit 1 naming the first bad entry."""
    with _local_vault() as vault:
        report = vault.verify_ledger(local_operator())
    if as_json:
        _print_json(report.model_dump(mode="json"))
    elif report.ok:
        out.print(f"ledger intact: {report.size} entries, head {report.head_hash}")
    else:
        err.print(f"ledger NOT intact: first bad entry #{report.first_bad_seq}: {report.problem}")
    if not report.ok:
        raise typer.Exit(1)


# --- entry point ----------------------------------------------------------------------------


def run(argv: list[str]) -> int:
    """Run the command line with ``argv``; return the exit code (errors as one line, never a traceback)."""
    try:
        result = app(args=argv, prog_name="blovault", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        err.print("aborted")
        return 130
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    except VaultError as exc:
        receipt = f" (ledger #{exc.receipt})" if exc.receipt is not None else ""
        err.print(f"error: {exc.message}{receipt}", highlight=False, markup=False)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except OSError as exc:
        err.print(f"error: {exc.strerror or exc}", highlight=False, markup=False)
        return 1
    return result if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:]))
