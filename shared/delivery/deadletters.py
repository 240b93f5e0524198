"""Dead letters live in PostgreSQL (``ozzy_deliveries.status = 'dead'``), not only in Dramatiq's
Redis set that expires after seven days. Operators list them and retry them with a fresh retry
budget; a retried delivery that succeeds is ``done`` and no longer dead."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.db import sql
from shared.db.tables import DEAD, PENDING, RETRYING
from shared.delivery import ordering
from shared.delivery.messages import send
from shared.delivery.wiring import Wiring
from shared.model.stored import envelope_json


def list_dead(
    wiring: Wiring, *, handler: str | None = None, event_type: str | None = None, limit: int = 100
) -> list[Any]:
    with wiring.engine.connect() as conn:
        return list(conn.execute(sql.LIST_DEAD, {"handler": handler, "event_type": event_type, "limit": limit}).all())


#: Deliveries an operator may retry: anything not finished.
RETRYABLE = (PENDING, RETRYING, DEAD)


def retry_dead(
    wiring: Wiring,
    *,
    handler: str | None = None,
    event_type: str | None = None,
    ids: Sequence[int] | None = None,
    statuses: Sequence[str] = (DEAD,),
    batch_size: int = 500,
) -> int:
    """Enqueue every matching delivery again with a fresh retry budget (all of them, batch by
    batch); return how many. By default only dead ones; ``statuses`` widens it (never to finished
    work). Only handlers this process knows can be retried; the others are left as they are."""
    known = sorted(wiring.handlers)
    wanted = [s for s in statuses if s in RETRYABLE]
    total, after = 0, 0
    while True:
        with wiring.engine.connect() as conn, conn.begin():
            rows = conn.execute(
                sql.CLAIM_FOR_RETRY,
                {"handler": handler, "event_type": event_type, "ids": list(ids) if ids else None,
                 "known": known, "statuses": wanted, "limit": batch_size, "after": after},
            ).all()
            if not rows:
                return total
            send(wiring.redis, wiring.config.redis_namespace, [(wiring.handlers[r.handler], envelope_json(r)) for r in rows])
            conn.execute(sql.MARK_REENQUEUED, {"ids": [r.delivery_id for r in rows]})
        total += len(rows)
        after = rows[-1].delivery_id


def resolve(wiring: Wiring, ids: Sequence[int], actor: str | None) -> int:
    """Mark unfinished deliveries resolved (never to run); return how many changed."""
    note = f"resolved by {actor or 'an operator'}"
    with wiring.engine.begin() as conn:
        # An ordered handler's next delivery of the same key, if it waited for this one, goes on.
        count, released = ordering.resolve_and_release(conn, ids, sql.RESOLVE, {"ids": list(ids), "note": note})
    ordering.send_released(wiring, released)
    return count
