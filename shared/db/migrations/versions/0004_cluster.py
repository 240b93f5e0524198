"""Cluster: a dispatch position for every event, and durable listener checkpoints.

Revision ID: ozzy_0004
Revises: ozzy_0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ozzy_0004"
down_revision = "ozzy_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CACHE 1 (the default) matters: relays take values in commit order under an advisory lock, and
    # a per-session cache would hand out numbers out of that order.
    op.execute("CREATE SEQUENCE ozzy_dispatch_seq CACHE 1")
    op.add_column("ozzy_outbox", sa.Column("dispatch_seq", sa.BigInteger))
    op.create_index(
        "ix_ozzy_outbox_dispatch_seq", "ozzy_outbox", ["dispatch_seq"], unique=True,
        postgresql_where=sa.text("dispatch_seq IS NOT NULL"),
    )
    # Retention deletes completed deliveries by age; this index holds only those.
    op.create_index(
        "ix_ozzy_deliveries_completed", "ozzy_deliveries", ["completed_at"],
        postgresql_where=sa.text("status IN ('done', 'resolved')"),
    )
    op.create_index("ix_ozzy_nodes_stopped", "ozzy_nodes", ["stopped_at"])
    op.create_table(
        "ozzy_checkpoints",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("ozzy_checkpoints")
    op.drop_index("ix_ozzy_nodes_stopped", table_name="ozzy_nodes")
    op.drop_index("ix_ozzy_deliveries_completed", table_name="ozzy_deliveries")
    op.drop_index("ix_ozzy_outbox_dispatch_seq", table_name="ozzy_outbox")
    op.drop_column("ozzy_outbox", "dispatch_seq")
    op.execute("DROP SEQUENCE ozzy_dispatch_seq")
