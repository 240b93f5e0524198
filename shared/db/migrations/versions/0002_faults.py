"""Parked outbox rows, failure times and reasons on deliveries, and the node registry.

Revision ID: ozzy_0002
Revises: ozzy_0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "ozzy_0002"
down_revision = "ozzy_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ozzy_outbox", sa.Column("parked_at", sa.DateTime(timezone=True)))
    op.add_column("ozzy_outbox", sa.Column("park_reason", sa.Text))
    op.drop_index("ix_ozzy_outbox_undispatched", table_name="ozzy_outbox")
    op.create_index(
        "ix_ozzy_outbox_undispatched",
        "ozzy_outbox",
        ["id"],
        postgresql_where=sa.text("dispatched_at IS NULL AND parked_at IS NULL"),
    )
    op.create_index(
        "ix_ozzy_outbox_parked", "ozzy_outbox", ["event_type"], postgresql_where=sa.text("parked_at IS NOT NULL")
    )

    op.add_column("ozzy_deliveries", sa.Column("first_failed_at", sa.DateTime(timezone=True)))
    op.add_column("ozzy_deliveries", sa.Column("last_failed_at", sa.DateTime(timezone=True)))
    op.add_column("ozzy_deliveries", sa.Column("dead_reason", sa.Text))

    op.create_table(
        "ozzy_nodes",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),
        sa.Column("info", JSONB, nullable=False, server_default="{}"),
    )
    op.create_index("ix_ozzy_nodes_heartbeat", "ozzy_nodes", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_table("ozzy_nodes")
    op.drop_column("ozzy_deliveries", "dead_reason")
    op.drop_column("ozzy_deliveries", "last_failed_at")
    op.drop_column("ozzy_deliveries", "first_failed_at")
    op.drop_index("ix_ozzy_outbox_parked", table_name="ozzy_outbox")
    op.drop_index("ix_ozzy_outbox_undispatched", table_name="ozzy_outbox")
    op.create_index(
        "ix_ozzy_outbox_undispatched", "ozzy_outbox", ["id"], postgresql_where=sa.text("dispatched_at IS NULL")
    )
    op.drop_column("ozzy_outbox", "park_reason")
    op.drop_column("ozzy_outbox", "parked_at")
