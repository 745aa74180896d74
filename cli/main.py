"""``blovault``: the command line of BLO Vault.

Officer commands (login, package ...) talk to a vault server over HTTP. Admin bootstrap and
ledger commands work on the configured database directly, through the same service layer,
as the local operator. Each command group lives in its own module under ``cli/commands/``;
this module assembles them and turns every error into one line and an exit code.
"""

from __future__ import annotations

import sys

import click
import typer

from blo_vault.cli import render
from blo_vault.cli.commands import (
    admin,
    audit,
    auth,
    keys,
    ledger,
    package,
    server,
    stats,
    witness,
)
from blo_vault.cli.errors import exit_code_for
from blo_vault.cli.render import err, out
from vault.errors import VaultError

# ``out`` and ``err`` are the consoles of blo_vault.cli.render, named here for callers that
# size them.
__all__ = ["app", "err", "main", "out", "run"]

app = typer.Typer(
    name="blovault",
    help="BLO Vault: encrypted, access-controlled, audited exchange between BLOs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# In the order the help lists them: top-level commands first, then the groups.
app.add_typer(server.app)
app.add_typer(auth.app)
app.add_typer(admin.app, name="admin")
app.add_typer(package.app, name="package")
app.add_typer(keys.app, name="keys")
app.add_typer(ledger.app, name="ledger")
app.add_typer(stats.app, name="stats")
app.add_typer(audit.authz_app, name="authz")
app.add_typer(witness.witness_app, name="witness")


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
