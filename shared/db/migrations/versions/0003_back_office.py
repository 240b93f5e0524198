"""Back office: operators, API tokens, runtime settings, feature flags; event-log time index.

Revision ID: ozzy_0003
Revises: ozzy_0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "ozzy_0003"
down_revision = "ozzy_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ozzy_users",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("username", sa.Text, nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("last_login_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "ozzy_api_tokens",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("ozzy_users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False, unique=True),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "ozzy_settings",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("value", JSONB, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_by", sa.Text),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.CheckConstraint("type IN ('string', 'integer', 'boolean', 'json')", name="ck_ozzy_settings_type"),
    )
    op.create_table(
        "ozzy_flags",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_by", sa.Text),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_index("ix_ozzy_outbox_occurred_at", "ozzy_outbox", ["occurred_at"])
    # Deliveries an operator marked resolved are finished work, like done ones.
    op.drop_index("ix_ozzy_deliveries_open", table_name="ozzy_deliveries")
    op.create_index(
        "ix_ozzy_deliveries_open",
        "ozzy_deliveries",
        ["status", "handler", "enqueued_at"],
        postgresql_where=sa.text("status NOT IN ('done', 'resolved')"),
    )


def downgrade() -> None:
    op.drop_index("ix_ozzy_deliveries_open", table_name="ozzy_deliveries")
    op.create_index(
        "ix_ozzy_deliveries_open",
        "ozzy_deliveries",
        ["status", "handler", "enqueued_at"],
        postgresql_where=sa.text("status <> 'done'"),
    )
    op.drop_index("ix_ozzy_outbox_occurred_at", table_name="ozzy_outbox")
    op.drop_table("ozzy_flags")
    op.drop_table("ozzy_settings")
    op.drop_table("ozzy_api_tokens")
    op.drop_table("ozzy_users")
