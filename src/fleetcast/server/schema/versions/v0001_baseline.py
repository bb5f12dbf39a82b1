"""baseline: the schema of 2026-12-03 (create_all and the additive catch-up make it)

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing: a database older than versions is brought here by server/migrations.py's additive
    catch-up (missing tables and columns), then stamped."""


def downgrade() -> None:
    raise NotImplementedError("fleetcast's schema is not downgraded")
