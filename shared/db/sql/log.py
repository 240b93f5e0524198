"""The log as a source: reading it in dispatch order (projections, the feed), projection
checkpoints, and deliveries parked for a newer event version.

Every reader here follows ``dispatch_seq``, never ``id``: rows commit out of id order, but positions
are given under :data:`~shared.db.sql.outbox.DISPATCH_LOCK` and committed one batch at a time in
position order, so once position N is visible every position below N is too.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

from shared.db.tables import FINISHED_SQL, PARKED, PENDING

_COLUMNS = """dispatch_seq, id, event_id, event_type, event_version, aggregate_type, aggregate_id,
              occurred_at, """

#: A page of the log after ``:after``, in dispatch order, of the given types (NULL: every type),
#: with the end of the log **in the same snapshot** (one statement): a reader that got fewer rows
#: than it asked for may move its cursor to ``end_of_log``, since no position at or below it can
#: appear later. The ``LEFT JOIN`` keeps the end of the log when the page is empty. The unique
#: index ``ix_ozzy_outbox_dispatch_seq`` serves both the range and ``max``.
def _read_log(json_columns: str) -> TextClause:
    return text(
        f"""
        SELECT e.end_of_log, b.*
          FROM (SELECT coalesce(max(dispatch_seq), 0) AS end_of_log
                  FROM ozzy_outbox WHERE dispatch_seq IS NOT NULL) AS e
          LEFT JOIN LATERAL (
                SELECT {_COLUMNS}{json_columns}
                  FROM ozzy_outbox
                 WHERE dispatch_seq > :after
                   AND (CAST(:types AS text[]) IS NULL OR event_type = ANY(CAST(:types AS text[])))
                 ORDER BY dispatch_seq
                 LIMIT :limit) AS b ON true
         ORDER BY b.dispatch_seq
        """
    )


READ_LOG = _read_log("payload, metadata")
#: The same with payload and metadata as JSON text: projections parse them only for the events
#: whose content they read (a projection that counts by type and time parses none).
READ_LOG_TEXT = _read_log("payload::text AS payload, metadata::text AS metadata")

#: A projection's checkpoint row, created at position 0 (a new projection starts with the whole log).
ENSURE_PROJECTION = text("INSERT INTO ozzy_projections (name) VALUES (:name) ON CONFLICT (name) DO NOTHING")

#: Taken at the start of each batch transaction and held to its commit: one runner at a time per
#: projection, whatever number of relays and rebuilds run. The live runners skip a locked row (the
#: holder is applying); a rebuild waits for it. The position is read under this lock, so two
#: runners can never apply the same events.
LOCK_PROJECTION = text("SELECT position FROM ozzy_projections WHERE name = :name FOR UPDATE")
LOCK_PROJECTION_SKIP = text("SELECT position FROM ozzy_projections WHERE name = :name FOR UPDATE SKIP LOCKED")

#: The new checkpoint, in the transaction that wrote the batch's effects.
ADVANCE_PROJECTION = text(
    """
    UPDATE ozzy_projections
       SET position = :position, applied = applied + :applied, updated_at = now(),
           last_error = NULL, failed_at = NULL
     WHERE name = :name
    """
)
PROJECTION_FAILED = text(
    "UPDATE ozzy_projections SET last_error = :error, failed_at = now(), updated_at = now() WHERE name = :name"
)
#: A rebuild's reset, in the transaction that empties the projection's tables.
RESET_PROJECTION = text(
    """
    UPDATE ozzy_projections
       SET position = 0, applied = 0, rebuild_started_at = now(), updated_at = now(),
           last_error = NULL, failed_at = NULL
     WHERE name = :name
    """
)
REBUILD_DONE = text(
    "UPDATE ozzy_projections SET rebuild_started_at = NULL, rebuilt_at = now(), updated_at = now() WHERE name = :name"
)
PROJECTION_STATUS = text(
    """
    SELECT p.name, p.position, p.applied, p.updated_at, p.rebuild_started_at, p.rebuilt_at, p.last_error,
           p.failed_at, e.end_of_log
      FROM ozzy_projections p,
           (SELECT coalesce(max(dispatch_seq), 0) AS end_of_log FROM ozzy_outbox WHERE dispatch_seq IS NOT NULL) e
     WHERE CAST(:names AS text[]) IS NULL OR p.name = ANY(CAST(:names AS text[]))
     ORDER BY p.name
    """
)

#: A worker received an event of a version newer than it knows: the delivery waits as ``parked``,
#: its attempts untouched (not a failure). Never over finished work.
PARK_DELIVERY = text(
    f"""
    INSERT INTO ozzy_deliveries (event_id, handler, status, last_error, enqueued_at)
    VALUES (:event_id, :handler, '{PARKED}', :reason, now())
    ON CONFLICT (event_id, handler) DO UPDATE
       SET status = '{PARKED}', last_error = EXCLUDED.last_error, updated_at = now()
     WHERE ozzy_deliveries.status NOT IN {FINISHED_SQL}
    """
)

#: Parked deliveries a worker can now run: of its handlers (``:handlers``), whose event version is
#: at most the one it knows (``:versions``, element by element). ``SKIP LOCKED``: two new workers
#: never send the same one together (and a duplicate would find the inbox anyway).
CLAIM_PARKED_KNOWN = text(
    f"""
    SELECT d.id AS delivery_id, d.handler, o.id, o.event_id, o.event_type, o.event_version,
           o.aggregate_type, o.aggregate_id, o.payload::text AS payload,
           o.metadata::text AS metadata, o.occurred_at
      FROM ozzy_deliveries d
      JOIN unnest(CAST(:handlers AS text[]), CAST(:versions AS int[])) AS k(handler, version)
        ON k.handler = d.handler
      JOIN ozzy_outbox o ON o.event_id = d.event_id
     WHERE d.status = '{PARKED}' AND o.event_version <= k.version
     ORDER BY d.id
     LIMIT :limit
       FOR UPDATE OF d SKIP LOCKED
    """
)
UNPARK_DELIVERIES = text(
    f"""
    UPDATE ozzy_deliveries SET status = '{PENDING}', enqueued_at = now(), updated_at = now()
     WHERE id = ANY(CAST(:ids AS bigint[])) AND status = '{PARKED}'
    """
)
