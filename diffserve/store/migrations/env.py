"""Alembic's environment: diffserve runs migrations itself (store/schema.py) on a connection it passes in
`config.attributes["connection"]`; there is no alembic.ini."""

from __future__ import annotations

from alembic import context

from diffserve.store.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
