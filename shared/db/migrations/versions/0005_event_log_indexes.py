"""Event-log indexes measured at a million rows (bench/event_log.py).

Revision ID: ozzy_0005
Revises: ozzy_0004
Create Date: 2026-11-26

- The back office and the API filter by aggregate id alone; ``(aggregate_type, aggregate_id)`` made
  every such query read the whole index. ``(aggregate_id, id)`` serves the filter newest first.
- "Not dispatched" (with or without parked rows) gets a partial index of its own; the relay's index
  also requires ``parked_at IS NULL`` and could not serve it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ozzy_0005"
down_revision = "ozzy_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_ozzy_outbox_aggregate", table_name="ozzy_outbox")
    op.create_index("ix_ozzy_outbox_aggregate", "ozzy_outbox", ["aggregate_id", "id"])
    op.create_index(
        "ix_ozzy_outbox_not_dispatched", "ozzy_outbox", ["id"], postgresql_where=sa.text("dispatched_at IS NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_ozzy_outbox_not_dispatched", table_name="ozzy_outbox")
    op.drop_index("ix_ozzy_outbox_aggregate", table_name="ozzy_outbox")
    op.create_index("ix_ozzy_outbox_aggregate", "ozzy_outbox", ["aggregate_type", "aggregate_id"])
