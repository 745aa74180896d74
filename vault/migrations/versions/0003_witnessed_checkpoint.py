"""witnessed checkpoint: the newest checkpoint cosigned by a quorum, and each witness's lag

Revision ID: 0003_witnessed_checkpoint
Revises: 0002
Create Date: 2026-12-05 21:10:00.000000

Written by the server's witness publisher (VAULT_WITNESS_POLICY); read by
``GET /ledger/witnessed-checkpoint``, ``blovault ledger checkpoint --witnessed``, ``ledger
status`` and ``/metrics``. Not part of the ledger: a lost row is re-published on the next round.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

from vault.models import UTCDateTime

# 64-bit ledger positions, as in 0001.
_POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0003_witnessed_checkpoint"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "witnessedcheckpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("size", _POSITION, nullable=False),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "witnesslag",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("size", _POSITION, nullable=False),
        sa.Column("cosigned_at", UTCDateTime(), nullable=True),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column("checked_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("witnesslag")
    op.drop_table("witnessedcheckpoint")
