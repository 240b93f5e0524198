"""Running projections: batches in dispatch order, each with its checkpoint; live, and rebuilds.

One batch is one transaction: lock the projection's checkpoint row, read the events after its
position (in dispatch order, of its types), apply them, write the new position, commit. The row
lock makes runners take turns (several relays run every projection; only one applies a given batch)
and the position is read under it, so no event is applied twice; effects and position commit or
roll back together, so none is skipped. A batch that raises is rolled back and retried with backoff
(the error is shown in the status): a projection never skips an event.

A rebuild empties the projection's tables and sets its position to 0 in one transaction, then runs
batches until it reaches the end of the log. Live runners keep taking batches meanwhile (they follow
the same checkpoint), so the hand-over to live needs nothing: there is one position, never two.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shared.channel.pubsub import Subscriber, events_channel
from shared.config import Config
from shared.db import sql
from shared.projections.projection import Applied, Projection

log = logging.getLogger(__name__)

#: A failing projection waits this long before its next try, doubling up to the maximum.
MIN_BACKOFF, MAX_BACKOFF = 0.5, 60.0


@dataclass(frozen=True)
class Batch:
    """What one batch did: events applied, the position reached, the end of the log it saw."""

    applied: int
    position: int
    end_of_log: int
    #: False when another runner held the projection (nothing was done).
    ran: bool = True

    @property
    def caught_up(self) -> bool:
        return self.ran and self.position >= self.end_of_log


def run_batch(engine: Engine, projection: Projection, limit: int, *, wait: bool = False) -> Batch:
    """Apply the next batch of ``projection`` in one transaction (see the module docstring)."""
    with engine.connect() as conn, conn.begin():
        conn.execute(sql.ENSURE_PROJECTION, {"name": projection.name})
        lock = sql.LOCK_PROJECTION if wait else sql.LOCK_PROJECTION_SKIP
        position = conn.execute(lock, {"name": projection.name}).scalar()
        if position is None:  # another runner holds it
            return Batch(0, 0, 0, ran=False)
        rows = conn.execute(sql.READ_LOG_TEXT, {"after": position, "types": projection.type_names(),
                                                "limit": limit}).all()
        end = rows[0].end_of_log
        rows = [r for r in rows if r.dispatch_seq is not None]
        if rows:
            projection.apply([Applied(row, conn) for row in rows])
        # A short page is the end of the log (same snapshot): move past events of other types too.
        reached = rows[-1].dispatch_seq if len(rows) == limit else max(end, position)
        if reached != position or rows:
            conn.execute(sql.ADVANCE_PROJECTION, {"name": projection.name, "position": reached, "applied": len(rows)})
    return Batch(len(rows), reached, end)


def rebuild(engine: Engine, projection: Projection, limit: int,
            progress: Callable[[int, int], None] | None = None, pause: float = 0.0) -> int:
    """Reset ``projection`` and replay the whole log into it while the system runs; return the
    number of events this call applied (live runners may apply some of them). ``progress(position,
    end_of_log)`` is called after each batch; ``pause`` seconds between batches leave room for live
    traffic."""
    with engine.connect() as conn, conn.begin():
        conn.execute(sql.ENSURE_PROJECTION, {"name": projection.name})
        conn.execute(sql.LOCK_PROJECTION, {"name": projection.name})
        projection.reset(conn)
        conn.execute(sql.RESET_PROJECTION, {"name": projection.name})
    log.info("projection %s reset; replaying the log", projection.name)
    applied = 0
    while True:
        batch = run_batch(engine, projection, limit, wait=True)
        applied += batch.applied
        if progress is not None:
            progress(batch.position, batch.end_of_log)
        if batch.caught_up:
            break
        if pause:
            time.sleep(pause)
    with engine.begin() as conn:
        conn.execute(sql.REBUILD_DONE, {"name": projection.name})
    log.info("projection %s rebuilt: %d events applied by this rebuild", projection.name, applied)
    return applied


def status(engine: Engine, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Each projection's position, the end of the log, its lag (events of the log behind), state."""
    with engine.connect() as conn:
        rows = conn.execute(sql.PROJECTION_STATUS, {"names": list(names) if names is not None else None}).all()
    return [
        {
            "name": r.name,
            "position": r.position,
            "end_of_log": r.end_of_log,
            "lag": max(r.end_of_log - r.position, 0),
            "applied": r.applied,
            "state": "failing" if r.last_error else ("rebuilding" if r.rebuild_started_at else "live"),
            "updated_at": r.updated_at.isoformat(),
            "rebuild_started_at": r.rebuild_started_at.isoformat() if r.rebuild_started_at else None,
            "rebuilt_at": r.rebuilt_at.isoformat() if r.rebuilt_at else None,
            "last_error": r.last_error,
        }
        for r in rows
    ]


class Projector:
    """Keeps this process's projections live: a thread woken by the relay's announcements on the
    fast channel, or by the poll when that is silent. Run by every relay (see ``run_relay``)."""

    def __init__(self, engine: Engine, client: redis.Redis, config: Config, projections: Sequence[Projection]) -> None:
        self.engine = engine
        self.config = config
        self.projections = list(projections)
        self.applied = 0
        self.errors: dict[str, str] = {}
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.subscriber = Subscriber(
            client, [events_channel(config.redis_namespace)], lambda channel, data: self._wake.set(),
            namespace=config.redis_namespace, heartbeat=config.fast_channel_heartbeat,
            on_connect=self._wake.set, name="projections",
        )

    def start(self) -> None:
        if not self.projections:
            return
        self._thread = threading.Thread(target=self._run, name="ozzy-projections", daemon=True)
        self._thread.start()
        self.subscriber.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self.subscriber.stop()
        if self._thread is not None:
            self._thread.join(30)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.catch_up()
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        now = time.monotonic()
        waits = [self.config.poll_interval, *(max(at - now, 0.0) for at in self._retry_at.values())]
        return min(waits)

    def catch_up(self) -> int:
        """Run every projection that is not backing off until it reaches the end of the log (or
        another runner holds it); return the number of events applied."""
        total = 0
        for projection in self.projections:
            if self._stopped.is_set() or self._retry_at.get(projection.name, 0.0) > time.monotonic():
                continue
            total += self._follow(projection)
        return total

    def _follow(self, projection: Projection) -> int:
        applied = 0
        while not self._stopped.is_set():
            try:
                batch = run_batch(self.engine, projection, self.config.batch_size)
            except Exception as exc:  # noqa: BLE001 - rolled back; retried with backoff, never skipped
                self._failed(projection, exc)
                return applied
            self._retry_at.pop(projection.name, None)
            self._failures.pop(projection.name, None)
            self.errors.pop(projection.name, None)
            applied += batch.applied
            self.applied += batch.applied
            if not batch.ran or batch.caught_up:
                return applied
        return applied

    def _failed(self, projection: Projection, exc: Exception) -> None:
        failures = self._failures.get(projection.name, 0) + 1
        self._failures[projection.name] = failures
        delay = min(MIN_BACKOFF * 2 ** (failures - 1), MAX_BACKOFF)
        self._retry_at[projection.name] = time.monotonic() + delay
        error = f"{type(exc).__name__}: {_first_line(exc)}"
        self.errors[projection.name] = error
        log.error("projection %s failed (try %d), retrying in %.1fs: %s", projection.name, failures, delay, error)
        try:
            with self.engine.begin() as conn:
                conn.execute(sql.PROJECTION_FAILED, {"name": projection.name, "error": error})
        except SQLAlchemyError:
            log.warning("could not record the failure of projection %s", projection.name)

    def status(self) -> dict[str, Any]:
        return {"names": [p.name for p in self.projections], "applied": self.applied, "errors": dict(self.errors)}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""
