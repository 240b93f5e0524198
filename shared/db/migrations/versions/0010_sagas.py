"""Saga instances and the history of their steps.

Revision ID: ozzy_0010
Revises: ozzy_0009
Create Date: 2026-12-01

A saga instance is a row found by (saga type, key), versioned like any aggregate and locked by the
step that handles an event for it. A completed instance stays, with its steps, as history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "ozzy_0010"
down_revision = "ozzy_0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ozzy_sagas",
        sa.Column("saga_type", sa.Text, primary_key=True),
        sa.Column("instance_key", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("state", JSONB),
        sa.Column("timeouts", JSONB, nullable=False, server_default="[]"),
        sa.Column("steps", sa.Integer, nullable=False, server_default="0"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
    )
    # The back office lists instances by type and status, most recently changed first.
    op.create_index("ix_ozzy_sagas_type_status", "ozzy_sagas", ["saga_type", "status", "updated_at"])
    op.create_table(
        "ozzy_saga_steps",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("saga_type", sa.Text, nullable=False),
        sa.Column("instance_key", sa.Text, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("step", sa.Text, nullable=False),
        sa.Column("event_id", UUID(as_uuid=True)),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("state", JSONB),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ozzy_saga_steps_instance", "ozzy_saga_steps", ["saga_type", "instance_key", "seq"])


def downgrade() -> None:
    op.drop_table("ozzy_saga_steps")
    op.drop_table("ozzy_sagas")
