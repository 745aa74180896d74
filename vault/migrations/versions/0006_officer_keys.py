"""officer keys: Ed25519 keys officers sign packages with (issue 13)

Revision ID: 0006_officer_keys
Revises: 0004_web_sessions
Create Date: 2026-12-05 23:50:00.000000

A new table only; existing packages stay unsigned (their sealed metadata has no signature).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vault.models import UTCDateTime

revision = "0006_officer_keys"
down_revision = "0005_seizures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "officerkey",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("public_key", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("registered_seq", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_seq", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("officerkey", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_officerkey_user_id"), ["user_id"], unique=False)
        batch_op.create_index(
            "ix_officerkey_one_active",
            ["user_id"],
            unique=True,
            sqlite_where=sa.text("revoked_at IS NULL"),
            postgresql_where=sa.text("revoked_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("officerkey", schema=None) as batch_op:
        batch_op.drop_index("ix_officerkey_one_active")
        batch_op.drop_index(batch_op.f("ix_officerkey_user_id"))
    op.drop_table("officerkey")
