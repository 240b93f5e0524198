"""Operators' login sessions can be ended on the server.

Revision ID: ozzy_0008
Revises: ozzy_0007
Create Date: 2026-12-01

A back-office session is a signed cookie; logging out used to change only the cookie of the browser
that logged out, so a copy taken earlier stayed valid for the session's lifetime. Each operator now
has a random session token that the cookie names and the server checks on every request; logging
out (or an administrator's reset) replaces it, which ends every session of that operator.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ozzy_0008"
down_revision = "ozzy_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ozzy_users", sa.Column("session_token", sa.Text))


def downgrade() -> None:
    op.drop_column("ozzy_users", "session_token")
