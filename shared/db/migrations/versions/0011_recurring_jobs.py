"""Recurring jobs: one row per job declared in code, with its next and last occurrence.

Revision ID: ozzy_0011
Revises: ozzy_0010
Create Date: 2026-12-01

The occurrences themselves are scheduled events (``ozzy_scheduled``, key ``recurring:<name>``);
this row is what operators see (schedule, next and last run) and pause, and what the relays lock
while they schedule the next occurrence.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ozzy_0011"
down_revision = "ozzy_0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ozzy_recurring",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("schedule", sa.Text, nullable=False),
        sa.Column("missed", sa.Text, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("next_due_at", sa.DateTime(timezone=True)),
        sa.Column("last_due_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    # A job's occurrences, fired or not: its last run, and its history in the back office.
    op.create_index("ix_ozzy_scheduled_key", "ozzy_scheduled", ["key", "due_at"],
                    postgresql_where=sa.text("key IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_ozzy_scheduled_key", "ozzy_scheduled")
    op.drop_table("ozzy_recurring")
