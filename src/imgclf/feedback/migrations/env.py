"""Alembic environment: runs on the connection :mod:`imgclf.feedback.migrate` hands over (online only)."""

from __future__ import annotations

from alembic import context

from imgclf.feedback.migrate import VERSION_TABLE
from imgclf.feedback.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                  render_as_batch=True)  # SQLite alters tables by copying them
with context.begin_transaction():
    context.run_migrations()
