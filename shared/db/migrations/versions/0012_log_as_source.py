"""The event log as a source: projections and their checkpoints (#14, items 3 to 6).

Revision ID: ozzy_0012
Revises: ozzy_0011
Create Date: 2026-12-03

A projection's checkpoint is a row here, updated in the transaction that writes the projection's
own tables, so a batch of events is applied together with the position it brings the read model
to: never twice, never skipped. The feed, listener retries and parked event versions need no
schema: they read ``dispatch_seq`` and use the delivery status ``parked``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ozzy_0012"
down_revision = "ozzy_0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ozzy_projections",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("rebuild_started_at", sa.DateTime(timezone=True)),
        sa.Column("rebuilt_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("failed_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("ozzy_projections")
