"""Cluster-wide listeners: ``@on_every_node(EventType)`` runs a function in **every** process
(web, relay, worker) that loaded it, once per process, in dispatch order.

Handlers (``@handles``) are competing consumers: one worker runs each. Listeners are the other half,
for things every node must hear: settings and flag changes, control commands, cache invalidation.

Delivery reads the event log by ``dispatch_seq`` (a position the relay assigns under a lock at commit,
so a later position is never visible before an earlier one) from the listener's position. The relay's
pub/sub announcement only wakes the reader at once; when it is lost or the subscriber was cut off,
the poll every ``OZZY_POLL_INTERVAL`` catches up. Where a listener starts is an explicit choice:

* ``start="now"`` (caches): from the end of the log when the process starts; pair it with a full
  reload at start (``on_start``).
* ``start="checkpoint"``: from a position saved in ``ozzy_checkpoints`` under
  ``<OZZY_NODE_NAME>:<listener>``, so a restarted node handles what it missed. A new checkpoint starts
  at the end of the log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shared.errors import HandlerError
from shared.events import Event, StoredEvent, decode
from shared.fastchannel import Subscriber, events_channel

log = logging.getLogger(__name__)

Start = Literal["now", "checkpoint"]


@dataclass(frozen=True)
class ListenerSpec:
    name: str
    event_types: tuple[type[Event], ...]
    fn: Callable[[Event], None]
    start: Start
    on_start: Callable[[], None] | None = None

    @property
    def type_names(self) -> frozenset[str]:
        return frozenset(t.event_type for t in self.event_types)


_listeners: dict[str, ListenerSpec] = {}


def on_every_node(
    *event_types: type[Event],
    name: str | None = None,
    start: Start = "now",
    on_start: Callable[[], None] | None = None,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register ``fn(event)`` to run in every process for each event of ``event_types``."""
    if not event_types or not all(isinstance(t, type) and issubclass(t, Event) for t in event_types):
        raise HandlerError("@on_every_node needs one or more Event subclasses")
    if start not in ("now", "checkpoint"):
        raise HandlerError("start must be 'now' or 'checkpoint'")

    def register(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        spec = ListenerSpec(name or f"{fn.__module__}.{fn.__qualname__}", tuple(event_types), fn, start, on_start)
        _listeners[spec.name] = spec
        return fn

    return register


def registered_listeners() -> dict[str, ListenerSpec]:
    return dict(_listeners)


def unregister_listener(name: str) -> None:
    _listeners.pop(name, None)


FETCH = text(
    """
    SELECT id, event_id, event_type, event_version, aggregate_type, aggregate_id, payload, metadata,
           occurred_at, dispatch_seq
      FROM ozzy_outbox
     WHERE dispatch_seq > :after AND event_type = ANY(CAST(:types AS text[]))
     ORDER BY dispatch_seq
     LIMIT :limit
    """
)
END_OF_LOG = text("SELECT coalesce(max(dispatch_seq), 0) FROM ozzy_outbox WHERE dispatch_seq IS NOT NULL")
LOAD_CHECKPOINTS = text("SELECT name, position FROM ozzy_checkpoints WHERE name = ANY(CAST(:names AS text[]))")
SAVE_CHECKPOINT = text(
    """
    INSERT INTO ozzy_checkpoints (name, position, updated_at) VALUES (:name, :position, now())
    ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()
    """
)


class ClusterListener:
    """Runs this process's listeners: one reader thread, woken by pub/sub or by the poll."""

    def __init__(self, runtime: Any, node_name: str, specs: dict[str, ListenerSpec] | None = None) -> None:
        self.runtime = runtime
        self.node_name = node_name
        self.specs = dict(specs if specs is not None else registered_listeners())
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
        settings = runtime.settings
        self.subscriber = Subscriber(
            runtime.redis,
            [events_channel(settings.redis_namespace)],
            lambda channel, data: self._wake.set(),
            namespace=settings.redis_namespace,
            heartbeat=settings.fast_channel_heartbeat,
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
        with self.runtime.engine.connect() as conn:
            end = conn.execute(END_OF_LOG).scalar()
            saved = dict(conn.execute(LOAD_CHECKPOINTS, {"names": durable}).all()) if durable else {}
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
        interval = self.runtime.settings.poll_interval
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
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(FETCH, {"after": after, "types": types, "limit": limit}).all()
        for row in rows:
            self._deliver(row)
        self._save_checkpoints()
        return len(rows)

    def _deliver(self, row: Any) -> None:
        stored = StoredEvent(
            event_id=row.event_id, type=row.event_type, version=row.event_version, payload=row.payload,
            metadata=row.metadata, occurred_at=row.occurred_at, aggregate_type=row.aggregate_type,
            aggregate_id=row.aggregate_id, position=row.dispatch_seq,
        )
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
        with self.runtime.engine.begin() as conn:
            for name, position in durable:
                conn.execute(SAVE_CHECKPOINT, {"name": name, "position": position})

    def status(self) -> dict[str, Any]:
        return {"positions": dict(self.positions), "delivered": self.delivered, "fast_channel": self.subscriber.status()}


def start_listeners(runtime: Any, kind: str, on_ready: Callable[[], None] | None = None) -> ClusterListener:
    """Start this process's cluster listeners (settings and flags cache included); ``on_ready``
    runs once they are placed and the settings are loaded."""
    import socket

    import shared.control  # noqa: F401  (registers the control-command listener)
    import shared.store  # noqa: F401  (registers the settings and flags cache listener)

    name = runtime.settings.node_name or f"{socket.gethostname()}-{kind}"
    listener = ClusterListener(runtime, name)
    listener.start(on_ready)
    return listener
