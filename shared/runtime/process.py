"""One process lifecycle for web, relay and worker.

Besides its own job, every long-running process registers and heartbeats in the node registry,
runs the cluster-wide listeners (the settings and flags cache and control commands first, then the
application's), answers the control commands that target it, and stops cleanly on SIGTERM or
SIGINT: its job finishes what is in flight, then the process records its stop and exits 0.

A job that cannot work without Redis (relay, worker) starts only once Redis answers: while it does
not, the process says so in one warning line and waits (a signal still stops it, with 0).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from redis.exceptions import RedisError
from sqlalchemy.engine import make_url

from shared.cluster.control import Controls
from shared.cluster.nodes import Node
from shared.cluster.reader import ClusterListener
from shared.runtime.observe import Observability
from shared.runtime.root import Runtime

log = logging.getLogger(__name__)


class _Interrupted(Exception):
    """Raised in the main thread by SIGTERM or SIGINT while a blocking ``serve`` runs."""


class Process:
    """The lifecycle of one Ozzy process of ``kind``; its job plugs in through :meth:`run`."""

    def __init__(self, runtime: Runtime, kind: str, *, info: Callable[[], dict[str, Any]] = dict,
                 alive: dict[str, Callable[[], bool]] | None = None, **control_actions: Any) -> None:
        self.runtime = runtime
        self.kind = kind
        self._info = info
        #: The job's liveness checks for ``/healthz`` (each True while its loop runs).
        self.alive = dict(alive or {})
        self.started = False
        self.node = Node(runtime.engine, kind, self.status)
        self.controls = Controls(self.node, **control_actions)
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)
        self.listeners: ClusterListener | None = None
        self._stop = threading.Event()
        self._serving = False

    def every(self, seconds: float, fn: Callable[[], None], job_id: str, *, now: bool = False) -> None:
        """Run ``fn`` every ``seconds`` on the process's scheduler (at once too, with ``now``)."""
        self.scheduler.add_job(
            fn, "interval", seconds=seconds, id=job_id, max_instances=1, coalesce=True,
            **({"next_run_time": datetime.now(timezone.utc)} if now else {}),
        )

    def status(self) -> dict[str, Any]:
        """What the node registry shows for this process."""
        status = dict(self._info())
        if self.listeners is not None:
            status["listeners"] = self.listeners.status()
        status["commands"] = self.controls.acknowledged()
        return status

    def start(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start the listeners (``on_ready`` runs once they are placed and the settings loaded),
        register the node, start the scheduler with the heartbeat."""
        config = self.runtime.config
        specs = [self.runtime.values.listener(), self.controls.listener(), *self.runtime.listeners]
        name = config.node_name or f"{socket.gethostname()}-{self.kind}"
        self.listeners = ClusterListener(self.runtime.engine, self.runtime.redis, config, name, specs,
                                         node_id=str(self.node.id))
        self.listeners.start(on_ready)
        self.node.register()
        self.every(config.node_heartbeat, self.node.beat, "node-heartbeat")
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.listeners is not None:
            self.listeners.stop()
        self.node.stopped()

    def run(
        self,
        *,
        start: Callable[[], None],
        stop: Callable[[], None],
        serve: Callable[[], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        needs_redis: bool = False,
    ) -> int:
        """Start the job and the lifecycle, block (in ``serve``, or until a signal), then stop the
        job (it finishes what is in flight), the lifecycle and the runtime; return 0. With
        ``needs_redis``, wait for Redis to answer before starting the job."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            observability = Observability(self, self.alive, started=lambda: self.started)
        except Exception:  # the metrics port cannot be bound: nothing started yet
            self.runtime.close()
            raise
        observability.start()  # probes answer while the job waits for Redis
        if needs_redis and not self._wait_for_redis():
            observability.stop()
            self.runtime.close()
            return 0
        start()
        self.start(on_ready)
        self.started = True
        try:
            if serve is not None:
                self._serving = True
                serve()
            else:
                self._stop.wait()
        except _Interrupted:
            pass
        finally:
            self._serving = False
            log.info("%s stopping", self.kind)
            self.started = False
            stop()
            self.stop()
            observability.stop()
            self.runtime.close()
        return 0

    def _wait_for_redis(self, interval: float = 1.0) -> bool:
        """True once Redis answers a PING (one warning while it does not); False if stopped first."""
        warned = False
        while not self._stop.is_set():
            try:
                self.runtime.redis.ping()
            except (RedisError, OSError):
                if not warned:
                    log.warning("Redis at %s is unreachable; waiting for it", redis_location(self.runtime.config.redis_url))
                    warned = True
                self._stop.wait(interval)
                continue
            if warned:
                log.info("Redis is back; %s starting", self.kind)
            return True
        return False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop.set()
        if self._serving:
            self._serving = False
            raise _Interrupted


def redis_location(url: str) -> str:
    """A Redis URL fit for a log line: its password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable as a URL: show only the scheme
        return url.split("://", 1)[0] + "://…"
