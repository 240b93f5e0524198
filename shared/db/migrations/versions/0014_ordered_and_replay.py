"""Ordered handlers and replay/backfill (#14, items 1 and 2).

Revision ID: ozzy_0014
Revises: ozzy_0013
Create Date: 2026-12-03

* ``ozzy_deliveries.order_key`` and ``.dispatch_seq``: set by the relay only for the deliveries of
  handlers declared with ``ordered_by=`` (NULL, and so free, for every other handler). The partial
  index holds only the unfinished deliveries of ordered handlers: the worker asks it "is an earlier
  delivery of this key unfinished?" and "which is the next one?".
* ``ozzy_deliveries.replay_id``: the replay that last sent the delivery again.
* ``ozzy_delivery_history``: the earlier outcome of a delivery that a replay ran again.
* ``ozzy_replays``: one row per replay or backfill job, with the position it reached (resumable).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "ozzy_0014"
down_revision = "ozzy_0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ozzy_deliveries", sa.Column("order_key", sa.Text))
    op.add_column("ozzy_deliveries", sa.Column("dispatch_seq", sa.BigInteger))
    op.add_column("ozzy_deliveries", sa.Column("replay_id", sa.BigInteger))
    op.create_index(
        "ix_ozzy_deliveries_ordered", "ozzy_deliveries", ["handler", "order_key", "dispatch_seq"],
        postgresql_where=sa.text("order_key IS NOT NULL AND status NOT IN ('done', 'resolved')"),
    )
    op.create_table(
        "ozzy_replays",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("handler", sa.Text, nullable=False),
        sa.Column("filters", JSONB, nullable=False, server_default="{}"),
        sa.Column("status", sa.Text, nullable=False, server_default="running"),
        sa.Column("position", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("upto", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("sent", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("skipped", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_by", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.Index("ix_ozzy_replays_created", "created_at"),
    )
    op.create_table(
        "ozzy_delivery_history",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("delivery_id", sa.BigInteger, nullable=False),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("handler", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("dead_reason", sa.Text),
        sa.Column("enqueued_at", sa.DateTime(timezone=True)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("replay_id", sa.BigInteger),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Index("ix_ozzy_delivery_history_delivery", "delivery_id"),
    )


def downgrade() -> None:
    op.drop_table("ozzy_delivery_history")
    op.drop_table("ozzy_replays")
    op.drop_index("ix_ozzy_deliveries_ordered", "ozzy_deliveries")
    op.drop_column("ozzy_deliveries", "replay_id")
    op.drop_column("ozzy_deliveries", "dispatch_seq")
    op.drop_column("ozzy_deliveries", "order_key")
