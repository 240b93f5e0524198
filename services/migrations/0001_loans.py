"""Loan applications and their notifications (the example domain).

Revision ID: loans_0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "loans_0001"
down_revision = None
branch_labels = ("loans",)
depends_on = "ozzy_0001"


def upgrade() -> None:
    op.create_table(
        "loan_applications",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("applicant_name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("credit_score", sa.Integer),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_table(
        "loan_notifications",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("application_id", sa.Uuid, sa.ForeignKey("loan_applications.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("loan_notifications")
    op.drop_table("loan_applications")
