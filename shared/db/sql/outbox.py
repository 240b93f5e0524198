"""The outbox: the write every commit pays for, the relay's claim, dispatch positions, parking."""

from __future__ import annotations

from sqlalchemy import text

from shared.db.tables import PENDING

#: One event into the outbox, at the driver level (psycopg placeholders; see
#: :func:`shared.outbox.write.write_events`). JSON arrives as text and is cast once by the server.
INSERT_EVENT = (
    "INSERT INTO ozzy_outbox (event_id, event_type, event_version, aggregate_type, aggregate_id, payload,"
    " metadata, correlation_id, causation_id, occurred_at)"
    " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::uuid, %s::uuid, %s)"
)

#: The same INSERT with its values written as quoted literals, for the unit of work's COMMIT: this
#: text, then ``(v1::uuid, v2::text, ...)`` per row, the casts of :data:`INSERT_EVENT_TYPES` in the
#: order of :data:`INSERT_EVENT`'s parameters (see :func:`shared.outbox.write.write_at_commit`).
INSERT_EVENT_VALUES = (
    "INSERT INTO ozzy_outbox (event_id, event_type, event_version, aggregate_type, aggregate_id, payload,"
    " metadata, correlation_id, causation_id, occurred_at) VALUES "
)
INSERT_EVENT_TYPES = ("uuid", "text", "integer", "text", "text", "jsonb", "jsonb", "uuid", "uuid", "timestamptz")

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
          JOIN unnest(%(route_types)s::text[], %(route_handlers)s::text[]) AS r(event_type, handler)
            ON r.event_type = c.event_type
        ON CONFLICT (event_id, handler) DO NOTHING
    )
"""

def _claim(where: str) -> str:
    # The event id goes back as text: the relay only writes it into messages. Driver-level
    # placeholders: the relay runs it on the psycopg cursor, its BEGIN in the same round trip.
    return (
        f"""
        WITH claimed AS (
            SELECT {_CLAIMED_COLUMNS}
              FROM ozzy_outbox
             WHERE {where}
             ORDER BY id
             LIMIT %(limit)s
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
    "dispatched_at IS NULL AND parked_at IS NULL AND event_type = ANY(%(types)s::text[])"
)

#: Taken right before positions are assigned and held until commit (transaction-scoped): relays
#: commit their batches one at a time in position order, so a reader following
#: ``dispatch_seq > checkpoint`` can never see position N+1 before N is committed.
DISPATCH_LOCK_KEY = 7305214102011
DISPATCH_LOCK = text(f"SELECT pg_advisory_xact_lock({DISPATCH_LOCK_KEY})")

#: Takes :data:`DISPATCH_LOCK`, then marks a batch dispatched and numbers it, in one statement:
#: ``%(ids)s`` in ascending order get the positions ``base + 1 .. base + n``. The block is reserved
#: with one ``nextval`` and one ``setval`` (safe under the lock, the only place positions are
#: assigned), not a ``nextval`` per row, and the positions are computed by the caller rather than
#: sent back row by row. ``block`` reads ``lock`` so the lock is held before the block is reserved
#: (a CTE with a volatile function is evaluated once, when first read). ``marked`` lets the caller
#: check that every row was there to mark. The COMMIT is not pipelined with it: a relay killed while
#: it waits for the lock must leave its batch to roll back, not commit once the lock is free.
#: Driver-level placeholders (run on the psycopg cursor).
MARK_DISPATCHED = f"""
    WITH lock AS (
        SELECT pg_advisory_xact_lock({DISPATCH_LOCK_KEY}) AS held
    ), block AS (
        SELECT setval('ozzy_dispatch_seq', nextval('ozzy_dispatch_seq') + cardinality(%(ids)s::bigint[]) - 1)
               - cardinality(%(ids)s::bigint[]) AS base
          FROM lock
    ), marked AS (
        UPDATE ozzy_outbox o
           SET dispatched_at = now(), dispatch_seq = block.base + s.n
          FROM block, unnest(%(ids)s::bigint[]) WITH ORDINALITY AS s(id, n)
         WHERE o.id = s.id
        RETURNING 1
    )
    SELECT block.base, (SELECT count(*) FROM marked) AS marked FROM block
"""


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
