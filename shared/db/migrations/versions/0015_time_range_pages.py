"""Time-range and dead-letter pages in one page's worth of reading, however long the history.

Revision ID: ozzy_0015
Revises: ozzy_0014
Create Date: 2026-12-03

The back office's "Occurred" filter and ``GET /api/events?since=&until=`` listed a time range newest
first by ``id``. Neither the BRIN index of migration 0006 nor a B-tree on ``occurred_at`` alone can
give that order, so the planner walked the primary key from the newest event and filtered out every
event after the range: 0.15-0.35 s at a million events, ten times that at ten million, growing with
how far back the range lies (bench/history.py). Those lists are now newest first by
``(occurred_at, id)`` (the same order whenever events are committed in time order), which this
B-tree serves directly: about 50 entries read for a page of 50.

It costs an entry on every insert and on every dispatch (the relay's update is never HOT), always
at the right edge of the index; the BRIN index it replaces cost almost nothing. The measured effect on
commit throughput is in docs/benchmarks.md, "History: 10M events (#16)". The dashboard's
last-hour count and retention's age cut-off read it too.

``ix_ozzy_deliveries_dead`` holds dead deliveries only. The dead-letter pages (all, by handler, by
event type) walked the primary key of ``ozzy_deliveries`` newest first and filtered on the status:
at ten million deliveries, 1 in 6,000 of them dead for one handler, that read a million rows
(0.4 s). A delivery gets an entry only when it dies, so the relay and the workers never pay for it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ozzy_0015"
down_revision = "ozzy_0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_ozzy_outbox_occurred_at", table_name="ozzy_outbox")
    op.create_index("ix_ozzy_outbox_occurred_at", "ozzy_outbox", ["occurred_at", "id"])
    op.create_index("ix_ozzy_deliveries_dead", "ozzy_deliveries", ["id"], postgresql_where=sa.text("status = 'dead'"))


def downgrade() -> None:
    op.drop_index("ix_ozzy_deliveries_dead", table_name="ozzy_deliveries")
    op.drop_index("ix_ozzy_outbox_occurred_at", table_name="ozzy_outbox")
    op.create_index("ix_ozzy_outbox_occurred_at", "ozzy_outbox", ["occurred_at"], postgresql_using="brin")
