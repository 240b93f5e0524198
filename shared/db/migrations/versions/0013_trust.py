"""Trust: roles, token scopes and expiry, login throttling, the audit trail (#15).

Revision ID: ozzy_0013
Revises: ozzy_0012
Create Date: 2026-12-03

Operators get a role (viewer, operator, admin). Those created before roles existed could do
everything, so they become admins: an upgrade takes nobody's powers away (lower them with
``ozzy users set-role``); new ones default to operator. A token may carry a lower role than its
user's and an expiry. Failed logins are rows, so the throttle holds across web processes. The audit
trail needs no table: it is ``ozzy.audit`` events in the log, read through ``ix_ozzy_outbox_type_id``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ozzy_0013"
down_revision = "ozzy_0012"
branch_labels = None
depends_on = None

ROLES_CHECK = "role IN ('viewer', 'operator', 'admin')"


def upgrade() -> None:
    op.add_column("ozzy_users", sa.Column("role", sa.Text, nullable=False, server_default="admin"))
    op.alter_column("ozzy_users", "role", server_default="operator")
    op.create_check_constraint("ck_ozzy_users_role", "ozzy_users", ROLES_CHECK)
    op.add_column("ozzy_api_tokens", sa.Column("role", sa.Text))
    op.add_column("ozzy_api_tokens", sa.Column("expires_at", sa.DateTime(timezone=True)))
    op.create_check_constraint("ck_ozzy_api_tokens_role", "ozzy_api_tokens", f"role IS NULL OR {ROLES_CHECK}")
    op.create_table(
        "ozzy_login_failures",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("client", sa.Text, nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    # The throttle counts one name's and one address's recent failures: each is an index range.
    op.create_index("ix_ozzy_login_failures_username", "ozzy_login_failures", ["username", "failed_at"])
    op.create_index("ix_ozzy_login_failures_client", "ozzy_login_failures", ["client", "failed_at"])


def downgrade() -> None:
    op.drop_table("ozzy_login_failures")
    op.drop_constraint("ck_ozzy_api_tokens_role", "ozzy_api_tokens")
    op.drop_column("ozzy_api_tokens", "expires_at")
    op.drop_column("ozzy_api_tokens", "role")
    op.drop_constraint("ck_ozzy_users_role", "ozzy_users")
    op.drop_column("ozzy_users", "role")
