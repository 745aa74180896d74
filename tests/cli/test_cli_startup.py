"""What ``blovault package ...`` imports: only its own group, without the service layer.

An upload or download over HTTP pays for its interpreter's start-up; the service layer
(SQLAlchemy, SQLModel, the policy engine, migrations) is over a second of it on a small
machine, and the command never uses it. Checked in a fresh interpreter, by module names, not
by time.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sqlalchemy", "sqlmodel", "casbin", "alembic", "vault.service", "vault.models")

PROBE = """
import sys
from blo_vault.cli.main import build_app
import typer.main
typer.main.get_command(build_app({group!r}))
print(",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def imported(group: str | None) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(group=group, heavy=HEAVY)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return set(out.split(",")) - {""}


def test_package_commands_do_not_import_the_service_layer() -> None:
    assert imported("package") == set()


def test_the_whole_command_line_still_has_every_group() -> None:
    # The probe itself can fail: the full command line does import the service layer.
    assert "vault.service" in imported(None)
    from blo_vault.cli.main import build_app

    names = {g.name for g in build_app().registered_groups}
    assert {"admin", "package", "ledger", "authz", "witness"} <= names
