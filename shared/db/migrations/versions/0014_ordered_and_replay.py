"""Ordered handlers and replay/backfill (#14, items 1 and 2).

Revision ID: ozzy_0014
Revises: ozzy_0013
Create Date: 2026-12-03
"""

from __future__ import annotations

revision = "ozzy_0014"
down_revision = "ozzy_0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
