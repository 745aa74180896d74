"""seizures: crossing points and each package's sealed seizure records (issue 16)

Revision ID: 0005_seizures
Revises: 0004_web_sessions
Create Date: 2026-12-05 23:50:00.000000

Both tables are new; nothing existing changes. The records of a package are one sealed blob:
no record field (date, crossing point, commodity, quantity) is stored in clear.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005_seizures"
down_revision = "0004_web_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crossingpoint",
        sa.Column("code", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("country_code", sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("blo_opened", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(["country_code"], ["country.code"]),
        sa.PrimaryKeyConstraint("code"),
    )
    with op.batch_alter_table("crossingpoint", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_crossingpoint_country_code"), ["country_code"], unique=False
        )
    op.create_table(
        "packagerecords",
        sa.Column("package_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["package_id"], ["package.id"]),
        sa.PrimaryKeyConstraint("package_id"),
    )


def downgrade() -> None:
    op.drop_table("packagerecords")
    with op.batch_alter_table("crossingpoint", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_crossingpoint_country_code"))
    op.drop_table("crossingpoint")
