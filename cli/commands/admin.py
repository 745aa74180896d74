"""``blovault admin``: bootstrap and manage the vault on this server, as the local operator.

These commands open the configured database directly, through the same service layer the API
uses, so each is authorised and recorded like any other door.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import typer

from blo_vault.cli import render
from blo_vault.cli.commands._common import JsonOpt, local_vault, parse_day, read_password
from blo_vault.cli.render import err, out, print_json
from vault.config import load_settings
from vault.db import is_postgres
from vault.models import Classification, Role
from vault.service import local_operator
from vault.service.admin import GC_GRACE

app = typer.Typer(
    help="Bootstrap and manage countries, agencies and users (on this server).",
    no_args_is_help=True,
)


@app.command("init")
def admin_init() -> None:
    """Create the database schema, data folder and (in development) keys.

    The only command that creates a vault; on an existing one it upgrades the schema."""
    with local_vault(create=True) as vault:
        err.print(
            f"vault initialised: database {vault.engine.url.render_as_string(hide_password=True)}"
        )


@app.command("migrate")
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


@app.command("gen-keys")
def gen_keys(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Folder for the key files (created 0700).")
    ],
) -> None:
    """Generate production key files: KEK, token signing key, ledger log key (mode 0600)."""
    from vault.keys import generate_key_files

    for env_name, path in generate_key_files(out_dir).items():
        out.print(f"{env_name}={path}", markup=False, soft_wrap=True)


@app.command("add-crossing-point")
def add_crossing_point(
    code: Annotated[str, typer.Argument(help="Crossing point code, e.g. OYBEK.")],
    country: Annotated[str, typer.Option(help="ISO 3166-1 alpha-2 code of its country.")],
    name: Annotated[str, typer.Option(help="Its name.")],
    blo_opened: Annotated[str, typer.Option(help="Date its BLO opened (YYYY-MM-DD).")],
) -> None:
    """Register a border-crossing point and the date its BLO opened."""
    with local_vault() as vault:
        receipt = vault.add_crossing_point(
            local_operator(),
            code,
            country=country,
            name=name,
            blo_opened=parse_day(blo_opened, "--blo-opened") or date.min,
        )
    err.print(render.line(f"crossing point {code.upper()} added (ledger #{receipt})"))


@app.command("add-country")
def add_country(
    code: Annotated[str, typer.Argument(help="ISO 3166-1 alpha-2 code, e.g. UZ.")],
    name: Annotated[str, typer.Option(help="Country name.")],
) -> None:
    """Add a country."""
    with local_vault() as vault:
        receipt = vault.add_country(local_operator(), code, name)
    err.print(f"country {code} added (ledger #{receipt})")


@app.command("add-agency")
def add_agency(
    code: Annotated[str, typer.Argument(help="Agency code, e.g. UZ-CUSTOMS.")],
    country: Annotated[str, typer.Option(help="Country code.")],
    name: Annotated[str, typer.Option(help="Agency name.")],
) -> None:
    """Add an agency of a country."""
    with local_vault() as vault:
        receipt = vault.add_agency(local_operator(), code, country, name)
    err.print(f"agency {code} added (ledger #{receipt})")


@app.command("add-user")
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
    password = read_password(password_stdin, confirm=True)
    with local_vault() as vault:
        user = vault.add_user(
            local_operator(),
            username=username,
            agency=agency,
            role=role,
            password=password,
            clearance=clearance,
        )
    if as_json:
        print_json(user.model_dump(mode="json"))
    else:
        err.print(f"user {user.username} ({user.role.value}, {user.agency}) added")


@app.command("set-user")
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
    with local_vault() as vault:
        user = vault.set_user(
            local_operator(), username, role=role, clearance=clearance, disabled=disable
        )
    if as_json:
        print_json(user.model_dump(mode="json"))
    else:
        state = "disabled" if user.disabled else "enabled"
        err.print(f"user {user.username}: {user.role.value}, {user.clearance.value}, {state}")


@app.command("rotate-kek")
def rotate_kek() -> None:
    """Re-wrap every data key under VAULT_KEK_FILE; older KEKs come from VAULT_KEK_OLD_FILES."""
    with local_vault() as vault:
        count = vault.rotate_kek(local_operator())
        current = vault.keys.keyring.current.id
    err.print(
        f"{count} keys re-wrapped under {current}; the old KEK files are no longer needed "
        "if every server process already runs with this KEK (one still on the old KEK keeps "
        "writing under it: restart it and run rotate-kek again)"
    )


@app.command("purge")
def purge(
    package_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Destroy a package for good: its keys first (crypto-shredding), then its objects."""
    if not yes:
        typer.confirm(f"Destroy package {package_id} irreversibly?", abort=True)
    with local_vault() as vault:
        purged = vault.purge(local_operator(), package_id)
        postgres = is_postgres(vault.engine)
    err.print(f"package {package_id} purged (ledger #{purged.receipt})")
    if postgres:
        if not purged.log_emptied:
            err.print(
                "warning: this database role does not own the vault's tables, so the VACUUM "
                "was skipped; run 'blovault admin gc' as the owner role"
            )
        err.print(
            "note: PostgreSQL keeps the destroyed keys' old bytes in its table files and WAL "
            "until they are overwritten; 'VACUUM FULL package, packagefile, ledgerentry' as the "
            "owner rewrites the tables (it locks them), and WAL archives and backups keep theirs"
        )
    elif not purged.log_emptied:
        err.print(
            "warning: a reader held the database's write-ahead log, so old copies of the "
            "destroyed keys are still in the database's files; run 'blovault admin gc' when "
            "the vault is quieter to empty the log"
        )


@app.command("gc")
def admin_gc(
    grace_minutes: Annotated[
        int,
        typer.Option(
            min=0,
            help="Spare objects younger than this (uploads in flight; longer than any upload).",
        ),
    ] = int(GC_GRACE.total_seconds()) // 60,
    as_json: JsonOpt = False,
) -> None:
    """Remove stray objects and interrupted writes no package refers to (recorded in the ledger)."""
    with local_vault() as vault:
        objects, temp, receipt = vault.gc(local_operator(), grace=timedelta(minutes=grace_minutes))
    if as_json:
        print_json({"objects_removed": objects, "temp_files_removed": temp, "receipt": receipt})
    else:
        err.print(
            f"removed {objects} stray objects and {temp} interrupted writes (ledger #{receipt})"
        )


@app.command("add-rule")
def add_rule(
    line: Annotated[
        str,
        typer.Argument(help="p, role, relation, clearance, handling, acknowledged, action, effect"),
    ],
) -> None:
    """Add a Casbin rule on top of policies/policy.csv (recorded with the new policy hash)."""
    with local_vault() as vault:
        digest = vault.change_rule(local_operator(), line, add=True)
    err.print(f"rule added; policy version {digest}")


@app.command("remove-rule")
def remove_rule(line: Annotated[str, typer.Argument(help="The rule exactly as added.")]) -> None:
    """Remove a rule an admin added."""
    with local_vault() as vault:
        digest = vault.change_rule(local_operator(), line, add=False)
    err.print(f"rule removed; policy version {digest}")


@app.command("rules")
def list_rules(as_json: JsonOpt = False) -> None:
    """List the rules admins added, and the policy version in force."""
    with local_vault() as vault:
        rules = vault.rules(local_operator())
        digest = vault.authz.policy_hash
    if as_json:
        print_json({"policy_hash": digest, "rules": rules})
        return
    out.print(f"policy version {digest}")
    for rule in rules:
        out.print(render.text(rule))
