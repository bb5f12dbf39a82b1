"""Alembic's environment: the server passes its open connection (``config.attributes["connection"]``)
and everything runs inside the transaction server/migrations.py holds, with its lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from fleetcast.server.db import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "fleetcast's schema revisions run from server/migrations.py (fleetcast serve), "
        "which passes its connection; found none"
    )
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():  # the caller's transaction: no new one is begun
    context.run_migrations()
