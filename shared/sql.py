"""The SQL that the pipeline's guarantees rest on, in one place, each with why it is written so."""

from __future__ import annotations

from sqlalchemy import text

#: The relay's claim. ``SKIP LOCKED`` lets several relays drain at once without waiting on or
#: double-sending each other's rows; ``dispatched_at IS NULL`` (not ``id > last seen``) means a row
#: that commits late, with an id below ones already sent, is still found. The partial index
#: ``ix_ozzy_outbox_undispatched`` keeps this cheap however long the event log grows.
CLAIM_BATCH = text(
    """
    SELECT id, event_id, event_type, event_version, aggregate_type, aggregate_id,
           payload, metadata, occurred_at
      FROM ozzy_outbox
     WHERE dispatched_at IS NULL
     ORDER BY id
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
    """
)

#: Pending deliveries are recorded in the same transaction that marks the rows dispatched, so
#: PostgreSQL knows of every message Redis was given. ``DO NOTHING``: a worker may already have
#: completed the pair (a message from an earlier attempt whose commit failed).
INSERT_PENDING = text(
    """
    INSERT INTO ozzy_deliveries (event_id, handler, status, enqueued_at)
    SELECT e, h, 'pending', now()
      FROM unnest(CAST(:event_ids AS uuid[]), CAST(:handlers AS text[])) AS t(e, h)
    ON CONFLICT (event_id, handler) DO NOTHING
    """
)

MARK_DISPATCHED = text("UPDATE ozzy_outbox SET dispatched_at = now() WHERE id = ANY(CAST(:ids AS bigint[]))")

#: The inbox. Runs first in the handler's transaction: it takes the row lock of the (event,
#: handler) pair, so a concurrent duplicate waits here and then finds ``done``; ``RETURNING``
#: nothing means the pair was already done and the message is acknowledged without running.
#: ``ON CONFLICT`` rather than a caught unique violation, which would abort the transaction.
INBOX_CLAIM = text(
    """
    INSERT INTO ozzy_deliveries (event_id, handler, status, attempts, enqueued_at, completed_at)
    VALUES (:event_id, :handler, 'done', 1, now(), now())
    ON CONFLICT (event_id, handler) DO UPDATE
       SET status = 'done', attempts = ozzy_deliveries.attempts + 1,
           completed_at = now(), updated_at = now()
     WHERE ozzy_deliveries.status <> 'done'
    RETURNING id
    """
)

#: A failed attempt, recorded in its own transaction after the handler's was rolled back.
RECORD_FAILURE = text(
    """
    INSERT INTO ozzy_deliveries (event_id, handler, status, attempts, last_error, enqueued_at)
    VALUES (:event_id, :handler, :status, 1, :error, now())
    ON CONFLICT (event_id, handler) DO UPDATE
       SET status = EXCLUDED.status, attempts = ozzy_deliveries.attempts + 1,
           last_error = EXCLUDED.last_error, updated_at = now()
     WHERE ozzy_deliveries.status <> 'done'
    """
)
