"""Deliveries no longer carry a foreign key to the outbox.

Revision ID: ozzy_0007
Revises: ozzy_0006
Create Date: 2026-11-26

The relay inserts one pending delivery per (event, handler) for every event it dispatches, and the
key's check looked each event up again (and share-locked its row) in the same transaction that had
just claimed it: about a third of that INSERT's time (bench/pipeline.py, section 1: 30 -> 20 µs per
event). Only the relay and the workers write deliveries, always for an event they read from the
log; the log is permanent unless an outbox retention is configured, and that retention now deletes
the deliveries of the events it prunes in the same statement (``shared.db.sql.PRUNE_OUTBOX``).
"""

from __future__ import annotations

from alembic import op

revision = "ozzy_0007"
down_revision = "ozzy_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("ozzy_deliveries_event_id_fkey", "ozzy_deliveries", type_="foreignkey")


def downgrade() -> None:
    op.execute(
        "DELETE FROM ozzy_deliveries d WHERE NOT EXISTS (SELECT 1 FROM ozzy_outbox o WHERE o.event_id = d.event_id)"
    )
    op.create_foreign_key(
        "ozzy_deliveries_event_id_fkey", "ozzy_deliveries", "ozzy_outbox", ["event_id"], ["event_id"], ondelete="CASCADE"
    )
