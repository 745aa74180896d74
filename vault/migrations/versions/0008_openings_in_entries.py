"""ledger openings move into their entries' rows

Revision ID: 0008_openings_in_entries
Revises: 0007
Create Date: 2026-12-06 03:00:00.000000

A separate ``ledgeropening`` table cost every committed (v2) append a second statement and a
second page written and synced: appends ran at 0.75-0.85 of version 1's rate against the 0.90
issue 18 asks. The sealed opening now sits in nullable columns of the entry's own row, and the
append-only guard refuses an UPDATE only when it sets one of the columns the ledger's proofs
rest on (``seq``, ``prev_hash``, ``entry``), so purge and retention can still destroy an
opening. On PostgreSQL every role that may append to the ledger is also granted UPDATE of the
opening columns (what ``admin grant-app-role`` now grants), so an app role keeps working.

The moved openings keep their per-entry wrapped keys (``opening_key``); new ones are sealed
under a key derived from the KEK (vault.service.ledger_openings). The downgrade moves the first
kind back and refuses while any of the second kind exists.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from vault.db import append_only_statements
from vault.models import LEDGER_OPENING_COLUMNS, UTCDateTime

revision = "0008_openings_in_entries"
down_revision = "0007"
branch_labels = None
depends_on = None

_COLUMNS: list[sa.Column[Any]] = [
    sa.Column("opening_package", sa.String(length=32), nullable=True),
    sa.Column("opening_countries", sa.String(length=64), nullable=True),
    sa.Column("opening_at", UTCDateTime(), nullable=True),
    sa.Column("opening_kek_id", sa.String(length=64), nullable=True),
    sa.Column("opening_key", sa.LargeBinary(), nullable=True),
    sa.Column("opening_sealed", sa.LargeBinary(), nullable=True),
]
_OLD = "package, countries, created_at, kek_id, wrapped_key, sealed"
_NEW = ", ".join(LEDGER_OPENING_COLUMNS)
# Built from this module's constants only, nothing from outside (hence the noqa).
_MOVE_IN = (
    f"UPDATE ledgerentry SET ({_NEW})"  # noqa: S608
    f" = (SELECT {_OLD} FROM ledgeropening o WHERE o.seq = ledgerentry.seq)"
    " WHERE seq IN (SELECT seq FROM ledgeropening)"
)
_MOVE_OUT = (
    f"INSERT INTO ledgeropening (seq, {_OLD})"  # noqa: S608
    f" SELECT seq, {_NEW} FROM ledgerentry WHERE opening_sealed IS NOT NULL"
)


def upgrade() -> None:
    assert tuple(c.name for c in _COLUMNS) == LEDGER_OPENING_COLUMNS
    bind = op.get_bind()
    for column in _COLUMNS:
        op.add_column("ledgerentry", column)
    # The guard in its new form first: the copy below is an UPDATE of the opening columns.
    for statement in append_only_statements(bind.dialect.name):
        op.execute(statement)
    op.execute(_MOVE_IN)
    op.drop_table("ledgeropening")
    if bind.dialect.name == "postgresql":
        _grant_opening_updates()


def _grant_opening_updates() -> None:
    """Every role other than the owner that may append entries may now destroy openings."""
    bind = op.get_bind()
    roles = bind.exec_driver_sql(
        "SELECT DISTINCT grantee FROM information_schema.role_table_grants"
        " WHERE table_schema = current_schema() AND table_name = 'ledgerentry'"
        " AND privilege_type = 'INSERT' AND grantee <> current_user AND grantee <> 'PUBLIC'"
    )
    quote = bind.dialect.identifier_preparer.quote
    for (role,) in roles.all():
        op.execute(f"GRANT UPDATE ({_NEW}) ON ledgerentry TO {quote(role)}")


def downgrade() -> None:
    # Openings written since this revision are sealed under a key derived from the KEK, with
    # no wrapped key of their own; revision 0007's table has no way to hold them, and this
    # migration has no KEK to re-seal them with. Refuse rather than drop them.
    derived = op.get_bind().exec_driver_sql(
        "SELECT count(*) FROM ledgerentry WHERE opening_sealed IS NOT NULL AND opening_key IS NULL"
    )
    if count := derived.scalar_one():
        raise RuntimeError(
            f"{count} ledger openings are sealed under the KEK's derived key, which revision"
            " 0007 cannot hold: downgrading would lose them"
        )
    op.create_table(
        "ledgeropening",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("package", sa.String(length=32), nullable=False),
        sa.Column("countries", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("kek_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.execute(_MOVE_OUT)
    for column in reversed(_COLUMNS):
        op.drop_column("ledgerentry", column.name)
