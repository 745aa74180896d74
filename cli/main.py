"""``blovault``: the command line of BLO Vault.

Officer commands (login, package ...) talk to a vault server over HTTP. Admin bootstrap and
ledger commands work on the configured database directly, through the same service layer,
as the local operator. Each command group lives in its own module under ``cli/commands/``;
this module assembles them and turns every error into one line and an exit code.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType

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
        err.print(render.line(f"error: {_os_error(exc)}"))
        return 1
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        # Every failure should arrive as a VaultError; one that does not is a bug here or a
        # reply nothing checked. Its text may hold what a server sent: render.line cleans it.
        err.print(render.line(f"error: unexpected {type(exc).__name__}: {exc}"))
        return 1
    return result if isinstance(result, int) else 0


def _os_error(exc: OSError) -> str:
    """An OSError as the user can act on it: which file, and what went wrong with it."""
    reason = exc.strerror or str(exc)
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived: raised in the main thread so that every ``finally`` and
    ``except BaseException`` on the way out runs (a download removes its partial plaintext).
    Its exit code is the shell's for a signal, 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_on_signals() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP (timeout(1), systemd, a closed SSH session)
    raise :class:`Terminated` instead of killing the process outright, which would leave a
    download's partial plaintext behind. The previous handlers come back afterwards."""
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# Commands that run a server keep the handlers they found: uvicorn handles SIGTERM itself (a
# graceful shutdown), then raises it again under the handler it found, so that the process
# ends "killed by SIGTERM" as service managers expect; a server has no partial file to remove.
_SERVERS = (["serve"], ["witness", "serve"])


def main() -> None:
    """Console-script entry point: ``run`` with SIGTERM and SIGHUP turned into a clean exit
    (128 + the signal's number, nothing partial kept), except for the servers."""
    argv = sys.argv[1:]
    serving = any(argv[: len(command)] == command for command in _SERVERS)
    try:
        with contextlib.nullcontext() if serving else _terminate_on_signals():
            code = run(argv)
    except Terminated as exc:
        err.print(render.line(f"terminated ({exc.signal_name})"))
        raise
    sys.exit(code)
