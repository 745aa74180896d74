"""web sessions: the web interface's browser sessions, shared by every server worker

Revision ID: 0004_web_sessions
Revises: 0003_witnessed_checkpoint
Create Date: 2026-12-05 22:40:00.000000

Before this revision web sessions lived in the server process; none carry over (every browser
signs in once more after the upgrade, as after any restart before it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_web_sessions"
down_revision = "0003_witnessed_checkpoint"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "websession",
        sa.Column("key", sa.LargeBinary(length=32), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("signed_in", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("websession", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_websession_last_seen"), ["last_seen"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("websession", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_websession_last_seen"))
    op.drop_table("websession")
