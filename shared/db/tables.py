"""The framework's own tables, as SQLAlchemy Core objects (the migrations create them).

``outbox``      the transactional outbox and the permanent domain event log, in insertion order.
``deliveries``  one row per (event, handler): delivery state for operators and for the sweep, and the
                idempotency inbox (a handler's effects commit together with ``status = 'done'``).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    BigInteger,
    Column,
    DateTime,
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
    # A row this code version cannot route (unknown event type) waits here until retried.
    Column("parked_at", DateTime(timezone=True)),
    Column("park_reason", Text),
    #: Position in dispatch order, given by the relay under a lock at commit: a reader that follows
    #: ``dispatch_seq > checkpoint`` never skips a row, whatever order the business writes committed in.
    Column("dispatch_seq", BigInteger),
    # The relay's claim scans only this small index, however long the log grows.
    Index(
        "ix_ozzy_outbox_undispatched", "id", postgresql_where=text("dispatched_at IS NULL AND parked_at IS NULL")
    ),
    Index("ix_ozzy_outbox_parked", "event_type", postgresql_where=text("parked_at IS NOT NULL")),
    Index(
        "ix_ozzy_outbox_dispatch_seq", "dispatch_seq", unique=True, postgresql_where=text("dispatch_seq IS NOT NULL")
    ),
    Index("ix_ozzy_outbox_aggregate", "aggregate_id", "id"),
    Index("ix_ozzy_outbox_correlation", "correlation_id"),
    # Only events with a cause: lookups always ask for one, and root events skip the index.
    Index("ix_ozzy_outbox_causation", "causation_id", postgresql_where=text("causation_id IS NOT NULL")),
    Index("ix_ozzy_outbox_type_id", "event_type", "id"),
    # Time-range pages of the back office and the API, newest first by (occurred_at, id): one page
    # of entries read per page shown, however deep the range lies in the log (migration 0015).
    Index("ix_ozzy_outbox_occurred_at", "occurred_at", "id"),
)

#: Delivery states. ``pending``: enqueued, not completed; ``retrying``: failed, a retry is scheduled;
#: ``done``: the handler's transaction committed; ``dead``: retries exhausted or a permanent error.
PENDING, RETRYING, DONE, DEAD = "pending", "retrying", "done", "dead"
#: An operator decided the delivery needs no run; like ``done``, it is never run again.
RESOLVED = "resolved"
#: An ordered handler's delivery waiting for an earlier delivery of its key to finish; the one that
#: finishes it (or an operator's resolve) sends it on (see :mod:`shared.delivery.ordering`).
BLOCKED = "blocked"
#: The event's version is newer than the worker that received it knows (a rolling deploy): it waits,
#: without using its retry budget, until a worker that knows the version sends it on.
PARKED = "parked"
FINISHED = (DONE, RESOLVED)
#: The same lists as SQL, for statements and index predicates.
FINISHED_SQL = f"('{DONE}', '{RESOLVED}')"
OPEN_SQL = f"('{PENDING}', '{RETRYING}')"
RETRIES_EXHAUSTED, PERMANENT_ERROR, UNKNOWN_EVENT_TYPE, INVALID_PAYLOAD = (
    "retries_exhausted",
    "permanent_error",
    "unknown_event_type",
    "invalid_payload",
)

deliveries = Table(
    "ozzy_deliveries",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    # No foreign key: its check cost the relay a third of its pending-delivery INSERT (migration
    # 0007). Only the relay and workers write here, for events read from the log.
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("handler", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("enqueued_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("completed_at", DateTime(timezone=True)),
    Column("first_failed_at", DateTime(timezone=True)),
    Column("last_failed_at", DateTime(timezone=True)),
    #: Why a delivery is dead: retries_exhausted, permanent_error, unknown_event_type, invalid_payload.
    Column("dead_reason", Text),
    UniqueConstraint("event_id", "handler", name="uq_ozzy_deliveries_event_handler"),
    # Operators and the sweep look only at unfinished work; completed rows stay out of this index.
    Index(
        "ix_ozzy_deliveries_open",
        "status",
        "handler",
        "enqueued_at",
        postgresql_where=text(f"status NOT IN {FINISHED_SQL}"),
    ),
    # Retention deletes completed deliveries by age; this index holds only those.
    Index("ix_ozzy_deliveries_completed", "completed_at", postgresql_where=text(f"status IN {FINISHED_SQL}")),
    #: Ordered handlers only (``@handles(..., ordered_by=...)``): the delivery's key and its event's
    #: dispatch position, set by the relay; NULL for every other handler (see shared.delivery.ordering).
    Column("order_key", Text),
    Column("dispatch_seq", BigInteger),
    #: The replay that last sent this delivery again (see shared.delivery.replay).
    Column("replay_id", BigInteger),
    # Dead letters only, newest first: the dead-letter pages read one page of entries however many
    # finished deliveries the table holds; an entry is added only when a delivery dies (0015).
    Index("ix_ozzy_deliveries_dead", "id", postgresql_where=text("status = 'dead'")),
    # Unfinished deliveries of ordered handlers only: "is an earlier one of this key unfinished?"
    Index(
        "ix_ozzy_deliveries_ordered", "handler", "order_key", "dispatch_seq",
        postgresql_where=text(f"order_key IS NOT NULL AND status NOT IN {FINISHED_SQL}"),
    ),
)

#: Replay and backfill jobs (``ozzy replay``): the position reached, so a crashed job resumes.
REPLAY_RUNNING, REPLAY_DONE, REPLAY_FAILED, REPLAY_CANCELLED = "running", "done", "failed", "cancelled"

replays = Table(
    "ozzy_replays",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("handler", Text, nullable=False),
    Column("filters", JSONB, nullable=False, server_default="{}"),
    Column("status", Text, nullable=False, server_default=REPLAY_RUNNING),
    #: The last dispatch position covered, and the end of the log when the job started.
    Column("position", BigInteger, nullable=False, server_default="0"),
    Column("upto", BigInteger, nullable=False, server_default="0"),
    Column("total", BigInteger, nullable=False, server_default="0"),
    Column("sent", BigInteger, nullable=False, server_default="0"),
    #: Selected events whose delivery was still unfinished (it runs anyway): not sent again.
    Column("skipped", BigInteger, nullable=False, server_default="0"),
    Column("created_by", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("error", Text),
    Index("ix_ozzy_replays_created", "created_at"),
)

#: Earlier outcomes of deliveries a replay ran again (the delivery row holds the latest run).
delivery_history = Table(
    "ozzy_delivery_history",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("delivery_id", BigInteger, nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("handler", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("dead_reason", Text),
    Column("enqueued_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("replay_id", BigInteger),
    Column("archived_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_ozzy_delivery_history_delivery", "delivery_id"),
)

#: Every running process (web, relay, worker) and its heartbeat; see :mod:`shared.cluster.nodes`.
nodes = Table(
    "ozzy_nodes",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("stopped_at", DateTime(timezone=True)),
    Column("info", JSONB, nullable=False, server_default="{}"),
    Index("ix_ozzy_nodes_heartbeat", "heartbeat_at"),
    Index("ix_ozzy_nodes_stopped", "stopped_at"),
)

#: Scheduled event states. ``scheduled``: waiting for its due time; ``fired``: moved into the outbox
#: (the event log) by a relay; ``cancelled``: cancelled before it fired.
SCHEDULED, FIRED, CANCELLED = "scheduled", "fired", "cancelled"

#: Events committed now, to be delivered at ``due_at`` (see :mod:`shared.delivery.timers`).
scheduled = Table(
    "ozzy_scheduled",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("event_type", Text, nullable=False),
    Column("event_version", Integer, nullable=False),
    Column("aggregate_type", Text),
    Column("aggregate_id", Text),
    Column("payload", JSONB, nullable=False),
    Column("metadata", JSONB, nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    #: Names at most one waiting event (a saga's timeout, a recurring job's next occurrence).
    Column("key", Text),
    Column("status", Text, nullable=False, server_default=SCHEDULED),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("fired_at", DateTime(timezone=True)),
    Column("cancelled_at", DateTime(timezone=True)),
    # The relay's timer reads only rows still waiting, earliest first.
    Index("ix_ozzy_scheduled_due", "due_at", postgresql_where=text(f"status = '{SCHEDULED}'")),
    Index("ux_ozzy_scheduled_key", "key", unique=True,
          postgresql_where=text(f"status = '{SCHEDULED}' AND key IS NOT NULL")),
    # A recurring job's occurrences, fired or not (its last run, its history).
    Index("ix_ozzy_scheduled_key", "key", "due_at", postgresql_where=text("key IS NOT NULL")),
)

#: Recurring jobs declared in code, one row each (see :mod:`shared.workflows.recurring`).
recurring_jobs = Table(
    "ozzy_recurring",
    metadata,
    Column("name", Text, primary_key=True),
    Column("schedule", Text, nullable=False),
    Column("missed", Text, nullable=False),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("next_due_at", DateTime(timezone=True)),
    Column("last_due_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


#: One row per projection: its checkpoint (the last dispatch position applied), updated in the
#: transaction that writes the projection's tables (see :mod:`shared.projections`).
projections = Table(
    "ozzy_projections",
    metadata,
    Column("name", Text, primary_key=True),
    Column("position", BigInteger, nullable=False, server_default="0"),
    #: Events applied since the last reset.
    Column("applied", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    #: Set while ``ozzy projections rebuild`` replays the log; cleared when it has caught up.
    Column("rebuild_started_at", DateTime(timezone=True)),
    Column("rebuilt_at", DateTime(timezone=True)),
    #: The last failed batch (first line of the error, no payload); cleared by the next success.
    Column("last_error", Text),
    Column("failed_at", DateTime(timezone=True)),
)


#: Failed back-office logins of the last minutes, by user name and client address: the login
#: throttle counts them (:mod:`shared.ops.accounts`), so it holds across web processes.
login_failures = Table(
    "ozzy_login_failures",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("username", Text, nullable=False),
    Column("client", Text, nullable=False),
    Column("failed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_ozzy_login_failures_username", "username", "failed_at"),
    Index("ix_ozzy_login_failures_client", "client", "failed_at"),
)
