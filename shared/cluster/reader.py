"""The reader that runs one process's cluster-wide listeners (see :mod:`shared.cluster.listeners`).

A listener that raises is never moved past the event: it tries the same event again after a
backoff (``OZZY_LISTENER_MIN_BACKOFF`` doubling up to ``OZZY_LISTENER_MAX_BACKOFF``), while the
other listeners go on. After ``OZZY_LISTENER_MAX_ATTEMPTS`` tries it stops, shown as failed in this
node's status (the dashboard, ``GET /api/status``), until an operator retries it or skips that one
event (a :class:`~shared.cluster.listeners.ListenerCommand`, which the reader applies itself).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shared.channel.pubsub import Subscriber, events_channel
from shared.cluster.listeners import ListenerCommand, ListenerSpec
from shared.config import Config
from shared.db import sql
from shared.model.events import Event
from shared.model.stored import decode, from_row, json_text

log = logging.getLogger(__name__)

BATCH = 500
#: What every envelope of an announced batch holds (:func:`shared.model.stored.envelope_json`).
_ENVELOPE_TYPE = b'"type":'


@dataclass
class ListenerFailure:
    """Where a listener is stuck: the event it raises on, how often it tried, and whether it stopped."""

    position: int
    event_id: str
    event_type: str
    attempts: int = 0
    error: str = ""
    first_failed_at: float = 0.0
    last_failed_at: float = 0.0
    #: ``time.monotonic()`` of the next try (not shown).
    next_try_at: float = 0.0
    #: Out of tries: it waits for an operator's retry or skip.
    failed: bool = False

    def as_dict(self) -> dict[str, Any]:
        shown = asdict(self)
        del shown["next_try_at"]
        shown["retry_in_seconds"] = None if self.failed else round(max(self.next_try_at - time.monotonic(), 0.0), 3)
        return shown


class ClusterListener:
    """Runs this process's listeners: one reader thread, woken by pub/sub or by the poll."""

    def __init__(
        self, engine: Engine, client: redis.Redis, config: Config, node_name: str, specs: Iterable[ListenerSpec],
        node_id: str | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.node_name = node_name
        #: This node's id in the registry: commands aimed at another node are ignored.
        self.node_id = node_id
        self.specs = {spec.name: spec for spec in specs}
        # Computed once: the reader consults them for every row it delivers.
        self._types = {name: spec.type_names for name, spec in self.specs.items()}
        #: How an announced envelope names a type this reader reads (see :meth:`_announced`).
        self._markers = [f'"type":{json_text(t)}'.encode()
                         for t in sorted(set().union({ListenerCommand.event_type}, *self._types.values()))]
        self.positions: dict[str, int] = {}
        self.failures: dict[str, ListenerFailure] = {}
        self._commands_at = 0  # the last position read for listener commands
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
            self._announced,
            namespace=config.redis_namespace,
            heartbeat=config.fast_channel_heartbeat,
            on_connect=self._wake.set,
            name=f"listeners[{node_name}]",
        )

    def _announced(self, channel: str, data: bytes) -> None:
        """Wake the reader for an announced batch that holds an event of a type it reads.

        The relay announces every batch; most hold none of the few types listeners take (flags,
        settings, commands), and reading the log for those cost every process a connection and a
        query per batch. The markers match the envelopes' own ``"type":"<name>"`` text, so a batch
        that holds one always wakes the reader (a payload that happens to contain it only costs a
        read); the poll and every re-subscription still read the log whatever was announced."""
        if _ENVELOPE_TYPE not in data or any(marker in data for marker in self._markers):
            self._wake.set()  # a message of another shape wakes it too

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
        self._commands_at = end

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self.subscriber.stop()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        self._prepare()
        while not self._stopped.is_set():
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                while self.catch_up() == BATCH:
                    pass
            except SQLAlchemyError as exc:
                log.warning("cluster listeners could not read the event log, retrying: %s", exc)

    def _next_wait(self) -> float:
        """The poll interval, or less if a listener's next try comes sooner."""
        now = time.monotonic()
        retries = [f.next_try_at - now for f in self.failures.values() if not f.failed]
        return max(min([self.config.poll_interval, *retries]), 0.0)

    def _active(self, name: str, now: float) -> bool:
        failure = self.failures.get(name)
        return failure is None or (not failure.failed and failure.next_try_at <= now)

    def catch_up(self, limit: int = BATCH) -> int:
        """Deliver every event past the active listeners' positions (up to ``limit``); return how
        many rows were read. A listener waiting for its next try, or stopped, stays where it is."""
        now = time.monotonic()
        active = [name for name in self.specs if self._active(name, now)]
        types = sorted(set().union({ListenerCommand.event_type}, *(self._types[n] for n in active)))
        after = min([self._commands_at, *(self.positions[n] for n in active)])
        with self.engine.connect() as conn:
            rows = conn.execute(sql.FETCH_DISPATCHED, {"after": after, "types": types, "limit": limit}).all()
        for row in rows:
            self._deliver(row, active)
        self._save_checkpoints()
        return len(rows)

    def _deliver(self, row: Any, active: Iterable[str] | None = None) -> None:
        """Hand ``row`` to the listeners of ``active`` (those placed before the read; default all)
        that are still past no failure: one retried or resumed by a command during this read waits
        for the next, which starts at its position."""
        seq = row.dispatch_seq
        stored = from_row(row, position=seq)
        event: Event | None = None
        if seq > self._commands_at:
            self._commands_at = seq
            if row.event_type == ListenerCommand.event_type:
                self._command(stored)
        now = time.monotonic()
        for name in self.specs if active is None else active:
            spec = self.specs[name]
            if self.positions[name] >= seq or not self._active(name, now):
                continue
            if row.event_type in self._types[name]:
                try:
                    event = event or decode(stored)
                    spec.fn(event)
                except Exception as exc:  # noqa: BLE001 - it tries this event again; the others go on
                    self._failed(name, row, exc)
                    continue
                self.delivered += 1
                if self.failures.pop(name, None) is not None:
                    log.info("listener %s recovered on %s %s", name, row.event_type, row.event_id)
            self.positions[name] = seq

    def _failed(self, name: str, row: Any, exc: Exception) -> None:
        now = time.time()
        failure = self.failures.get(name)
        if failure is None or failure.position != row.dispatch_seq:
            failure = self.failures[name] = ListenerFailure(row.dispatch_seq, str(row.event_id), row.event_type,
                                                             first_failed_at=now)
        failure.attempts += 1
        failure.last_failed_at = now
        failure.error = f"{type(exc).__name__}: {_first_line(exc)}"
        what = (name, row.event_type, row.event_id, row.dispatch_seq, failure.attempts)
        if failure.attempts >= self.config.listener_max_attempts:
            failure.failed = True
            log.error("listener %s stopped on %s %s (position %d) after %d tries; retry or skip it",
                      *what, exc_info=exc)
            return
        delay = min(self.config.listener_min_backoff * 2 ** (failure.attempts - 1), self.config.listener_max_backoff)
        failure.next_try_at = time.monotonic() + delay
        log.warning("listener %s failed on %s %s (position %d, try %d), trying again in %.1fs: %s",
                    *what, delay, failure.error)

    # --- an operator's way out -------------------------------------------------------------------

    def retry(self, name: str) -> bool:
        """Try a stuck listener's event again now, with a fresh budget of tries; False if not stuck."""
        failure = self.failures.get(name)
        if failure is None:
            return False
        failure.attempts, failure.failed, failure.next_try_at = 0, False, 0.0
        log.warning("listener %s: retrying %s %s on an operator's request", name, failure.event_type, failure.event_id)
        self._wake.set()
        return True

    def skip(self, name: str, position: int) -> bool:
        """Move a listener stuck at ``position`` past that one event; False if it is not stuck there."""
        failure = self.failures.get(name)
        if failure is None or failure.position != position:
            return False
        del self.failures[name]
        self.positions[name] = max(self.positions[name], position)
        log.warning("listener %s: skipped %s %s (position %d) on an operator's request",
                    name, failure.event_type, failure.event_id, position)
        self._wake.set()
        return True

    def _command(self, stored: Any) -> None:
        try:
            command = decode(stored)
        except Exception:  # noqa: BLE001 - a command this version cannot read is ignored
            log.exception("could not read listener command %s", stored.event_id)
            return
        assert isinstance(command, ListenerCommand)
        if command.node not in (None, self.node_id) or command.listener not in self.specs:
            return
        if command.action == "retry":
            self.retry(command.listener)
        elif command.position is not None:
            self.skip(command.listener, command.position)

    def _save_checkpoints(self) -> None:
        durable = [(self._checkpoint_name(s), self.positions[n]) for n, s in self.specs.items() if s.start == "checkpoint"]
        if not durable:
            return
        with self.engine.begin() as conn:
            for name, position in durable:
                conn.execute(sql.SAVE_CHECKPOINT, {"name": name, "position": position})

    def status(self) -> dict[str, Any]:
        return {"positions": dict(self.positions), "delivered": self.delivered,
                "failures": {name: f.as_dict() for name, f in self.failures.items()},
                "fast_channel": self.subscriber.status()}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""
