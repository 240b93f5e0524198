"""Trust: roles, token scopes and expiry, login throttling, the audit trail (#15).

Revision ID: ozzy_0013
Revises: ozzy_0012
Create Date: 2026-12-03
"""

from __future__ import annotations

revision = "ozzy_0013"
down_revision = "ozzy_0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
