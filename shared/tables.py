"""The framework's own tables, as SQLAlchemy Core objects (the migrations create them).

``outbox``      the transactional outbox and the permanent domain event log, in insertion order.
``deliveries``  one row per (event, handler): delivery state for operators and for the sweep, and the
                idempotency inbox (a handler's effects commit together with ``status = 'done'``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()

outbox = Table(
    "ozzy_outbox",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("event_type", Text, nullable=False),
    Column("event_version", Integer, nullable=False),
    Column("aggregate_type", Text),
    Column("aggregate_id", Text),
    Column("payload", JSONB, nullable=False),
    Column("metadata", JSONB, nullable=False),
    Column("correlation_id", UUID(as_uuid=True)),
    Column("causation_id", UUID(as_uuid=True)),
    Column("occurred_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("dispatched_at", DateTime(timezone=True)),
    # The relay's claim scans only this small index, however long the log grows.
    Index("ix_ozzy_outbox_undispatched", "id", postgresql_where=text("dispatched_at IS NULL")),
    Index("ix_ozzy_outbox_aggregate", "aggregate_type", "aggregate_id"),
    Index("ix_ozzy_outbox_correlation", "correlation_id"),
    Index("ix_ozzy_outbox_causation", "causation_id"),
    Index("ix_ozzy_outbox_type_id", "event_type", "id"),
)

#: Delivery states. ``pending``: enqueued, not completed; ``retrying``: failed, a retry is scheduled;
#: ``done``: the handler's transaction committed; ``dead``: retries exhausted or a permanent error.
PENDING, RETRYING, DONE, DEAD = "pending", "retrying", "done", "dead"

deliveries = Table(
    "ozzy_deliveries",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("event_id", UUID(as_uuid=True), ForeignKey("ozzy_outbox.event_id", ondelete="CASCADE"), nullable=False),
    Column("handler", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("enqueued_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("completed_at", DateTime(timezone=True)),
    UniqueConstraint("event_id", "handler", name="uq_ozzy_deliveries_event_handler"),
    # Operators and the sweep look only at unfinished work; completed rows stay out of this index.
    Index(
        "ix_ozzy_deliveries_open",
        "status",
        "handler",
        "enqueued_at",
        postgresql_where=text("status <> 'done'"),
    ),
)
