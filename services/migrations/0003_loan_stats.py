"""The ``loans.stats`` projection's table: applications per UTC day and outcome.

Revision ID: loans_0003
Revises: loans_0002
Create Date: 2026-12-03

Filled from the event log by the relays (a new projection starts at position 0, so a fresh table
is built from the whole history); ``ozzy projections rebuild loans.stats`` empties and refills it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "loans_0003"
down_revision = "loans_0002"
branch_labels = None
depends_on = "ozzy_0012"


def upgrade() -> None:
    op.create_table(
        "loan_stats_days",
        sa.Column("day", sa.Date, primary_key=True),
        *(sa.Column(kind, sa.Integer, nullable=False, server_default="0")
          for kind in ("submitted", "approved", "rejected", "accepted", "expired")),
    )


def downgrade() -> None:
    op.drop_table("loan_stats_days")
