"""Singleton chores: housekeeping that exactly one relay runs at a time, under a lease.

The lease is a PostgreSQL session advisory lock held on a dedicated connection. When the holder dies
its connection closes, PostgreSQL releases the lock, and the next relay to try (every
``OZZY_SWEEP_INTERVAL`` seconds) takes over: no clocks to agree on, no lease row to expire.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

HOUSEKEEPING_LOCK = 7305214102012


class Lease:
    """An advisory lock kept on its own connection for as long as this process holds it."""

    def __init__(self, engine: Engine, key: int = HOUSEKEEPING_LOCK) -> None:
        self.engine = engine
        self.key = key
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def acquire(self) -> bool:
        """Hold the lease (again) if nobody else does; True while this process holds it."""
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))  # the lock lives as long as this connection
                return True
            except SQLAlchemyError:
                log.warning("lost the housekeeping lease with its connection")
                self._drop()
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar():
                self._conn = conn
                log.info("took the housekeeping lease")
                return True
            conn.close()
        except SQLAlchemyError as exc:
            log.warning("could not try the housekeeping lease: %s", exc)
        return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            except SQLAlchemyError:
                pass
            self._drop()

    def _drop(self) -> None:
        try:
            if self._conn is not None:
                self._conn.invalidate()
                self._conn.close()
        finally:
            self._conn = None


PRUNE_DELIVERIES = text(
    """
    DELETE FROM ozzy_deliveries WHERE id IN (
        SELECT id FROM ozzy_deliveries
         WHERE status IN ('done', 'resolved') AND completed_at < now() - make_interval(secs => :age)
         LIMIT :batch)
    """
)
#: Old dispatched events, and the deliveries of exactly those events, in one statement.
PRUNE_OUTBOX = text(
    """
    WITH doomed AS (
        SELECT id, event_id FROM ozzy_outbox
         WHERE dispatched_at IS NOT NULL AND occurred_at < now() - make_interval(secs => :age)
         LIMIT :batch
           FOR UPDATE SKIP LOCKED
    ), gone_deliveries AS (
        DELETE FROM ozzy_deliveries d USING doomed WHERE d.event_id = doomed.event_id
    )
    DELETE FROM ozzy_outbox o USING doomed WHERE o.id = doomed.id
    """
)
MARK_GONE = text(
    """
    UPDATE ozzy_nodes SET stopped_at = now(), info = info || '{"gone": true}'::jsonb
     WHERE stopped_at IS NULL AND heartbeat_at < now() - make_interval(secs => :after)
    """
)
FORGET_NODES = text("DELETE FROM ozzy_nodes WHERE stopped_at < now() - interval '7 days'")


def prune(engine: Engine, statement: Any, age_seconds: float, batch: int, budget_seconds: float = 1.0) -> int:
    """Delete in batches of ``batch`` rows, each its own short transaction, for at most
    ``budget_seconds``; the next run continues. Return the rows deleted."""
    deleted, started = 0, time.monotonic()
    while time.monotonic() - started < budget_seconds:
        with engine.begin() as conn:
            count = conn.execute(statement, {"age": age_seconds, "batch": batch}).rowcount
        deleted += count
        if count < batch:
            break
    return deleted


def run_retention(engine: Engine, settings: Any) -> dict[str, int]:
    """Prune completed deliveries (and, if configured, old events); mark silent nodes gone."""
    day = 86400.0
    result = {
        "deliveries_pruned": prune(engine, PRUNE_DELIVERIES, settings.delivery_retention_days * day,
                                   settings.retention_batch),
        "events_pruned": 0,
    }
    if settings.outbox_retention_days is not None:
        result["events_pruned"] = prune(engine, PRUNE_OUTBOX, settings.outbox_retention_days * day,
                                        settings.retention_batch)
    with engine.begin() as conn:
        result["nodes_marked_gone"] = conn.execute(MARK_GONE, {"after": settings.node_gone_after}).rowcount
        conn.execute(FORGET_NODES)
    return result
