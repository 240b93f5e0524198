"""Fewer index entries for every event written and every event dispatched.

Revision ID: ozzy_0006
Revises: ozzy_0005
Create Date: 2026-11-26

Every business commit that raises an event pays for each index entry of its outbox row (in WAL and
so in the commit's flush). ``ix_ozzy_outbox_not_dispatched`` held the same rows as the relay's
``ix_ozzy_outbox_undispatched`` plus the few parked ones, for the back office alone. The back office
now asks for "not dispatched" as two arms, one per existing partial index (undispatched, parked),
which the planner answers with a BitmapOr over both (bench/event_log.py: 0.2 ms at a million rows).

``ix_ozzy_outbox_occurred_at`` becomes a BRIN index. The log is appended in time order, so block
ranges summarise it well; a B-tree added an entry on every insert and again on every dispatch (the
relay's update is never HOT), and its one user, a time-range filter, did not use it (the planner
walked the primary key instead).

``ix_ozzy_outbox_causation`` holds only events that have a cause. An event raised outside a
handler has none, and its NULL entry bought nothing: every lookup asks for one cause.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ozzy_0006"
down_revision = "ozzy_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_ozzy_outbox_not_dispatched", table_name="ozzy_outbox")
    op.drop_index("ix_ozzy_outbox_causation", table_name="ozzy_outbox")
    op.create_index(
        "ix_ozzy_outbox_causation", "ozzy_outbox", ["causation_id"], postgresql_where=sa.text("causation_id IS NOT NULL")
    )
    op.drop_index("ix_ozzy_outbox_occurred_at", table_name="ozzy_outbox")
    op.create_index("ix_ozzy_outbox_occurred_at", "ozzy_outbox", ["occurred_at"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("ix_ozzy_outbox_causation", table_name="ozzy_outbox")
    op.create_index("ix_ozzy_outbox_causation", "ozzy_outbox", ["causation_id"])
    op.drop_index("ix_ozzy_outbox_occurred_at", table_name="ozzy_outbox")
    op.create_index("ix_ozzy_outbox_occurred_at", "ozzy_outbox", ["occurred_at"])
    op.create_index(
        "ix_ozzy_outbox_not_dispatched", "ozzy_outbox", ["id"], postgresql_where=sa.text("dispatched_at IS NULL")
    )
