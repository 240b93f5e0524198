"""Scheduled events and recurring jobs: written with the business change, fired into the log once."""

from __future__ import annotations

from sqlalchemy import text

from shared.db.tables import CANCELLED, FIRED, SCHEDULED

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

#: How long until the earliest waiting event is due (negative: overdue), for the relay's timer. The
#: relay sends it in its claim's pipeline (no round trip of its own), hence also as plain text.
NEXT_DUE_TEXT = (
    f"SELECT extract(epoch FROM min(due_at) - clock_timestamp()) FROM ozzy_scheduled WHERE status = '{SCHEDULED}'"
)
NEXT_DUE = text(NEXT_DUE_TEXT)

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
