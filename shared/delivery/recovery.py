"""Housekeeping that keeps "nothing is lost" true when Redis forgets or a worker dies.

* :func:`redeliver_stale` enqueues again every delivery that PostgreSQL says is unfinished long
  after it was enqueued, unless Redis still seems to hold its messages (so a deep backlog is not
  doubled). It covers a Redis restarted empty, a failover to a lagging replica, a lost message.
* :func:`recover_dead_workers` runs Dramatiq's own queue maintenance for every handler queue, which
  puts the unacknowledged messages of workers whose heartbeat stopped back on their queues.
  Dramatiq only does this on a small random share of commands; housekeeping does it every sweep.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from dramatiq.common import current_millis, dq_name

from shared.db import sql
from shared.delivery.broker import OzzyBroker
from shared.delivery.messages import send
from shared.delivery.wiring import Wiring
from shared.model.stored import envelope_json

log = logging.getLogger(__name__)


def redeliver_stale(wiring: Wiring, *, older_than: float, limit: int = 500) -> int:
    """Re-enqueue up to ``limit`` stale deliveries; return how many were sent."""
    broker, handlers = wiring.broker, wiring.handlers
    with wiring.engine.connect() as conn, conn.begin():
        rows = conn.execute(sql.CLAIM_STALE_DELIVERIES, {"older_than": older_than, "limit": limit}).all()
        if not rows:
            return 0
        open_by_queue: dict[str, int] = defaultdict(int)
        for handler, count in conn.execute(sql.OPEN_DELIVERIES_BY_HANDLER).all():
            if handler in handlers:
                open_by_queue[handlers[handler].queue] += count
        held = queued_counts(broker, open_by_queue)
        chosen = [r for r in rows if r.handler in handlers
                  and held[handlers[r.handler].queue] < open_by_queue[handlers[r.handler].queue]]
        if not chosen:
            return 0
        send(wiring.redis, broker.namespace, [(handlers[r.handler], envelope_json(r)) for r in chosen])
        conn.execute(sql.MARK_REENQUEUED, {"ids": [r.delivery_id for r in chosen]})
    log.warning("re-enqueued %d deliveries that Redis no longer held", len(chosen))
    return len(chosen)


def queued_counts(broker: OzzyBroker, queues: Iterable[str]) -> dict[str, int]:
    """Messages Redis holds per queue: waiting, in flight or delayed for a retry."""
    names = list(queues)
    pipe = broker.client.pipeline(transaction=False)
    for queue in names:
        pipe.hlen(f"{broker.namespace}:{queue}.msgs")
        pipe.hlen(f"{broker.namespace}:{dq_name(queue)}.msgs")
    counts = pipe.execute()
    return {queue: counts[2 * i] + counts[2 * i + 1] for i, queue in enumerate(names)}


def recover_dead_workers(broker: OzzyBroker, queues: Iterable[str]) -> None:
    """Requeue the in-flight messages of workers silent for longer than the heartbeat timeout."""
    dispatch = broker.scripts["dispatch"]
    pipe = broker.client.pipeline(transaction=False)
    for queue in queues:
        for name in (queue, dq_name(queue)):
            args = ["qsize", current_millis(), name, broker.broker_id, broker.heartbeat_timeout,
                    broker.dead_message_ttl, 1,
                    broker._max_unpack_size()]  # type: ignore[no-untyped-call]  # Dramatiq's own argument, untyped
            dispatch(keys=[broker.namespace], args=args, client=pipe)
    pipe.execute()
