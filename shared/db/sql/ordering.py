"""Ordered handlers: the key and position the relay records, the per-key gate the worker passes,
and the hand-over to the next delivery of a key. See :mod:`shared.delivery.ordering`.

Only deliveries of handlers declared with ``ordered_by=`` have an ``order_key``; every statement
here filters on it, so unordered handlers never reach these rows or the partial index behind them.
"""

from __future__ import annotations

from sqlalchemy import text

from shared.db.tables import BLOCKED, DONE, FINISHED_SQL, PENDING

#: The relay, in its dispatch transaction (under the dispatch lock, once positions are known): each
#: ordered delivery gets its key and its event's dispatch position, one statement for the batch.
ORDER_DELIVERIES = text(
    """
    UPDATE ozzy_deliveries d SET order_key = k.key, dispatch_seq = k.seq
      FROM unnest(CAST(:event_ids AS uuid[]), CAST(:handlers AS text[]), CAST(:keys AS text[]),
                  CAST(:seqs AS bigint[])) AS k(event_id, handler, key, seq)
     WHERE d.event_id = k.event_id AND d.handler = k.handler
    """
)

#: The worker's gate, step 1 (driver statements, ``%(name)s`` parameters, sent with step 2 in one
#: pipeline, so one round trip, see :func:`shared.delivery.ordering.enter`): the key's lock
#: (transaction scoped). Every change of an ordered delivery's state that could let another one of
#: its key run (a run, a block, a release, a resolve) holds this lock, so "is an earlier one
#: unfinished?" and "who is next?" are never answered from a state that is changing under them. No
#: row: the delivery is not ordered (a delivery from before its handler was ordered, or no key).
LOCK_KEY = """
    SELECT pg_advisory_xact_lock(hashtext(handler), hashtext(order_key))
      FROM ozzy_deliveries
     WHERE event_id = %(event_id)s AND handler = %(handler)s AND order_key IS NOT NULL AND dispatch_seq IS NOT NULL
"""

#: The gate, step 2, the inbox and the hand-over in one statement (a second statement, run once
#: step 1 has returned, so its snapshot is taken after the lock was granted; the lock cannot ride
#: in one statement, whose snapshot would predate it). ``me``: the delivery's key and position
#: (written once by the relay before its message left, so step 1 saw the same; none: ``keyed`` is
#: false and nothing else happens). ``blocker``: the earliest unfinished delivery of the key before
#: this one; if there is one, this delivery becomes ``blocked`` and nothing else happens. Otherwise
#: the inbox claim (``claimed``: NULL if the pair is already finished), and, in the same
#: transaction, the hand-over: if the next unfinished delivery of the key is ``blocked``, it becomes
#: pending and comes back with its event (one row per column set), to be sent once the handler's
#: transaction commits. If the handler fails, the rollback undoes the claim and the release together.
ORDERED_CLAIM = f"""
    WITH me AS (
        SELECT order_key, dispatch_seq FROM ozzy_deliveries
         WHERE event_id = %(event_id)s AND handler = %(handler)s AND order_key IS NOT NULL
           AND dispatch_seq IS NOT NULL
    ), blocker AS (
        SELECT id FROM ozzy_deliveries
         WHERE handler = %(handler)s AND order_key = (SELECT order_key FROM me) AND order_key IS NOT NULL
           AND dispatch_seq < (SELECT dispatch_seq FROM me) AND status NOT IN {FINISHED_SQL}
         ORDER BY dispatch_seq
         LIMIT 1
    ), blocked AS (
        UPDATE ozzy_deliveries SET status = '{BLOCKED}', updated_at = now()
         WHERE event_id = %(event_id)s AND handler = %(handler)s AND status NOT IN {FINISHED_SQL}
           AND EXISTS (SELECT 1 FROM blocker)
        RETURNING id
    ), claimed AS (
        UPDATE ozzy_deliveries
           SET status = '{DONE}', attempts = attempts + 1, completed_at = now(), updated_at = now()
         WHERE event_id = %(event_id)s AND handler = %(handler)s AND status NOT IN {FINISHED_SQL}
           AND order_key IS NOT NULL AND dispatch_seq IS NOT NULL AND NOT EXISTS (SELECT 1 FROM blocker)
        RETURNING id
    ), head AS (
        SELECT id, status FROM ozzy_deliveries
         WHERE handler = %(handler)s AND order_key = (SELECT order_key FROM me) AND order_key IS NOT NULL
           AND status NOT IN {FINISHED_SQL} AND event_id <> %(event_id)s
           AND EXISTS (SELECT 1 FROM claimed)
         ORDER BY dispatch_seq
         LIMIT 1
    ), released AS (
        UPDATE ozzy_deliveries d SET status = '{PENDING}', enqueued_at = now(), updated_at = now()
          FROM head WHERE d.id = head.id AND head.status = '{BLOCKED}'
        RETURNING d.id, d.event_id, d.handler
    )
    SELECT EXISTS (SELECT 1 FROM me) AS keyed, (SELECT id FROM blocker) AS blocker,
           (SELECT id FROM claimed) AS claimed,
           r.id AS delivery_id, r.handler, o.id, o.event_id, o.event_type, o.event_version,
           o.aggregate_type, o.aggregate_id, o.payload::text AS payload,
           o.metadata::text AS metadata, o.occurred_at
      FROM (SELECT 1) AS one
      LEFT JOIN released r ON true
      LEFT JOIN ozzy_outbox o ON o.event_id = r.event_id
"""


def _server_prepared(name: str, statement: str) -> str:
    return f"PREPARE {name} AS " + " ".join(statement.split()).replace(
        "%(event_id)s", "current_setting('ozzy.gate_event_id')::uuid").replace(
        "%(handler)s", "current_setting('ozzy.gate_handler')")


#: The gate as one simple query (one round trip, one call into libpq: see
#: :func:`shared.delivery.ordering.enter`): the transaction's BEGIN, the delivery's event id and
#: handler as settings of the transaction, then :data:`LOCK_KEY` and :data:`ORDERED_CLAIM` as two
#: statements of their own (the second's snapshot follows the lock), run from plans the server
#: keeps per connection. The statements take no parameters (they read the two settings), so the
#: server always runs their one generic plan: with parameters, under load, it kept re-planning
#: them (a quarter of an ordered delivery's PostgreSQL time, docs/benchmarks.md). ``{event_id}``
#: and ``{handler}`` are literals the driver escaped.
#: :data:`GATE_PREPARE` goes in front the first time on a connection.
GATE_PREPARE = (_server_prepared("ozzy_gate_lock", LOCK_KEY) + "; "
                + _server_prepared("ozzy_gate_claim", ORDERED_CLAIM) + "; ")
GATE = ("BEGIN; SELECT set_config('ozzy.gate_event_id', {event_id}, true), "
        "set_config('ozzy.gate_handler', {handler}, true); "
        "EXECUTE ozzy_gate_lock; EXECUTE ozzy_gate_claim")

#: After an operator resolved a delivery of the key (in the same transaction, under the key's lock):
#: if the earliest unfinished one of the key is blocked, it becomes pending again and comes back with
#: its event, to be sent after commit (if that send is lost, the redelivery sweep sends it).
RELEASE_NEXT = text(
    f"""
    WITH head AS (
        SELECT id, status FROM ozzy_deliveries
         WHERE handler = :handler AND order_key = :key AND order_key IS NOT NULL
           AND status NOT IN {FINISHED_SQL}
         ORDER BY dispatch_seq
         LIMIT 1
    ), released AS (
        UPDATE ozzy_deliveries d SET status = '{PENDING}', enqueued_at = now(), updated_at = now()
          FROM head WHERE d.id = head.id AND head.status = '{BLOCKED}'
        RETURNING d.id, d.event_id, d.handler
    )
    SELECT r.id AS delivery_id, r.handler, o.id, o.event_id, o.event_type, o.event_version,
           o.aggregate_type, o.aggregate_id, o.payload::text AS payload,
           o.metadata::text AS metadata, o.occurred_at
      FROM released r JOIN ozzy_outbox o ON o.event_id = r.event_id
    """
)

#: The keys of the ordered deliveries among ``:ids`` (an operator resolves them), in lock order.
KEYS_OF = text(
    """
    SELECT DISTINCT handler, order_key FROM ozzy_deliveries
     WHERE id = ANY(CAST(:ids AS bigint[])) AND order_key IS NOT NULL
     ORDER BY handler, order_key
    """
)
LOCK_ONE_KEY = text("SELECT pg_advisory_xact_lock(hashtext(:handler), hashtext(:key))")

#: What the back office and the API show for blocked deliveries: the earliest unfinished delivery
#: of the same key before each one (the delivery that holds it up).
BLOCKERS = text(
    f"""
    SELECT b.id AS blocked_id, f.id AS blocker_id
      FROM ozzy_deliveries b
      CROSS JOIN LATERAL (
            SELECT id FROM ozzy_deliveries x
             WHERE x.handler = b.handler AND x.order_key = b.order_key AND x.dispatch_seq < b.dispatch_seq
               AND x.status NOT IN {FINISHED_SQL}
             ORDER BY x.dispatch_seq LIMIT 1) AS f
     WHERE b.id = ANY(CAST(:ids AS bigint[])) AND b.status = '{BLOCKED}' AND b.order_key IS NOT NULL
    """
)

