"""index targets (client_id, state): a client's active target

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_targets_client_state", "targets", ["client_id", "state"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_targets_client_state", table_name="targets")
