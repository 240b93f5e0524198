"""Replay and backfill: the events a replay selects, the reset of deliveries it runs again (their
earlier outcome kept in the history), the backfill of those the handler never saw, and its job row.
See :mod:`shared.delivery.replay`."""

from __future__ import annotations

from sqlalchemy import text

from shared.db.tables import DEAD, DONE, PENDING, RESOLVED, RETRYING

#: The events a replay selects, after a dispatch position, up to the end of the log when the job
#: began. Follows the unique index on ``dispatch_seq`` (an index on the type would cost every
#: dispatch an entry); the other filters are checked on the rows it reads.
_SELECTED = """
      FROM ozzy_outbox o
     WHERE o.dispatch_seq > :after AND o.dispatch_seq <= :upto AND o.event_type = :event_type
       AND (CAST(:since AS timestamptz) IS NULL OR o.occurred_at >= CAST(:since AS timestamptz))
       AND (CAST(:until AS timestamptz) IS NULL OR o.occurred_at < CAST(:until AS timestamptz))
       AND (CAST(:aggregate_id AS text) IS NULL OR o.aggregate_id = CAST(:aggregate_id AS text))
       AND (CAST(:event_id AS uuid) IS NULL OR o.event_id = CAST(:event_id AS uuid))
"""

REPLAY_BATCH = text(
    f"""
    SELECT o.dispatch_seq, o.id, o.event_id, o.event_type, o.event_version, o.aggregate_type, o.aggregate_id,
           o.payload::text AS payload, o.metadata::text AS metadata, o.occurred_at
    {_SELECTED}
     ORDER BY o.dispatch_seq
     LIMIT :limit
    """
)

#: The dry run: how many events, how many of them the handler saw (run again) or not (backfill).
REPLAY_COUNT = text(
    f"""
    SELECT count(*) AS total, count(d.id) AS again
    {_SELECTED.replace("FROM ozzy_outbox o", "FROM ozzy_outbox o LEFT JOIN ozzy_deliveries d"
                       " ON d.event_id = o.event_id AND d.handler = :handler")}
    """
)

END_OF_LOG_NOW = text("SELECT coalesce(max(dispatch_seq), 0) FROM ozzy_outbox WHERE dispatch_seq IS NOT NULL")

#: Finished (or dead) deliveries of the batch run again: the earlier outcome goes to the history
#: and the row becomes pending, marked with the replay, in one statement. Unfinished ones are left
#: alone: they run anyway. A worker running one of them holds its row: this waits for it.
REPLAY_RESET = text(
    f"""
    WITH old AS (
        SELECT id, event_id, handler, status, attempts, last_error, dead_reason, enqueued_at, completed_at,
               replay_id
          FROM ozzy_deliveries
         WHERE handler = :handler AND event_id = ANY(CAST(:event_ids AS uuid[]))
           AND status IN ('{DONE}', '{RESOLVED}', '{DEAD}')
           FOR UPDATE
    ), history AS (
        INSERT INTO ozzy_delivery_history (delivery_id, event_id, handler, status, attempts, last_error,
                                           dead_reason, enqueued_at, completed_at, replay_id)
        SELECT id, event_id, handler, status, attempts, last_error, dead_reason, enqueued_at, completed_at,
               replay_id FROM old
    )
    UPDATE ozzy_deliveries d
       SET status = '{PENDING}', attempts = 0, last_error = NULL, dead_reason = NULL, completed_at = NULL,
           first_failed_at = NULL, last_failed_at = NULL, enqueued_at = now(), updated_at = now(),
           replay_id = :replay_id
      FROM old WHERE d.id = old.id
    RETURNING d.event_id
    """
)

#: Events the handler never saw (added after them): a pending delivery each (backfill), with the
#: key and position an ordered handler needs. ``DO NOTHING``: the others were reset above or are
#: unfinished.
REPLAY_BACKFILL = text(
    f"""
    INSERT INTO ozzy_deliveries (event_id, handler, status, enqueued_at, order_key, dispatch_seq, replay_id)
    SELECT k.event_id, :handler, '{PENDING}', now(), k.key, CASE WHEN k.key IS NULL THEN NULL ELSE k.seq END,
           :replay_id
      FROM unnest(CAST(:event_ids AS uuid[]), CAST(:keys AS text[]), CAST(:seqs AS bigint[])) AS k(event_id, key, seq)
    ON CONFLICT (event_id, handler) DO NOTHING
    RETURNING event_id
    """
)

#: The replay's messages still waiting in the queue (its throttle), or, at a resume, not sent.
REPLAY_OUTSTANDING = text(
    f"""
    SELECT count(*) FROM ozzy_deliveries
     WHERE status IN ('{PENDING}', '{RETRYING}') AND handler = :handler AND replay_id = :replay_id
    """
)
REPLAY_UNSENT = text(
    f"""
    SELECT d.id AS delivery_id, d.handler, o.id, o.event_id, o.event_type, o.event_version,
           o.aggregate_type, o.aggregate_id, o.payload::text AS payload,
           o.metadata::text AS metadata, o.occurred_at
      FROM ozzy_deliveries d JOIN ozzy_outbox o ON o.event_id = d.event_id
     WHERE d.status = '{PENDING}' AND d.handler = :handler AND d.replay_id = :replay_id
    """
)

#: The job row, locked for the length of a batch: two processes running one job (a resumed job
#: whose first runner still lives) take turns and never run one batch twice.
LOCK_JOB = text("SELECT * FROM ozzy_replays WHERE id = :id FOR UPDATE")
ADVANCE_JOB = text(
    """
    UPDATE ozzy_replays
       SET position = :position, sent = sent + :sent, skipped = skipped + :skipped,
           updated_at = now(), heartbeat_at = now()
     WHERE id = :id
    """
)
FINISH_JOB = text(
    "UPDATE ozzy_replays SET status = :status, error = :error, finished_at = now(), updated_at = now() WHERE id = :id"
)
