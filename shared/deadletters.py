"""Dead letters live in PostgreSQL (``ozzy_deliveries.status = 'dead'``), not only in Dramatiq's
Redis set that expires after seven days. Operators list them and retry them with a fresh retry
budget; a retried delivery that succeeds is ``done`` and no longer dead."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from shared import sql
from shared.dispatch import envelope_json, send
from shared.runtime import Runtime

LIST_DEAD = text(
    """
    SELECT d.id, d.handler, o.event_type, d.event_id, d.attempts, d.dead_reason,
           d.first_failed_at, d.last_failed_at, d.last_error
      FROM ozzy_deliveries d JOIN ozzy_outbox o ON o.event_id = d.event_id
     WHERE d.status = 'dead'
       AND (CAST(:handler AS text) IS NULL OR d.handler = :handler)
       AND (CAST(:event_type AS text) IS NULL OR o.event_type = :event_type)
     ORDER BY d.last_failed_at DESC NULLS LAST, d.id DESC
     LIMIT :limit
    """
)


def list_dead(runtime: Runtime, *, handler: str | None = None, event_type: str | None = None, limit: int = 100) -> list[Any]:
    with runtime.engine.connect() as conn:
        return conn.execute(LIST_DEAD, {"handler": handler, "event_type": event_type, "limit": limit}).all()


#: Deliveries an operator may retry: anything not finished.
RETRYABLE = ("pending", "retrying", "dead")


def retry_dead(
    runtime: Runtime,
    *,
    handler: str | None = None,
    event_type: str | None = None,
    ids: Sequence[int] | None = None,
    statuses: Sequence[str] = ("dead",),
    batch_size: int = 500,
) -> int:
    """Enqueue every matching delivery again with a fresh retry budget (all of them, batch by
    batch); return how many. By default only dead ones; ``statuses`` widens it (never to finished
    work). Only handlers this process knows can be retried; the others are left as they are."""
    known = sorted(runtime.handlers)
    wanted = [s for s in statuses if s in RETRYABLE]
    total, after = 0, 0
    while True:
        with runtime.engine.connect() as conn, conn.begin():
            rows = conn.execute(
                sql.CLAIM_FOR_RETRY,
                {"handler": handler, "event_type": event_type, "ids": list(ids) if ids else None,
                 "known": known, "statuses": wanted, "limit": batch_size, "after": after},
            ).all()
            if not rows:
                return total
            send(runtime.broker, [(runtime.handlers[r.handler], envelope_json(r)) for r in rows])
            conn.execute(sql.MARK_REENQUEUED, {"ids": [r.delivery_id for r in rows]})
        total += len(rows)
        after = rows[-1].delivery_id


def resolve(runtime: Runtime, ids: Sequence[int], actor: str | None) -> int:
    """Mark unfinished deliveries resolved (never to run); return how many changed."""
    note = f"resolved by {actor or 'an operator'}"
    with runtime.engine.begin() as conn:
        return conn.execute(sql.RESOLVE, {"ids": list(ids), "note": note}).rowcount
