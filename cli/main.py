"""``blovault``: the command line of BLO Vault.

Officer commands (login, package ...) talk to a vault server over HTTP. Admin bootstrap and
ledger commands work on the configured database directly, through the same service layer,
as the local operator.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
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

from blo_vault.cli import render
from blo_vault.cli import session as stored
from blo_vault.cli.client import ApiClient
from blo_vault.cli.errors import exit_code_for
from blo_vault.cli.witness import witness_app
from vault.config import load_settings
from vault.errors import AuthenticationFailed, InvalidInput, StorageUnavailable, VaultError
from vault.models import Classification, Handling, Role
from vault.service import Vault, local_operator

app = typer.Typer(
    name="blovault",
    help="BLO Vault: encrypted, access-controlled, audited exchange between BLOs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
admin_app = typer.Typer(
    help="Bootstrap and manage countries, agencies and users (on this server).",
    no_args_is_help=True,
)
package_app = typer.Typer(
    help="Upload, list, show, download and release packages.", no_args_is_help=True
)
ledger_app = typer.Typer(
    help="Verify and inspect the access ledger (compliance).", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")
app.add_typer(package_app, name="package")
authz_app = typer.Typer(
    help="Ask why an access is allowed or denied (auditors, admins).", no_args_is_help=True
)
app.add_typer(ledger_app, name="ledger")
app.add_typer(authz_app, name="authz")
app.add_typer(witness_app, name="witness")

HANDLING_NOTICE = {
    "H0": "",
    "H1": "H1: not for use as evidence without the originator's consent",
    "H2": "H2: no onward dissemination without the originator's consent",
    "H3": "H3: other restrictions apply (acknowledged before download)",
}

# soft_wrap: messages stay one line whatever the terminal width (scripts grep them).
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def _local_vault(
    *, create: bool = False, repair: bool = True, require_guard: bool = True
) -> Iterator[Vault]:
    """The vault the settings point at. Only ``admin init`` may create one; ``ledger verify``
    passes ``repair=False`` so that the database it inspects is left exactly as it was."""
    vault = Vault.open(load_settings(), create=create, repair=repair, require_guard=require_guard)
    try:
        yield vault
    finally:
        vault.close()


def _client() -> ApiClient:
    saved = stored.load()
    return ApiClient(saved.server, session=saved)


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
    """Run the API server (embedded defaults unless VAULT_* settings say otherwise).

    X-Forwarded-For is believed only from the proxies in VAULT_TRUSTED_PROXIES (none by
    default); header, body and rate limits come from the VAULT_* settings as well.
    """
    import uvicorn

    from blo_vault.api.observability import LOG_CONFIG
    from blo_vault.api.server import server_options

    settings = load_settings()
    # Open once here so configuration errors (e.g. development keys in production) stop us
    # before the server binds, with a clear message.
    Vault.open(settings, create=False).close()
    if os.environ.get("FORWARDED_ALLOW_IPS") and not settings.trusted_proxies:
        err.print("FORWARDED_ALLOW_IPS is ignored: set VAULT_TRUSTED_PROXIES to trust a proxy")
    err.print(f"BLO Vault listening on {'https' if tls_cert else 'http'}://{host}:{port}")
    uvicorn.run(
        "blo_vault.api.asgi:app",
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        access_log=False,  # blo_vault.api.observability logs each request as JSON instead
        log_config=LOG_CONFIG,
        **server_options(settings),
    )


@app.command()
def login(
    server: Annotated[str, typer.Option(help="Vault server URL, e.g. https://vault.example:8443")],
    username: Annotated[str, typer.Option(help="Your username.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> None:
    """Log in: a session that renews itself until idle too long or the shift is over.

    Kept in the config directory (mode 0600); 'blovault logout' ends it.
    """
    password = _read_password(password_stdin)
    with ApiClient(server) as client:
        result = client.login(username, password)
    path = stored.save(stored.from_tokens(server, username, result))
    err.print(
        render.line(
            f"logged in as {username}; session kept in {path} (ends after "
            f"{result.get('refresh_expires_in', result['expires_in'])} s idle, at most "
            f"{result.get('session_expires_in', result['expires_in'])} s)"
        )
    )


@app.command()
def logout() -> None:
    """End the session on the server and forget it here (even if the server can't be told)."""
    saved = stored.load()
    try:
        with ApiClient(saved.server, session=saved) as client:
            client.logout()
    except AuthenticationFailed:
        # Already over on the server (timed out, revoked): nothing there to end.
        stored.delete()
        err.print("warning: the session had already ended on the server; forgotten here")
        return
    except StorageUnavailable:
        stored.delete()
        err.print(
            "warning: the server could not be reached, so the session was NOT ended there: "
            "it stays usable by whoever holds a copy of its tokens until it times out. "
            "Forgotten here."
        )
        raise
    stored.delete()
    err.print(render.line(f"logged out {saved.username}; the session has ended"))


@app.command()
def passwd(
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the current, then the new password from stdin."
        ),
    ] = False,
) -> None:
    """Change your password. Every session of yours ends; this one continues in a new one."""
    saved = stored.load()
    if password_stdin:
        current, new = _read_password(True), _read_password(True)
    else:
        current = typer.prompt("Current password", hide_input=True)
        new = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    with ApiClient(saved.server, session=saved) as client:
        result = client.change_password(current, new)
    stored.save(stored.from_tokens(saved.server, saved.username, result))
    err.print(
        render.line(
            f"password changed for {saved.username}; every other session of yours has ended "
            f"(ledger #{result['receipt']})"
        )
    )


# --- admin ----------------------------------------------------------------------------------


@admin_app.command("init")
def admin_init() -> None:
    """Create the database schema, data folder and (in development) keys.

    The only command that creates a vault; on an existing one it upgrades the schema."""
    with _local_vault(create=True) as vault:
        err.print(
            f"vault initialised: database {vault.engine.url.render_as_string(hide_password=True)}"
        )


@admin_app.command("migrate")
def admin_migrate(
    grant_app_role: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL: role the service runs as; gets SELECT/INSERT only on ledger tables."
        ),
    ] = None,
) -> None:
    """Upgrade the database schema to this version (run as the schema owner)."""
    from vault.db import grant_app_role as grant
    from vault.db import make_engine, migrate, require_existing

    settings = load_settings()
    # An empty PostgreSQL database is how a production schema starts (as its owner); an
    # SQLite vault is only ever created by 'admin init'.
    require_existing(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        revision = migrate(engine)
        if grant_app_role:
            grant(engine, grant_app_role)
    finally:
        engine.dispose()
    err.print(
        f"schema at revision {revision}"
        + (f"; role {grant_app_role} granted" if grant_app_role else "")
    )


@admin_app.command("gen-keys")
def gen_keys(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Folder for the key files (created 0700).")
    ],
) -> None:
    """Generate production key files: KEK, token signing key, ledger log key (mode 0600)."""
    from vault.keys import generate_key_files

    for env_name, path in generate_key_files(out_dir).items():
        out.print(f"{env_name}={path}", markup=False, soft_wrap=True)


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
    clearance: Annotated[
        Classification, typer.Option(help="Highest classification the user may read.")
    ] = Classification.UNCLASSIFIED,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add a user (password prompted twice, or read from stdin)."""
    password = _read_password(password_stdin, confirm=True)
    with _local_vault() as vault:
        user = vault.add_user(
            local_operator(),
            username=username,
            agency=agency,
            role=role,
            password=password,
            clearance=clearance,
        )
    if as_json:
        _print_json(user.model_dump(mode="json"))
    else:
        err.print(f"user {user.username} ({user.role.value}, {user.agency}) added")


@admin_app.command("set-user")
def set_user(
    username: str,
    role: Annotated[Role | None, typer.Option(help="New role.")] = None,
    clearance: Annotated[Classification | None, typer.Option(help="New clearance.")] = None,
    disable: Annotated[
        bool | None, typer.Option("--disable/--enable", help="Disable or re-enable the account.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a user's role or clearance, or disable them; every session of theirs ends."""
    with _local_vault() as vault:
        user = vault.set_user(
            local_operator(), username, role=role, clearance=clearance, disabled=disable
        )
    if as_json:
        _print_json(user.model_dump(mode="json"))
    else:
        state = "disabled" if user.disabled else "enabled"
        err.print(f"user {user.username}: {user.role.value}, {user.clearance.value}, {state}")


@admin_app.command("rotate-kek")
def rotate_kek() -> None:
    """Re-wrap every data key under VAULT_KEK_FILE; older KEKs come from VAULT_KEK_OLD_FILES."""
    with _local_vault() as vault:
        count = vault.rotate_kek(local_operator())
        current = vault.keys.keyring.current.id
    err.print(f"{count} keys re-wrapped under {current}; the old KEK files are no longer needed")


@admin_app.command("purge")
def purge(
    package_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Destroy a package for good: its keys first (crypto-shredding), then its objects."""
    if not yes:
        typer.confirm(f"Destroy package {package_id} irreversibly?", abort=True)
    with _local_vault() as vault:
        receipt = vault.purge(local_operator(), package_id)
    err.print(f"package {package_id} purged (ledger #{receipt})")


@admin_app.command("gc")
def admin_gc(
    grace_minutes: Annotated[
        int, typer.Option(min=0, help="Spare objects younger than this (uploads in flight).")
    ] = 60,
    as_json: JsonOpt = False,
) -> None:
    """Remove stray objects and interrupted writes no package refers to (recorded in the ledger)."""
    from datetime import timedelta

    with _local_vault() as vault:
        objects, temp, receipt = vault.gc(local_operator(), grace=timedelta(minutes=grace_minutes))
    if as_json:
        _print_json({"objects_removed": objects, "temp_files_removed": temp, "receipt": receipt})
    else:
        err.print(
            f"removed {objects} stray objects and {temp} interrupted writes (ledger #{receipt})"
        )


@admin_app.command("add-rule")
def add_rule(
    line: Annotated[
        str,
        typer.Argument(help="p, role, relation, clearance, handling, acknowledged, action, effect"),
    ],
) -> None:
    """Add a Casbin rule on top of policies/policy.csv (recorded with the new policy hash)."""
    with _local_vault() as vault:
        digest = vault.change_rule(local_operator(), line, add=True)
    err.print(f"rule added; policy version {digest}")


@admin_app.command("remove-rule")
def remove_rule(line: Annotated[str, typer.Argument(help="The rule exactly as added.")]) -> None:
    """Remove a rule an admin added."""
    with _local_vault() as vault:
        digest = vault.change_rule(local_operator(), line, add=False)
    err.print(f"rule removed; policy version {digest}")


@admin_app.command("rules")
def list_rules(as_json: JsonOpt = False) -> None:
    """List the rules admins added, and the policy version in force."""
    with _local_vault() as vault:
        rules = vault.rules(local_operator())
        digest = vault.authz.policy_hash
    if as_json:
        _print_json({"policy_hash": digest, "rules": rules})
        return
    out.print(f"policy version {digest}")
    for rule in rules:
        out.print(render.text(rule))


# --- packages -------------------------------------------------------------------------------


# "+90m", "+12h", "+1d", "+2w": from now, so a release window can be given without a calendar.
_RELATIVE = re.compile(r"\+(\d{1,6})([mhdw])")
_UNIT = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _parse_time(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    relative = _RELATIVE.fullmatch(value.strip())
    if relative:
        amount, unit = relative.groups()
        return datetime.now(UTC) + timedelta(**{_UNIT[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{what}: use ISO 8601 with a zone, e.g. 2026-12-01T00:00:00+05:00, or a time "
            "from now such as +12h or +30d"
        ) from None
    if moment.tzinfo is None:
        raise InvalidInput(f"{what}: the time must carry a zone, e.g. +05:00 or Z")
    return moment


@package_app.command("upload")
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
    as_json: JsonOpt = False,
) -> None:
    """Upload files as one package."""
    metadata = {
        "title": title,
        "description": description,
        "classification": classification.value,
        "handling": handling.value,
        "handling_note": handling_note,
    }
    total = sum(p.stat().st_size for p in paths)
    with _client() as client, _progress(total, "uploading") as advance:
        result = client.upload(paths, metadata, advance)
    if as_json:
        _print_json({"id": result["package"]["id"], **result})
    else:
        out.print(
            render.line(
                "uploaded package ",
                render.text(result["package"]["id"], style="bold"),
                f" (ledger #{result['receipt']})",
            )
        )


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
        table.add_row(
            *(
                render.text(value)
                for value in (
                    p["id"],
                    p["title"],
                    p["agency"],
                    p["classification"],
                    p["handling"],
                    p["file_count"],
                    p["size"],
                    str(p["created_at"])[:19],
                )
            )
        )
    out.print(table)


@package_app.command("show")
def package_show(package_id: str, as_json: JsonOpt = False) -> None:
    """Show one package."""
    with _client() as client:
        detail = client.show(package_id)
    if as_json:
        _print_json(detail)
        return
    out.print(render.line(render.text(detail["title"], style="bold"), f"  ({detail['id']})"))
    out.print(
        render.line(
            f"from {detail['agency']} ({detail['country']}), "
            f"{detail['classification']}, {detail['handling']}"
        )
    )
    if HANDLING_NOTICE.get(detail["handling"]):
        out.print(render.text(HANDLING_NOTICE[detail["handling"]], style="bold yellow"))
    if detail["handling_note"]:
        out.print(
            render.line("restrictions: ", render.text(detail["handling_note"], multiline=True))
        )
    if detail["description"]:
        out.print(render.text(detail["description"], multiline=True))
    for key, value in (detail.get("fields") or {}).items():
        out.print(render.line(f"{key}: {value}"))
    files = Table("file id", "name", "size", "sha256")
    for f in detail["files"]:
        files.add_row(*(render.text(v) for v in (f["id"], f["name"], f["size"], f["sha256"])))
    out.print(files)
    if detail["releases"]:
        rel = Table("release id", "country", "agency", "status", "not before", "expires")
        for r in detail["releases"]:
            rel.add_row(
                *(
                    render.text(value)
                    for value in (
                        r["id"],
                        r["country"],
                        r["agency"] or "(all)",
                        r["status"],
                        r["not_before"] or "",
                        r["expires_at"] or "",
                    )
                )
            )
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
            written = client.download(
                package_id, output, force=force, progress=advance, detail=detail
            )
    notice = HANDLING_NOTICE.get(detail["handling"], "")
    if as_json:
        _print_json(
            {"id": package_id, "handling": detail["handling"], "files": [str(p) for p in written]}
        )
    else:
        if notice:
            err.print(render.text(notice, style="bold yellow"))
        for path in written:
            out.print(render.line(f"saved {path}"))


@package_app.command("release")
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
        out.print(
            render.line(
                f"release {result['release']['id']} ({result['release']['status']}) "
                f"(ledger #{result['receipt']})"
            )
        )


def _print_release(result: dict[str, Any], as_json: bool) -> None:
    release = result["release"]
    if as_json:
        _print_json({"id": release["id"], **result})
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


@package_app.command("request-release")
def package_request_release(
    package_id: str,
    country: Annotated[str, typer.Option(help="Country the release is asked for.")],
    agency: Annotated[str | None, typer.Option(help="Only this agency of the country.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask the originating agency to release a package onward (H2); its supervisor decides."""
    with _client() as client:
        result = client.call(
            "POST",
            f"/packages/{package_id}/release-requests",
            json={"country": country, "agency": agency},
        )
    _print_release(result, as_json)


@package_app.command("approve")
def package_approve(release_id: str, as_json: JsonOpt = False) -> None:
    """Approve a pending release (supervisor of the originating agency, not the requester)."""
    with _client() as client:
        result = client.call("POST", f"/releases/{release_id}/approve")
    _print_release(result, as_json)


@package_app.command("reject")
def package_reject(release_id: str, as_json: JsonOpt = False) -> None:
    """Reject a pending release."""
    with _client() as client:
        result = client.call("POST", f"/releases/{release_id}/reject")
    _print_release(result, as_json)


@package_app.command("revoke")
def package_revoke(
    package_id: str,
    release: Annotated[str, typer.Option("--release", help="Release id to revoke.")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a release; it stops granting access on the next request."""
    with _client() as client:
        result = client.call("POST", f"/packages/{package_id}/releases/{release}/revoke")
    _print_release(result, as_json)


@package_app.command("acknowledge")
def package_acknowledge(package_id: str, as_json: JsonOpt = False) -> None:
    """Acknowledge an H3 package's restrictions (required before the first download)."""
    with _client() as client:
        detail = client.show(package_id)
        if not as_json:
            note = render.text(detail["handling_note"] or "(none stated)", multiline=True)
            out.print(render.line("restrictions: ", note))
        result = client.call("POST", f"/packages/{package_id}/acknowledge")
    if as_json:
        _print_json({"id": package_id, **result})
    else:
        out.print(render.line(f"acknowledged (ledger #{result['receipt']})"))


@package_app.command("audit")
def package_audit(package_id: str, as_json: JsonOpt = False) -> None:
    """Auditor's view of a package: who, when, how sensitive, released to whom; no content."""
    with _client() as client:
        view = client.call("GET", f"/packages/{package_id}/audit")
    if as_json:
        _print_json(view)
        return
    out.print(
        render.line(
            f"{view['id']}: from {view['agency']} ({view['country']}), {view['classification']}, "
            f"{view['handling']}, {view['file_count']} files, {view['size']} bytes"
        )
    )
    table = Table("release id", "to", "status", "kind", "in force", "requested by", "decided by")
    for r in view["releases"]:
        table.add_row(
            *(
                render.text(value)
                for value in (
                    r["id"],
                    f"{r['country']} {r['agency'] or ''}".strip(),
                    r["status"],
                    r["kind"],
                    "yes" if r["in_force"] else "no",
                    r["requested_by"],
                    r["decided_by"] or "",
                )
            )
        )
    out.print(table)


@authz_app.command("explain")
def authz_explain(
    user: Annotated[str, typer.Option(help="Username asked about.")],
    package: Annotated[str, typer.Option(help="Package id.")],
    action: Annotated[str, typer.Option(help="Action, e.g. download, release, approve.")],
    as_json: JsonOpt = False,
) -> None:
    """Say whether USER may do ACTION to PACKAGE, and which rules, facts and policy decided."""
    with _client() as client:
        result = client.call(
            "GET", "/authz/explain", params={"user": user, "package": package, "action": action}
        )
    if as_json:
        _print_json(result)
        return
    verdict = render.text("ALLOW", style="green") if result["allowed"] is True else None
    out.print(
        render.line(
            verdict or render.text("DENY", style="red"),
            f" {result['user']} {result['action']} {result['package']}",
        )
    )
    out.print(render.line(f"policy version {result['policy_hash']}"))
    if result.get("facts") is not None:
        for key, value in result["facts"].items():
            out.print(render.line(f"  {key}: {value}"))
        out.print(render.line(f"  deciding relation: {result['relation'] or '(none)'}"))
        for rule in result["rules"] or []:
            out.print(render.line(f"  rule: p, {', '.join(str(r) for r in rule)}"))
        for grant in result["grants"] or []:
            out.print(render.line(f"  release in force: {grant}"))
        for n in result["notes"] or []:
            out.print(render.line(f"  note: {n}"))


# --- ledger ---------------------------------------------------------------------------------


@contextmanager
def _counter(label: str, total: int | None) -> Iterator[Any]:
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        "{task.completed}/{task.total} entries",
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)


def _report_verify(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(report)
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


@ledger_app.command("verify")
def ledger_verify(
    export: Annotated[
        Path | None, typer.Option(help="Verify this export file offline (no server, no database).")
    ] = None,
    vkey: Annotated[
        str | None, typer.Option(help="The log's verifier key (required with --export).")
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
        from vault.ledger.verify import verify_export

        if not vkey:
            raise InvalidInput("--export needs --vkey: the key you trust, obtained out of band")
        try:
            document = json.loads(export.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read export file: {exc}") from None
        if not isinstance(document, dict):
            raise InvalidInput("export file is not a JSON object")
        total = len(document.get("entries") or [])
        with _counter("verifying", total) as advance:
            result = verify_export(document, vkey, progress=advance)
        _report_verify(result.as_dict(), as_json)
        return
    # A production ledger whose append-only guard was removed still gets verified (with a
    # warning): that is when an auditor most needs to see what was done to it.
    with _local_vault(repair=False, require_guard=False) as vault:
        total = vault.ledger_size()
        with _counter("verifying", total) as advance:
            report = vault.verify_ledger(local_operator(), progress=advance, workers=jobs)
    _report_verify(report.model_dump(mode="json"), as_json)


@ledger_app.command("export")
def ledger_export(
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    as_json: JsonOpt = False,
) -> None:
    """Write the ledger and its latest signed checkpoint as one JSON document."""
    tmp = output.with_name(f".{output.name}.part")
    with _local_vault() as vault:
        total = vault.ledger_size()
        try:
            with tmp.open("w", encoding="utf-8") as handle, _counter("exporting", total) as advance:
                info = vault.export_ledger(local_operator(), handle, progress=advance)
            tmp.replace(output)
        finally:
            tmp.unlink(missing_ok=True)
    if as_json:
        _print_json({"file": str(output), "size": info.size, "vkey": info.vkey})
    else:
        out.print(f"exported {info.size} entries to {output}", soft_wrap=True)
        out.print(f"verifier key: {info.vkey}", soft_wrap=True)


@ledger_app.command("checkpoint")
def ledger_checkpoint(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Also save the signed note here.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sign a checkpoint of the ledger now (or show the latest if nothing changed)."""
    with _local_vault() as vault:
        info = vault.latest_checkpoint(local_operator())
    if output is not None:
        output.write_text(info.note, encoding="utf-8")
    if as_json:
        _print_json(info.model_dump(mode="json"))
    else:
        sys.stdout.write(info.note)


@ledger_app.command("prove")
def ledger_prove(seq: Annotated[int, typer.Argument(min=0)], as_json: JsonOpt = False) -> None:
    """Inclusion proof of entry SEQ against the latest checkpoint."""
    with _local_vault() as vault:
        proof = vault.inclusion_proof(local_operator(), seq)
    if as_json:
        _print_json(proof.model_dump(mode="json"))
        return
    out.print(
        f"entry {seq} is included in the tree of {proof.tree_size} entries (root {proof.root})",
        soft_wrap=True,
    )
    for h in proof.hashes:
        out.print(f"  {h}", soft_wrap=True)


@ledger_app.command("consistency")
def ledger_consistency(
    old: Annotated[Path, typer.Option(help="A checkpoint saved earlier (signed note file).")],
    as_json: JsonOpt = False,
) -> None:
    """Prove the ledger extends a saved checkpoint; exit 1 if it was rolled back or forked."""
    try:
        old_text = old.read_text("utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {old}: {exc.strerror}") from None
    with _local_vault() as vault:
        proof = vault.consistency_proof(local_operator(), old_text)
    if as_json:
        _print_json(proof.model_dump(mode="json"))
    else:
        out.print(
            f"consistent: the ledger of {proof.new_size} entries extends "
            f"the saved checkpoint of {proof.old_size}",
            soft_wrap=True,
        )


@ledger_app.command("show")
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
    start, stop = _parse_time(since, "--since"), _parse_time(until, "--until")
    wanted = {
        "actor_user": actor,
        "actor_agency": agency,
        "actor_country": country,
        "package": package,
        "action": action,
        "decision": decision,
    }
    table = Table(
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
    with _local_vault() as vault:
        for entry in vault.ledger_show(local_operator()):
            if any(v is not None and getattr(entry, k) != v for k, v in wanted.items()):
                continue
            if (start and entry.time < start) or (stop and entry.time >= stop):
                continue
            if as_json:
                sys.stdout.write(
                    json.dumps({**entry.__dict__, "time": entry.time.isoformat()}) + "\n"
                )
            else:
                table.add_row(
                    *(
                        render.text(value)
                        for value in (
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
                    )
                )
    if not as_json:
        out.print(table)


# --- entry point ----------------------------------------------------------------------------


def run(argv: list[str]) -> int:
    """Run the command line with ``argv`` and return the exit code; errors are one line."""
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
        err.print(render.line(f"error: {exc.message}{receipt}"))
        return exit_code_for(exc)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except OSError as exc:
        err.print(render.line(f"error: {exc.strerror or exc}"))
        return 1
    return result if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:]))
