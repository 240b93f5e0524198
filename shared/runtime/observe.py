"""The observability of one process, started with it: the metrics port (``/metrics``, ``/healthz``,
``/readyz``), the gauges read from PostgreSQL, and tracing when the ``OTEL_*`` variables ask for it.

Liveness is the process's own loops (its scheduler, the job's threads); readiness is PostgreSQL
answering and the job started (for web: the application loaded and the server about to listen).
PostgreSQL's answer is cached for a second, so a probe storm costs one query a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from sqlalchemy.exc import SQLAlchemyError

from shared.db import sql
from shared.observability import tracing
from shared.observability.server import Check, MetricsServer
from shared.ops.gauges import DatabaseGauges

if TYPE_CHECKING:
    from shared.runtime.process import Process

log = logging.getLogger(__name__)


class DatabaseProbe:
    """``SELECT 1`` with a short timeout, its answer kept for ``ttl`` seconds."""

    def __init__(self, process: Process, ttl: float = 1.0) -> None:
        self.engine = process.runtime.engine
        self.ttl = ttl
        self._at = 0.0
        self._ok = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._at > self.ttl:
            try:
                with self.engine.connect() as conn:
                    conn.execute(sql.PING)
                self._ok = True
            except SQLAlchemyError:
                self._ok = False
            self._at = time.monotonic()
        return self._ok


class Observability:
    """Started by :meth:`Process.run` before the job (so probes answer while it waits for Redis)."""

    def __init__(self, process: Process, alive: dict[str, Check], started: Callable[[], bool]) -> None:
        self.process = process
        config = process.runtime.config
        tracing.configure_from_env(f"ozzy-{process.kind}")
        self.server: MetricsServer | None = None
        self.gauges: DatabaseGauges | None = None
        if config.metrics_port is None:
            return
        scheduler_running: Check = lambda: not started() or process.scheduler.running
        self.server = MetricsServer(
            config.metrics_host, config.metrics_port,
            alive={"scheduler": scheduler_running, **alive},
            ready={"database": DatabaseProbe(process), "started": started},
        )
        self.gauges = DatabaseGauges(process.runtime.engine, process.runtime.handlers)
        REGISTRY.register(self.gauges)
        process.every(config.metrics_db_interval, self.gauges.refresh, "metrics-db-gauges", now=True)

    def start(self) -> None:
        if self.server is not None:
            self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.gauges is not None:
            REGISTRY.unregister(self.gauges)
            self.gauges.close()
        tracing.shutdown()
