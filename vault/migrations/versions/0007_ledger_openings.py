"""ledger openings: the sealed salts and values of committed (version 2) ledger entries

Revision ID: 0007
Revises: 0004_web_sessions
Create Date: 2026-12-05 23:45:00.000000

Entries written before this revision stay version 1 (fields in the clear) and need no row here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vault.models import UTCDateTime

# 64-bit ledger positions; INTEGER on SQLite, like ledgerentry.seq.
_POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0007"
down_revision = "0006_officer_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledgeropening",
        sa.Column("seq", _POSITION, nullable=False),
        sa.Column("package", sa.String(length=32), nullable=False),
        sa.Column("countries", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("kek_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    # No secondary index: each would cost every append one more page written and synced;
    # purge and retention, which look rows up by package and time, are rare and scan.


def downgrade() -> None:
    op.drop_table("ledgeropening")
