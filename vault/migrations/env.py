"""Alembic environment: runs the vault's migrations on the connection it is handed.

Used through :func:`vault.db.migrate` (``blovault admin migrate``), never the alembic command
line, so the same settings and engine rules apply.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from vault import models  # noqa: F401  (registers tables)

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
