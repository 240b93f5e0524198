"""Outbox (the domain event log) and per-handler deliveries (the idempotency inbox).

Revision ID: ozzy_0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "ozzy_0001"
down_revision = None
branch_labels = ("ozzy",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ozzy_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("event_version", sa.Integer, nullable=False),
        sa.Column("aggregate_type", sa.Text),
        sa.Column("aggregate_id", sa.Text),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("metadata", JSONB, nullable=False),
        sa.Column("correlation_id", UUID(as_uuid=True)),
        sa.Column("causation_id", UUID(as_uuid=True)),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("dispatched_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "ix_ozzy_outbox_undispatched", "ozzy_outbox", ["id"], postgresql_where=sa.text("dispatched_at IS NULL")
    )
    op.create_index("ix_ozzy_outbox_aggregate", "ozzy_outbox", ["aggregate_type", "aggregate_id"])
    op.create_index("ix_ozzy_outbox_correlation", "ozzy_outbox", ["correlation_id"])
    op.create_index("ix_ozzy_outbox_causation", "ozzy_outbox", ["causation_id"])
    op.create_index("ix_ozzy_outbox_type_id", "ozzy_outbox", ["event_type", "id"])

    op.create_table(
        "ozzy_deliveries",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column(
            "event_id",
            UUID(as_uuid=True),
            sa.ForeignKey("ozzy_outbox.event_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("handler", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("enqueued_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("event_id", "handler", name="uq_ozzy_deliveries_event_handler"),
    )
    op.create_index(
        "ix_ozzy_deliveries_open",
        "ozzy_deliveries",
        ["status", "handler", "enqueued_at"],
        postgresql_where=sa.text("status <> 'done'"),
    )


def downgrade() -> None:
    op.drop_table("ozzy_deliveries")
    op.drop_table("ozzy_outbox")
