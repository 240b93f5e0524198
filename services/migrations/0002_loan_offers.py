"""Approved applications become offers that expire: the expiry time, and the TTL setting.

Revision ID: loans_0002
Revises: loans_0001
Create Date: 2026-12-01

``loans.offer_ttl_seconds`` is a runtime setting (operators change it through the back office or
``PUT /api/settings/loans.offer_ttl_seconds``); it is created here with its default, one week, so
that it exists on a fresh database. Later changes are recorded as events like any setting's.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "loans_0002"
down_revision = "loans_0001"
branch_labels = None
depends_on = "ozzy_0003"


def upgrade() -> None:
    op.add_column("loan_applications", sa.Column("offer_expires_at", sa.DateTime(timezone=True)))
    op.execute(
        """
        INSERT INTO ozzy_settings (key, type, value, description, updated_by)
        VALUES ('loans.offer_ttl_seconds', 'integer', '604800',
                'How long an approved loan offer waits for the applicant to accept it, in seconds',
                'migration:loans_0002')
        ON CONFLICT (key) DO NOTHING
        """
    )


def downgrade() -> None:
    op.execute("DELETE FROM ozzy_settings WHERE key = 'loans.offer_ttl_seconds'")
    op.drop_column("loan_applications", "offer_expires_at")
