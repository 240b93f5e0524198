"""The gauges read from PostgreSQL: ``ozzy_outbox_backlog``, ``ozzy_outbox_oldest_age_seconds`` and
``ozzy_deliveries`` (``handler``, ``status``: the unfinished ones, pending, retrying, dead).

Every process that serves metrics could read them, but only one does at a time: the one holding
an advisory-lock lease (the housekeeping lease's mechanism, another key), which reads every
``OZZY_METRICS_DB_INTERVAL`` seconds off the scrape path and exports what it read. The others export
none of these series, so a rule sums or takes the max over instances and never counts one backlog
three times. When the holder stops, its connection closes and the next process to try takes over.
The queries read only indexes of unfinished work (see :mod:`shared.ops.monitoring`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shared.db import sql
from shared.db.tables import DEAD, PENDING, RETRYING
from shared.observability import metrics
from shared.ops.housekeeping import Lease

log = logging.getLogger(__name__)

#: The metrics lease's advisory lock key (the housekeeping lease uses ...012).
METRICS_LOCK = 7305214102017


class DatabaseGauges(Collector):
    """Reads the gauges while holding the metrics lease; a Prometheus collector of what it read."""

    def __init__(self, engine: Engine, handlers: Iterable[str] = ()) -> None:
        self.engine = engine
        self.handlers = sorted(handlers)
        self.lease = Lease(engine, METRICS_LOCK, name="metrics")
        self._snapshot: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read the gauges if this process holds (or can take) the lease; for a scheduler."""
        if not self.lease.acquire():
            self._snapshot = None
            return
        try:
            with self.engine.connect() as conn:
                backlog = conn.execute(sql.BACKLOG).one()
                deliveries = {(h, s): 0 for h in self.handlers for s in (PENDING, RETRYING, DEAD)}
                for row in conn.execute(sql.OPEN_BY_HANDLER):
                    deliveries[(row.handler, row.status)] = row.n
        except SQLAlchemyError as exc:
            log.warning("could not read the pipeline's gauges: %s", exc)
            self._snapshot = None  # a gauge that is not known is not exported, rather than stale
            return
        self._snapshot = {"backlog": backlog.undispatched, "oldest": backlog.oldest, "deliveries": deliveries,
                          "read_at": time.monotonic()}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self._snapshot
        if snapshot is None:
            return
        yield GaugeMetricFamily(metrics.OUTBOX_BACKLOG, "Events committed and not yet dispatched (parked ones aside)",
                                value=snapshot["backlog"])
        oldest = snapshot["oldest"]
        age = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(metrics.OUTBOX_OLDEST_AGE, "Age of the oldest undispatched event (0 when none)",
                                value=max(age, 0.0))
        family = GaugeMetricFamily(metrics.DELIVERIES, "Unfinished deliveries by handler and status",
                                   labels=["handler", "status"])
        for (handler, status), n in sorted(snapshot["deliveries"].items()):
            family.add_metric([handler, status], n)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # collected on demand only: registering must not read the database

    def close(self) -> None:
        self.lease.release()
        self._snapshot = None
