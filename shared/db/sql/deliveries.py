"""Deliveries: the inbox, failed attempts, redelivery, operators' retries and dead letters."""

from __future__ import annotations

from sqlalchemy import text

from shared.db.tables import DEAD, DONE, FINISHED_SQL, OPEN_SQL, PENDING, RESOLVED

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

#: :data:`INBOX_CLAIM` behind the BEGIN of its transaction, as one simple query: the worker sends
#: both in one round trip (the driver's own BEGIN would be a round trip of its own). Its values are
#: formatted in as literals the driver escaped: ``event_id`` (a UUID's text) and ``handler``.
#: A batch of deliveries sends the literal claim behind its SAVEPOINT instead (worker batching).
INBOX_CLAIM_LITERAL = " ".join(INBOX_CLAIM.text.split()).replace(
    ":event_id", "{event_id}::uuid").replace(":handler", "{handler}")
INBOX_BEGIN_AND_CLAIM = "BEGIN; " + INBOX_CLAIM_LITERAL

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
