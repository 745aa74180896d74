"""What several command groups share: the ``--json`` option, the way to the vault (local or
over HTTP), password input, reading input files, progress bars and the time syntax of
``--since``/``--expires``."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from blo_vault.cli import session as stored
from blo_vault.cli.client import ApiClient
from blo_vault.cli.render import err
from vault.errors import InvalidInput

if TYPE_CHECKING:
    from vault.service import Vault

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


@contextmanager
def local_vault(
    *, create: bool = False, repair: bool = True, require_guard: bool = True
) -> Iterator[Vault]:
    """The vault the settings point at. Only ``admin init`` may create one; ``ledger verify``
    passes ``repair=False`` so that the database it inspects is left exactly as it was."""
    # Imported here: the service (SQLAlchemy, the policy engine, migrations) takes a second to
    # import, which a command that only talks HTTP (package upload/download) need not pay.
    from vault.config import load_settings
    from vault.service import Vault

    vault = Vault.open(load_settings(), create=create, repair=repair, require_guard=require_guard)
    try:
        yield vault
    finally:
        vault.close()


def api_client() -> ApiClient:
    """A client for the server of the stored session; raises AuthenticationFailed without one."""
    saved = stored.load()
    return ApiClient(saved.server, session=saved)


def read_password(from_stdin: bool, *, confirm: bool = False) -> str:
    """One line of stdin without its newline, or a hidden prompt (typed twice if ``confirm``)."""
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return value


def read_text(path: Path, what: str) -> str:
    """``path`` as UTF-8 text; InvalidInput naming ``what`` and the file when it can't be
    read or is not UTF-8 (never a traceback)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"cannot read {what} {path}: not UTF-8 (byte {exc.start})") from None


def read_json(
    path: Path, what: str, *, object_hook: Callable[[dict[str, Any]], Any] | None = None
) -> object:
    """``path`` parsed as JSON (each object through ``object_hook``, if given); InvalidInput
    naming ``what`` and the file when it can't be read, is not UTF-8, is not JSON, or nests
    too deeply for the parser."""
    text = read_text(path, what)
    try:
        return json.loads(text, object_hook=object_hook)
    except ValueError as exc:
        raise InvalidInput(f"cannot read {what} {path}: not JSON ({exc})") from None
    except RecursionError:
        # The parser recurses once per nesting level: "[" * 100000 exhausts the stack.
        raise InvalidInput(f"cannot read {what} {path}: JSON nested too deeply") from None


@contextmanager
def transfer_progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A byte progress bar on stderr (gone when done); yields ``advance(n_bytes)``."""
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


@contextmanager
def entry_counter(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A ledger-entry progress bar on stderr (gone when done); yields ``update(done)``."""
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        "{task.completed}/{task.total} entries",
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)


# "+90m", "+12h", "+1d", "+2w": from now, so a release window can be given without a calendar.
_RELATIVE = re.compile(r"\+(\d{1,6})([mhdw])")
_UNIT = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_day(value: str | None, what: str) -> date | None:
    """``value`` as a calendar day (YYYY-MM-DD); InvalidInput naming ``what`` otherwise."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"{what}: use a date such as 2014-05-01 (YYYY-MM-DD)") from None


def parse_time(value: str | None, what: str) -> datetime | None:
    """``value`` as an aware time: ISO 8601 with a zone, or ``+N`` m/h/d/w from now.

    Raises InvalidInput naming the option ``what`` when it is neither."""
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
