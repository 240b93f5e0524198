"""What every long-running process does besides its job: register and heartbeat in the node
registry, and run the cluster-wide listeners (settings and flags cache included)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timezone
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from shared.cluster import ClusterListener, start_listeners
from shared.nodes import Node


class ProcessLife:
    def __init__(self, runtime: Any, kind: str, info: Callable[[], dict[str, Any]] = dict) -> None:
        self.runtime = runtime
        self.kind = kind
        self._info = info
        self.node = Node(runtime.engine, kind, self.status)
        self.listeners: ClusterListener | None = None
        self._scheduler: BackgroundScheduler | None = None

    def status(self) -> dict[str, Any]:
        from shared import control

        status = dict(self._info())
        if self.listeners is not None:
            status["listeners"] = self.listeners.status()
        status["commands"] = control.acknowledged()
        return status

    def start(self, on_ready: Callable[[], None] | None = None) -> None:
        self.listeners = start_listeners(self.runtime, self.kind, on_ready)
        self.node.register()
        self._scheduler = BackgroundScheduler(timezone=timezone.utc)
        self._scheduler.add_job(
            self.node.heartbeat, "interval", seconds=self.runtime.settings.node_heartbeat, max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self.listeners is not None:
            self.listeners.stop()
        self.node.stopped()
