"""``blovault``: the command line of BLO Vault.

Officer commands (login, package ...) talk to a vault server over HTTP. Admin bootstrap and
ledger commands work on the configured database directly, through the same service layer,
as the local operator. Each command group lives in its own module under ``cli/commands/``;
this module assembles them and turns every error into one line and an exit code.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer

from blo_vault.cli import render
from blo_vault.cli.errors import exit_code_for
from blo_vault.cli.render import err, out
from vault.errors import VaultError

# ``out`` and ``err`` are the consoles of blo_vault.cli.render, named here for callers that
# size them.
__all__ = ["build_app", "err", "main", "out", "run"]  # and ``app``, built on first use

# Each command group: its module under blo_vault.cli.commands, the Typer app in it and the name
# it is added under (None: its commands are top-level), in the order the help lists them.
# A command line naming a group imports only that group's module: the admin, ledger and server
# modules import the whole service layer (SQLAlchemy, the policy engine, migrations: over a
# second on a small machine), which an upload or download over HTTP has no use for.
_GROUPS: tuple[tuple[str, str, str | None], ...] = (
    ("server", "app", None),
    ("auth", "app", None),
    ("admin", "app", "admin"),
    ("package", "app", "package"),
    ("keys", "app", "keys"),
    ("ledger", "app", "ledger"),
    ("stats", "app", "stats"),
    ("audit", "authz_app", "authz"),
    ("witness", "witness_app", "witness"),
)


def build_app(only: str | None = None) -> typer.Typer:
    """The command line; with ``only`` a group's name, just that group (same commands, same
    help for them)."""
    root = typer.Typer(
        name="blovault",
        help="BLO Vault: encrypted, access-controlled, audited exchange between BLOs.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for module, attribute, name in _GROUPS:
        if only is None or name == only:
            group = getattr(importlib.import_module(f"blo_vault.cli.commands.{module}"), attribute)
            if name:
                root.add_typer(group, name=name)
            else:
                root.add_typer(group)
    return root


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole command line, built on first use."""
    if name == "app":
        return build_app()
    raise AttributeError(name)


def run(argv: list[str]) -> int:
    """Run the command line with ``argv`` and return the exit code; errors are one line."""
    groups = {name for _, _, name in _GROUPS if name}
    cli = build_app(argv[0] if argv and argv[0] in groups else None)
    try:
        result = cli(args=argv, prog_name="blovault", standalone_mode=False)
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
