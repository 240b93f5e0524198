"""The event log as a source: ordered handlers, replay, projections, the feed (#14).

Revision ID: ozzy_0012
Revises: ozzy_0011
Create Date: 2026-12-03
"""

from __future__ import annotations

revision = "ozzy_0012"
down_revision = "ozzy_0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
