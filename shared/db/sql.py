"""Every SQL statement of the framework, named, each with why it is written so.

Statuses are the constants of :mod:`shared.db.tables`, spliced in once here, never repeated as
literals. Sections: the outbox (write, claim, dispatch, park), deliveries (inbox, failures,
redelivery, operator retries), the cluster (listeners' log reads, checkpoints, nodes),
housekeeping (lease, retention) and monitoring.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

from shared.db.tables import CANCELLED, DEAD, DONE, FINISHED_SQL, FIRED, OPEN_SQL, PENDING, RESOLVED, SCHEDULED

# --- the outbox -------------------------------------------------------------------------------

#: One event into the outbox, at the driver level (psycopg placeholders; see
#: :func:`shared.outbox.write.write_events`). JSON arrives as text and is cast once by the server.
INSERT_EVENT = (
    "INSERT INTO ozzy_outbox (event_id, event_type, event_version, aggregate_type, aggregate_id, payload,"
    " metadata, correlation_id, causation_id, occurred_at)"
    " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::uuid, %s::uuid, %s)"
)

_CLAIMED_COLUMNS = """id, event_id, event_type, event_version, aggregate_type, aggregate_id,
               payload::text AS payload, metadata::text AS metadata, occurred_at"""

#: Pending deliveries are recorded with the claim, in the transaction that later marks the rows
#: dispatched, so PostgreSQL knows of every message Redis is given, and before any is sent, so a
#: worker's inbox row can never be there first (the relay would then wait on the handler's
#: transaction). The routing table (event type -> handler, one pair per element of the two arrays)
#: comes from the relay; a row of a type it does not route gets no delivery (it is parked). ``DO
#: NOTHING``: a worker may already have completed the pair (a message from an earlier attempt whose
#: commit failed). The ids never leave the server: no UUID array is sent back for this INSERT.
_RECORD_PENDING = f"""
    pending AS (
        INSERT INTO ozzy_deliveries (event_id, handler, status, enqueued_at)
        SELECT c.event_id, r.handler, '{PENDING}', now()
          FROM claimed AS c
          JOIN unnest(CAST(:route_types AS text[]), CAST(:route_handlers AS text[])) AS r(event_type, handler)
            ON r.event_type = c.event_type
        ON CONFLICT (event_id, handler) DO NOTHING
    )
"""

def _claim(where: str) -> TextClause:
    # The event id goes back as text: the relay only writes it into messages.
    return text(
        f"""
        WITH claimed AS (
            SELECT {_CLAIMED_COLUMNS}
              FROM ozzy_outbox
             WHERE {where}
             ORDER BY id
             LIMIT :limit
               FOR UPDATE SKIP LOCKED
        ), {_RECORD_PENDING}
        SELECT id, event_id::text AS event_id, event_type, event_version, aggregate_type, aggregate_id,
               payload, metadata, occurred_at
          FROM claimed ORDER BY id
        """
    )


#: The relay's claim. ``SKIP LOCKED`` lets several relays drain at once without waiting on or
#: double-sending each other's rows; ``dispatched_at IS NULL`` (not ``id > last seen``) means a row
#: that commits late, with an id below ones already sent, is still found. The partial index
#: ``ix_ozzy_outbox_undispatched`` keeps this cheap however long the event log grows.
CLAIM_BATCH = _claim("dispatched_at IS NULL AND parked_at IS NULL")

#: While an operator has paused the relay, only the control plane moves (commands, settings and
#: flag changes), so the command that resumes the relay can reach it.
CLAIM_CONTROL_BATCH = _claim(
    "dispatched_at IS NULL AND parked_at IS NULL AND event_type = ANY(CAST(:types AS text[]))"
)

#: Taken right before positions are assigned and held until commit (transaction-scoped): relays
#: commit their batches one at a time in position order, so a reader following
#: ``dispatch_seq > checkpoint`` can never see position N+1 before N is committed.
DISPATCH_LOCK = text("SELECT pg_advisory_xact_lock(7305214102011)")

#: Marks a batch dispatched and numbers it: ``:ids`` in ascending order get the positions
#: ``base + 1 .. base + n``. The block is reserved with one ``nextval`` and one ``setval`` (safe
#: under :data:`DISPATCH_LOCK`, the only place positions are assigned), not a ``nextval`` per row,
#: and the positions are computed by the caller rather than sent back row by row. ``marked`` lets
#: the caller check that every row was there to mark.
MARK_DISPATCHED = text(
    """
    WITH block AS (
        SELECT setval('ozzy_dispatch_seq', nextval('ozzy_dispatch_seq') + cardinality(CAST(:ids AS bigint[])) - 1)
               - cardinality(CAST(:ids AS bigint[])) AS base
    ), marked AS (
        UPDATE ozzy_outbox o
           SET dispatched_at = now(), dispatch_seq = block.base + s.n
          FROM block, unnest(CAST(:ids AS bigint[])) WITH ORDINALITY AS s(id, n)
         WHERE o.id = s.id
        RETURNING 1
    )
    SELECT block.base, (SELECT count(*) FROM marked) AS marked FROM block
    """
)


#: A row whose event type this code version does not know is set aside, not dropped: a newer
#: version may have handlers for it. It stays undispatched, so nothing is lost.
PARK = text(
    "UPDATE ozzy_outbox SET parked_at = now(), park_reason = :reason WHERE id = ANY(CAST(:ids AS bigint[]))"
)

#: Parked rows go back to the relay: all of them, or those of the given types.
UNPARK = text(
    """
    UPDATE ozzy_outbox SET parked_at = NULL, park_reason = NULL
     WHERE parked_at IS NOT NULL
       AND (CAST(:types AS text[]) IS NULL OR event_type = ANY(CAST(:types AS text[])))
    """
)

# --- scheduled events -----------------------------------------------------------------------------

#: One event for later, written in the business transaction. A key still held by a waiting event
#: is a unique violation: the caller cancels the old one first (``schedule(..., replace=True)``).
INSERT_SCHEDULED = text(
    """
    INSERT INTO ozzy_scheduled (event_id, event_type, event_version, aggregate_type, aggregate_id, payload,
                                metadata, due_at, key)
    VALUES (:event_id, :event_type, :event_version, :aggregate_type, :aggregate_id, CAST(:payload AS jsonb),
            CAST(:metadata AS jsonb), :due_at, :key)
    """
)

#: Cancel waiting events by id or by key. A relay firing the same row holds its lock; this waits,
#: then finds it ``fired`` and changes nothing: an event is either cancelled or fired, never both.
CANCEL_SCHEDULED = text(
    f"""
    UPDATE ozzy_scheduled SET status = '{CANCELLED}', cancelled_at = now()
     WHERE status = '{SCHEDULED}'
       AND (event_id = ANY(CAST(:ids AS uuid[])) OR key = ANY(CAST(:keys AS text[])))
    RETURNING event_id
    """
)

#: Move due events into the outbox, exactly once: the rows are claimed with ``SKIP LOCKED`` (several
#: relays fire at once without waiting on each other), marked fired and inserted into the event log
#: in one statement, so a relay killed at any moment leaves each row either waiting or fired with
#: its event in the log. The event keeps the id it was scheduled with (a second insert of it would
#: be a conflict, and is skipped), its causal metadata gains ``due_at``; ``occurred_at`` is when it
#: fired. The relay then dispatches the new rows like any others.
FIRE_DUE = text(
    f"""
    WITH due AS (
        SELECT id FROM ozzy_scheduled
         WHERE status = '{SCHEDULED}' AND due_at <= clock_timestamp()
         ORDER BY due_at, id
         LIMIT :limit
           FOR UPDATE SKIP LOCKED
    ), fired AS (
        UPDATE ozzy_scheduled s SET status = '{FIRED}', fired_at = clock_timestamp()
          FROM due WHERE s.id = due.id
        RETURNING s.id, s.event_id, s.event_type, s.event_version, s.aggregate_type, s.aggregate_id,
                  s.payload, s.metadata, s.due_at
    ), logged AS (
        INSERT INTO ozzy_outbox (event_id, event_type, event_version, aggregate_type, aggregate_id, payload,
                                 metadata, correlation_id, causation_id, occurred_at)
        SELECT event_id, event_type, event_version, aggregate_type, aggregate_id, payload,
               metadata || jsonb_build_object('due_at', due_at),
               (metadata->>'correlation_id')::uuid, (metadata->>'causation_id')::uuid, clock_timestamp()
          FROM fired ORDER BY due_at, id
        ON CONFLICT (event_id) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM fired) AS fired, (SELECT count(*) FROM logged) AS logged
    """
)

#: How long until the earliest waiting event is due (negative: overdue), for the relay's timer.
NEXT_DUE = text(
    f"SELECT extract(epoch FROM min(due_at) - clock_timestamp()) FROM ozzy_scheduled WHERE status = '{SCHEDULED}'"
)

#: Scheduled events for operators, in the order they were scheduled (keyset pagination by id).
LIST_SCHEDULED = text(
    """
    SELECT id, event_id, event_type, aggregate_type, aggregate_id, due_at, key, status, created_at,
           fired_at, cancelled_at
      FROM ozzy_scheduled
     WHERE (CAST(:status AS text) IS NULL OR status = :status)
       AND (CAST(:event_type AS text) IS NULL OR event_type = :event_type)
       AND (CAST(:after_id AS bigint) IS NULL OR id > :after_id)
     ORDER BY id
     LIMIT :limit
    """
)

#: A recurring job's occurrence: its id is derived from the job and the time, and its key names
#: the job, so a second relay's attempt (or a replay of one that fired) inserts nothing.
INSERT_OCCURRENCE = text(
    """
    INSERT INTO ozzy_scheduled (event_id, event_type, event_version, payload, metadata, due_at, key)
    VALUES (:event_id, :event_type, :event_version, CAST(:payload AS jsonb), CAST(:metadata AS jsonb), :due_at, :key)
    ON CONFLICT DO NOTHING
    RETURNING event_id
    """
)
WAITING_BY_KEY = text(f"SELECT due_at FROM ozzy_scheduled WHERE key = :key AND status = '{SCHEDULED}'")

#: Recurring jobs: one row each, created by the first relay that knows the job, locked while its
#: next occurrence is scheduled (so two relays never schedule two).
UPSERT_RECURRING = text(
    """
    INSERT INTO ozzy_recurring (name, schedule, missed) VALUES (:name, :schedule, :missed)
    ON CONFLICT (name) DO UPDATE SET schedule = EXCLUDED.schedule, missed = EXCLUDED.missed
     WHERE ozzy_recurring.schedule IS DISTINCT FROM EXCLUDED.schedule
        OR ozzy_recurring.missed IS DISTINCT FROM EXCLUDED.missed
    """
)
LOCK_RECURRING = text("SELECT paused, next_due_at, last_due_at FROM ozzy_recurring WHERE name = :name FOR UPDATE")
#: The next occurrence is scheduled; the last run is the latest one that fired (a skipped or
#: cancelled occurrence did not run).
RECURRING_SCHEDULED = text(
    f"""
    UPDATE ozzy_recurring
       SET next_due_at = :next_due_at, updated_at = now(),
           last_due_at = (SELECT max(due_at) FROM ozzy_scheduled WHERE key = :key AND status = '{FIRED}')
     WHERE name = :name
    """
)
SET_RECURRING_PAUSED = text(
    "UPDATE ozzy_recurring SET paused = :paused, updated_at = now() WHERE name = :name RETURNING name"
)

# --- deliveries ---------------------------------------------------------------------------------

#: The inbox. Runs first in the handler's transaction: it takes the row lock of the (event,
#: handler) pair, so a concurrent duplicate waits here and then finds ``done``; ``RETURNING``
#: nothing means the pair was already done and the message is acknowledged without running.
#: ``ON CONFLICT`` rather than a caught unique violation, which would abort the transaction.
INBOX_CLAIM = text(
    f"""
    INSERT INTO ozzy_deliveries (event_id, handler, status, attempts, enqueued_at, completed_at)
    VALUES (:event_id, :handler, '{DONE}', 1, now(), now())
    ON CONFLICT (event_id, handler) DO UPDATE
       SET status = '{DONE}', attempts = ozzy_deliveries.attempts + 1,
           completed_at = now(), updated_at = now()
     WHERE ozzy_deliveries.status NOT IN {FINISHED_SQL}
    RETURNING id
    """
)

#: A failed attempt, recorded in its own transaction after the handler's was rolled back.
RECORD_FAILURE = text(
    f"""
    INSERT INTO ozzy_deliveries (event_id, handler, status, attempts, last_error, enqueued_at,
                                 first_failed_at, last_failed_at, dead_reason)
    VALUES (:event_id, :handler, :status, 1, :error, now(), now(), now(), :dead_reason)
    ON CONFLICT (event_id, handler) DO UPDATE
       SET status = EXCLUDED.status, attempts = ozzy_deliveries.attempts + 1,
           last_error = EXCLUDED.last_error, updated_at = now(),
           first_failed_at = coalesce(ozzy_deliveries.first_failed_at, now()),
           last_failed_at = now(), dead_reason = EXCLUDED.dead_reason
     WHERE ozzy_deliveries.status NOT IN {FINISHED_SQL}
    """
)

#: Deliveries that should have completed by now. ``SKIP LOCKED`` passes over the ones a worker is
#: running (its inbox claim holds the row lock), so a long handler is never enqueued twice.
CLAIM_STALE_DELIVERIES = text(
    f"""
    SELECT d.id AS delivery_id, d.handler, o.id, o.event_id, o.event_type, o.event_version,
           o.aggregate_type, o.aggregate_id, o.payload::text AS payload,
           o.metadata::text AS metadata, o.occurred_at
      FROM ozzy_deliveries d JOIN ozzy_outbox o ON o.event_id = d.event_id
     WHERE d.status IN {OPEN_SQL}
       AND d.enqueued_at < now() - make_interval(secs => :older_than)
     ORDER BY d.enqueued_at
     LIMIT :limit
       FOR UPDATE OF d SKIP LOCKED
    """
)

OPEN_DELIVERIES_BY_HANDLER = text(
    f"SELECT handler, count(*) FROM ozzy_deliveries WHERE status IN {OPEN_SQL} GROUP BY handler"
)

MARK_REENQUEUED = text(
    f"""
    UPDATE ozzy_deliveries SET status = '{PENDING}', enqueued_at = now(), updated_at = now(), dead_reason = NULL
     WHERE id = ANY(CAST(:ids AS bigint[]))
    """
)

#: Deliveries an operator asked to retry (dead ones by default), a batch at a time, with their events.
CLAIM_FOR_RETRY = text(
    """
    SELECT d.id AS delivery_id, d.handler, o.id, o.event_id, o.event_type, o.event_version,
           o.aggregate_type, o.aggregate_id, o.payload::text AS payload,
           o.metadata::text AS metadata, o.occurred_at
      FROM ozzy_deliveries d JOIN ozzy_outbox o ON o.event_id = d.event_id
     WHERE d.status = ANY(CAST(:statuses AS text[]))
       AND d.handler = ANY(CAST(:known AS text[]))
       AND (CAST(:handler AS text) IS NULL OR d.handler = :handler)
       AND (CAST(:event_type AS text) IS NULL OR o.event_type = :event_type)
       AND (CAST(:ids AS bigint[]) IS NULL OR d.id = ANY(CAST(:ids AS bigint[])))
       AND d.id > :after  -- keyset pagination: a row re-enqueued by this run is not claimed again
     ORDER BY d.id
     LIMIT :limit
       FOR UPDATE OF d SKIP LOCKED
    """
)

#: An operator's decision that these unfinished deliveries need no run.
RESOLVE = text(
    f"""
    UPDATE ozzy_deliveries
       SET status = '{RESOLVED}', completed_at = now(), updated_at = now(),
           last_error = coalesce(last_error || E'\\n', '') || :note
     WHERE id = ANY(CAST(:ids AS bigint[])) AND status NOT IN {FINISHED_SQL}
    """
)


#: Dead deliveries with their event's type, most recent failure first (the CLI and the back office).
LIST_DEAD = text(
    f"""
    SELECT d.id, d.handler, o.event_type, d.event_id, d.attempts, d.dead_reason,
           d.first_failed_at, d.last_failed_at, d.last_error
      FROM ozzy_deliveries d JOIN ozzy_outbox o ON o.event_id = d.event_id
     WHERE d.status = '{DEAD}'
       AND (CAST(:handler AS text) IS NULL OR d.handler = :handler)
       AND (CAST(:event_type AS text) IS NULL OR o.event_type = :event_type)
     ORDER BY d.last_failed_at DESC NULLS LAST, d.id DESC
     LIMIT :limit
    """
)

# --- the cluster ----------------------------------------------------------------------------------

#: Cluster listeners read the log by dispatch position, never by id (rows commit out of id order;
#: positions are given under :data:`DISPATCH_LOCK` at commit, so none appears behind a reader).
FETCH_DISPATCHED = text(
    """
    SELECT id, event_id, event_type, event_version, aggregate_type, aggregate_id, payload, metadata,
           occurred_at, dispatch_seq
      FROM ozzy_outbox
     WHERE dispatch_seq > :after AND event_type = ANY(CAST(:types AS text[]))
     ORDER BY dispatch_seq
     LIMIT :limit
    """
)
END_OF_LOG = text("SELECT coalesce(max(dispatch_seq), 0) FROM ozzy_outbox WHERE dispatch_seq IS NOT NULL")
LOAD_CHECKPOINTS = text("SELECT name, position FROM ozzy_checkpoints WHERE name = ANY(CAST(:names AS text[]))")
SAVE_CHECKPOINT = text(
    """
    INSERT INTO ozzy_checkpoints (name, position, updated_at) VALUES (:name, :position, now())
    ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()
    """
)

#: Insert or refresh a node's row: a process that started while the database was down registers
#: at its first successful heartbeat.
UPSERT_NODE = text(
    """
    INSERT INTO ozzy_nodes (id, kind, host, pid, version, started_at, heartbeat_at, info)
    VALUES (:id, :kind, :host, :pid, :version, :started_at, now(), CAST(:info AS jsonb))
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), info = EXCLUDED.info
    """
)
NODE_STOPPED = text("UPDATE ozzy_nodes SET stopped_at = now() WHERE id = :id")

# --- housekeeping ---------------------------------------------------------------------------------

#: The housekeeping lease: a session advisory lock (see :mod:`shared.ops.housekeeping`).
TRY_LEASE = text("SELECT pg_try_advisory_lock(:k)")
RELEASE_LEASE = text("SELECT pg_advisory_unlock(:k)")
PING = text("SELECT 1")
#: ``ozzy dev``'s embedded server: does the application database exist yet (psycopg placeholders)?
DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = %s"

PRUNE_DELIVERIES = text(
    f"""
    DELETE FROM ozzy_deliveries WHERE id IN (
        SELECT id FROM ozzy_deliveries
         WHERE status IN {FINISHED_SQL} AND completed_at < now() - make_interval(secs => :age)
         LIMIT :batch)
    """
)
#: Old dispatched events, and the deliveries of exactly those events, in one statement.
PRUNE_OUTBOX = text(
    """
    WITH doomed AS (
        SELECT id, event_id FROM ozzy_outbox
         WHERE dispatched_at IS NOT NULL AND occurred_at < now() - make_interval(secs => :age)
         LIMIT :batch
           FOR UPDATE SKIP LOCKED
    ), gone_deliveries AS (
        DELETE FROM ozzy_deliveries d USING doomed WHERE d.event_id = doomed.event_id
    )
    DELETE FROM ozzy_outbox o USING doomed WHERE o.id = doomed.id
    """
)
MARK_GONE = text(
    """
    UPDATE ozzy_nodes SET stopped_at = now(), info = info || '{"gone": true}'::jsonb
     WHERE stopped_at IS NULL AND heartbeat_at < now() - make_interval(secs => :after)
    """
)
FORGET_NODES = text("DELETE FROM ozzy_nodes WHERE stopped_at < now() - interval '7 days'")

# --- monitoring -----------------------------------------------------------------------------------
# Each reads an index that covers only unfinished work (or a time range), so its cost does not
# grow with the size of the event log.

BACKLOG = text(
    """
    SELECT count(*) AS undispatched, min(occurred_at) AS oldest
      FROM ozzy_outbox WHERE dispatched_at IS NULL AND parked_at IS NULL
    """
)
PARKED_COUNT = text("SELECT count(*) FROM ozzy_outbox WHERE parked_at IS NOT NULL")
OPEN_BY_HANDLER = text(
    f"""
    SELECT handler, status, count(*) AS n, min(enqueued_at) AS oldest
      FROM ozzy_deliveries WHERE status NOT IN {FINISHED_SQL}
     GROUP BY handler, status
    """
)
RECENT_NODES = text(
    """
    SELECT id, kind, host, pid, version, started_at, heartbeat_at, stopped_at, info
      FROM ozzy_nodes
     WHERE heartbeat_at > now() - make_interval(secs => :seen_within)
     ORDER BY kind, started_at
    """
)
EVENTS_PER_MINUTE = text(
    """
    SELECT date_trunc('minute', occurred_at) AS minute, count(*) AS n
      FROM ozzy_outbox WHERE occurred_at > now() - interval '1 hour'
     GROUP BY 1 ORDER BY 1
    """
)
