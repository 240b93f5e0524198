"""Scheduled events: events committed now, to be delivered at a time.

Revision ID: ozzy_0009
Revises: ozzy_0008
Create Date: 2026-12-01

A unit of work can publish an event for later (``uow.schedule``). The row is committed with the
business change like any event, and waits here, in PostgreSQL, until it is due: then a relay moves
it into the outbox (the event log) in the same transaction that marks it fired, so it is delivered
once, whatever Redis does and however many relays run. Cancelling before it fires marks it
cancelled; a fired or cancelled row is kept as history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "ozzy_0009"
down_revision = "ozzy_0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ozzy_scheduled",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("event_version", sa.Integer, nullable=False),
        sa.Column("aggregate_type", sa.Text),
        sa.Column("aggregate_id", sa.Text),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("metadata", JSONB, nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="scheduled"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("fired_at", sa.DateTime(timezone=True)),
        sa.Column("cancelled_at", sa.DateTime(timezone=True)),
    )
    # The relay's timer reads only rows still waiting, earliest first.
    op.create_index("ix_ozzy_scheduled_due", "ozzy_scheduled", ["due_at"],
                    postgresql_where=sa.text("status = 'scheduled'"))
    # A key names at most one waiting event (a saga's timeout, a recurring job's next occurrence).
    op.create_index("ux_ozzy_scheduled_key", "ozzy_scheduled", ["key"], unique=True,
                    postgresql_where=sa.text("status = 'scheduled' AND key IS NOT NULL"))


def downgrade() -> None:
    op.drop_table("ozzy_scheduled")
