"""Housekeeping: the singleton chores that exactly one relay runs at a time, under a lease.

Every ``OZZY_SWEEP_INTERVAL`` seconds, on the relay holding the lease: redeliver what Redis lost,
put dead workers' messages back on their queues, prune completed deliveries (and old events, if
configured) in small batches, mark silent nodes gone.

The lease is a PostgreSQL session advisory lock held on a dedicated connection. When the holder dies
its connection closes, PostgreSQL releases the lock, and the next relay to try takes over: no clocks
to agree on, no lease row to expire.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Connection, Engine, TextClause
from sqlalchemy.exc import SQLAlchemyError

from shared.config import Config
from shared.db import sql
from shared.delivery.recovery import recover_dead_workers, redeliver_stale
from shared.delivery.wiring import Wiring

log = logging.getLogger(__name__)

HOUSEKEEPING_LOCK = 7305214102012


class Lease:
    """An advisory lock kept on its own connection for as long as this process holds it."""

    def __init__(self, engine: Engine, key: int = HOUSEKEEPING_LOCK, *, name: str = "housekeeping") -> None:
        self.engine = engine
        self.key = key
        self.name = name
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def acquire(self) -> bool:
        """Hold the lease (again) if nobody else does; True while this process holds it."""
        if self._conn is not None:
            try:
                self._conn.execute(sql.PING)  # the lock lives as long as this connection
                return True
            except SQLAlchemyError:
                log.warning("lost the %s lease with its connection", self.name)
                self._drop()
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if conn.execute(sql.TRY_LEASE, {"k": self.key}).scalar():
                self._conn = conn
                log.info("took the %s lease", self.name)
                return True
            conn.close()
        except SQLAlchemyError as exc:
            log.warning("could not try the %s lease: %s", self.name, exc)
        return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(sql.RELEASE_LEASE, {"k": self.key})
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


def prune(engine: Engine, statement: TextClause, age_seconds: float, batch: int, budget_seconds: float = 1.0) -> int:
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


def run_retention(engine: Engine, config: Config) -> dict[str, int]:
    """Prune completed deliveries (and, if configured, old events); mark silent nodes gone."""
    day = 86400.0
    result = {
        "deliveries_pruned": prune(engine, sql.PRUNE_DELIVERIES, config.delivery_retention_days * day,
                                   config.retention_batch),
        "events_pruned": 0,
    }
    if config.outbox_retention_days is not None:
        result["events_pruned"] = prune(engine, sql.PRUNE_OUTBOX, config.outbox_retention_days * day,
                                        config.retention_batch)
    with engine.begin() as conn:
        result["nodes_marked_gone"] = conn.execute(sql.MARK_GONE, {"after": config.node_gone_after}).rowcount
        conn.execute(sql.FORGET_NODES)
    return result


class Housekeeping:
    """The chores of one relay process, run on its scheduler; only the lease holder does them."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self.lease = Lease(wiring.engine)
        self.redelivered = 0

    def run(self) -> None:
        if not self.lease.acquire():
            return
        try:
            self.redelivered += redeliver_stale(self.wiring, older_than=self.wiring.config.redelivery_after)
            recover_dead_workers(self.wiring.broker, self.wiring.handlers.queues())
            pruned = run_retention(self.wiring.engine, self.wiring.config)
            if any(pruned.values()):
                log.info("housekeeping: %s", pruned)
        except Exception as exc:  # noqa: BLE001 - housekeeping retries at its next run
            log.warning("housekeeping failed, retrying at the next sweep: %s", exc)

    def status(self) -> dict[str, Any]:
        return {"leader": self.lease.held, "redelivered": self.redelivered}

    def stop(self) -> None:
        self.lease.release()
