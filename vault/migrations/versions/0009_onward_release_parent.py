"""an onward release remembers the release it came from

Revision ID: 0009_onward_release_parent
Revises: 0008_openings_in_entries
Create Date: 2026-12-07 21:20:00.000000

A recipient's onward release (H0 and H1) now records the release that let its maker read
the package (``derived_from``), so that revoking that release revokes what was passed on with
it. Onward releases made before this revision have none: they stay as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_onward_release_parent"
down_revision = "0008_openings_in_entries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("release", schema=None) as batch_op:
        batch_op.add_column(sa.Column("derived_from", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_release_derived_from"), ["derived_from"])
        batch_op.create_foreign_key("fk_release_derived_from", "release", ["derived_from"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("release", schema=None) as batch_op:
        batch_op.drop_constraint("fk_release_derived_from", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_release_derived_from"))
        batch_op.drop_column("derived_from")
