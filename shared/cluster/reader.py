"""The reader that runs one process's cluster-wide listeners (see :mod:`shared.cluster.listeners`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shared.channel.pubsub import Subscriber, events_channel
from shared.cluster.listeners import ListenerSpec
from shared.config import Config
from shared.db import sql
from shared.model.events import Event
from shared.model.stored import decode, from_row

log = logging.getLogger(__name__)


class ClusterListener:
    """Runs this process's listeners: one reader thread, woken by pub/sub or by the poll."""

    def __init__(
        self, engine: Engine, client: redis.Redis, config: Config, node_name: str, specs: Iterable[ListenerSpec]
    ) -> None:
        self.engine = engine
        self.config = config
        self.node_name = node_name
        self.specs = {spec.name: spec for spec in specs}
        # Computed once: the reader consults them for every row it delivers.
        self._types = {name: spec.type_names for name, spec in self.specs.items()}
        self.positions: dict[str, int] = {}
        self.delivered = 0
        #: Set once every listener is placed and the reloads ran.
        self.ready = threading.Event()
        self._on_ready: Callable[[], None] | None = None
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.subscriber = Subscriber(
            client,
            [events_channel(config.redis_namespace)],
            lambda channel, data: self._wake.set(),
            namespace=config.redis_namespace,
            heartbeat=config.fast_channel_heartbeat,
            on_connect=self._wake.set,
            name=f"listeners[{node_name}]",
        )

    def _checkpoint_name(self, spec: ListenerSpec) -> str:
        return f"{self.node_name}:{spec.name}"

    def start(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start listening. In the reader thread: place every listener at its start position, run
        the ``on_start`` reloads and ``on_ready``, retrying while the database is unreachable (a
        process may start during an outage), then follow the log."""
        if not self.specs:
            return
        self._on_ready = on_ready
        self._thread = threading.Thread(target=self._run, name="ozzy-cluster-listeners", daemon=True)
        self._thread.start()
        self.subscriber.start()

    def _prepare(self) -> None:
        pause = 0.1
        while not self._stopped.is_set():
            try:
                self._place()
                for spec in self.specs.values():
                    if spec.on_start is not None:
                        spec.on_start()
                if self._on_ready is not None:
                    self._on_ready()
                self.ready.set()
                return
            except SQLAlchemyError as exc:
                log.warning("cluster listeners waiting for the database: %s", exc)
                self._stopped.wait(pause)
                pause = min(pause * 2, 5.0)

    def _place(self) -> None:
        durable = [self._checkpoint_name(s) for s in self.specs.values() if s.start == "checkpoint"]
        with self.engine.connect() as conn:
            end = conn.execute(sql.END_OF_LOG).scalar_one()
            saved = {n: p for n, p in conn.execute(sql.LOAD_CHECKPOINTS, {"names": durable}).tuples()} if durable else {}
        for name, spec in self.specs.items():
            self.positions[name] = saved.get(self._checkpoint_name(spec), end) if spec.start == "checkpoint" else end

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self.subscriber.stop()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        self._prepare()
        interval = self.config.poll_interval
        while not self._stopped.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                while self.catch_up() == 500:
                    pass
            except SQLAlchemyError as exc:
                log.warning("cluster listeners could not read the event log, retrying: %s", exc)

    def catch_up(self, limit: int = 500) -> int:
        """Deliver every event past the listeners' positions (up to ``limit``); return how many rows."""
        types = sorted(set().union(*self._types.values()))
        after = min(self.positions.values())
        with self.engine.connect() as conn:
            rows = conn.execute(sql.FETCH_DISPATCHED, {"after": after, "types": types, "limit": limit}).all()
        for row in rows:
            self._deliver(row)
        self._save_checkpoints()
        return len(rows)

    def _deliver(self, row: Any) -> None:
        stored = from_row(row, position=row.dispatch_seq)
        event: Event | None = None
        for name, spec in self.specs.items():
            if self.positions[name] >= row.dispatch_seq or row.event_type not in self._types[name]:
                continue
            try:
                event = event or decode(stored)
                spec.fn(event)
                self.delivered += 1
            except Exception:  # noqa: BLE001 - one listener's failure must not stop the others
                log.exception("listener %s failed on %s %s", name, row.event_type, row.event_id)
            self.positions[name] = row.dispatch_seq
        for name in self.specs:
            self.positions[name] = max(self.positions[name], row.dispatch_seq)

    def _save_checkpoints(self) -> None:
        durable = [(self._checkpoint_name(s), self.positions[n]) for n, s in self.specs.items() if s.start == "checkpoint"]
        if not durable:
            return
        with self.engine.begin() as conn:
            for name, position in durable:
                conn.execute(sql.SAVE_CHECKPOINT, {"name": name, "position": position})

    def status(self) -> dict[str, Any]:
        return {"positions": dict(self.positions), "delivered": self.delivered, "fast_channel": self.subscriber.status()}
