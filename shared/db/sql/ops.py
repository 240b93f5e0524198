"""Housekeeping (the lease, retention) and monitoring."""

from __future__ import annotations

from sqlalchemy import text

from shared.db.tables import FINISHED_SQL

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
