"""The durable feed: the event log in dispatch order, page by page, for another service to follow.

A client keeps one number, the position of the last event it processed, and asks for what comes
after it. Positions are given at dispatch under a lock and committed in order, so a page never
skips an event that committed late: it simply has a later position. When a page is shorter than
asked, the cursor moves to the end of the log as seen in the same snapshot (past events of types
the client filtered out), which no later commit can fall behind.

Long-polling waits for something new without holding a database connection: the relay's
announcement on the fast channel wakes the waiters at once; without it they look again every
``POLL`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from sqlalchemy import Engine

from shared.channel.pubsub import Subscriber, events_channel
from shared.config import Config
from shared.db import sql

#: Without a fast-channel wake-up, a long-poll looks at the log again this often (seconds).
POLL = 1.0


def read_feed(engine: Engine, after: int, limit: int, types: Sequence[str] | None = None) -> dict[str, Any]:
    """One page: ``{"items": [...], "next_after": position}`` (see the module docstring)."""
    with engine.connect() as conn:
        rows = conn.execute(sql.READ_LOG, {"after": after, "types": list(types) if types else None,
                                           "limit": limit}).all()
    end = rows[0].end_of_log
    rows = [r for r in rows if r.dispatch_seq is not None]
    next_after = rows[-1].dispatch_seq if len(rows) == limit else max(after, end)
    return {"items": [item(r) for r in rows], "next_after": next_after}


def item(row: Any) -> dict[str, Any]:
    return {
        "position": row.dispatch_seq,
        "event_id": str(row.event_id),
        "type": row.event_type,
        "version": row.event_version,
        "aggregate_id": row.aggregate_id,
        "occurred_at": row.occurred_at.isoformat(),
        "payload": row.payload,
        "metadata": row.metadata,
    }


class LogWaiter:
    """Wakes long-polls when the relay announces dispatched events. One per web process, started
    on first use; ``generation`` grows with every announcement."""

    def __init__(self, client: redis.Redis, config: Config) -> None:
        self.generation = 0
        self._cond = threading.Condition()
        self._started = False
        self._subscriber = Subscriber(
            client, [events_channel(config.redis_namespace)], lambda channel, data: self._bump(),
            namespace=config.redis_namespace, heartbeat=config.fast_channel_heartbeat, name="feed",
        )

    def _bump(self) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    def ensure_started(self) -> None:
        with self._cond:
            if not self._started:
                self._started = True
                self._subscriber.start()

    def wait_past(self, generation: int, timeout: float) -> bool:
        """Block until an announcement after ``generation`` or ``timeout`` seconds; True if woken."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.generation == generation:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def stop(self) -> None:
        self._subscriber.stop()


def follow(engine: Engine, waiter: LogWaiter | None, after: int, limit: int, types: Sequence[str] | None,
           wait: float) -> dict[str, Any]:
    """A page, waiting up to ``wait`` seconds for one that is not empty (no connection held while
    waiting: the fast channel wakes it, or a look every :data:`POLL` seconds)."""
    deadline = time.monotonic() + wait
    if waiter is not None and wait > 0:
        waiter.ensure_started()
    while True:
        generation = waiter.generation if waiter is not None else 0
        page = read_feed(engine, after, limit, types)
        left = deadline - time.monotonic()
        if page["items"] or left <= 0:
            return page
        # Events of other types moved the cursor: keep it, so the next look starts there.
        after = page["next_after"]
        if waiter is not None:
            waiter.wait_past(generation, min(left, POLL))
        else:
            time.sleep(min(left, POLL))
