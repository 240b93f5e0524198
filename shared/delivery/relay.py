"""The relay: moves committed outbox rows to Redis, then marks them dispatched.

A drain claims a batch of undispatched rows (``FOR UPDATE SKIP LOCKED``), records one pending
delivery per handler, sends the whole batch to Redis in one pipeline (a pub/sub publication per event
for live subscribers, a Dramatiq message per handler, a wake-up per queue) and commits only after
Redis accepted it. If Redis fails, the transaction rolls back and the rows wait for the next drain.
A row whose event type this code version does not know is parked, not sent and not lost.

Drains are triggered by the fast channel (a unit of work's wake-up) or, when that is silent or down,
by an APScheduler job every ``poll_interval`` seconds. An operator can pause the relay: then only
the ``while_paused`` event types (the control plane, given by the composition root) move, so the
command that resumes it can reach it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from shared.channel.pubsub import Subscriber, events_channel, relay_channel
from shared.db import sql
from shared.db.engine import unpinged
from shared.db.sql import ordering as sql_ordering
from shared.delivery import ordering, timers
from shared.delivery.handlers import HandlerSpec
from shared.delivery.messages import send
from shared.delivery.wiring import Wiring
from shared.errors import OzzyError
from shared.model.events import registered_event_types
from shared.model.stored import envelope_json, with_dispatch_seq
from shared.observability import metrics, tracing

log = logging.getLogger(__name__)


@dataclass
class RelayStats:
    """What the relay has done, for logs, the status API and tests."""

    drains_by_notify: int = 0
    drains_by_poll: int = 0
    drains_by_timer: int = 0
    timers_fired: int = 0
    dispatched: int = 0
    parked: int = 0
    batches: int = 0
    errors: int = 0
    last_drain_at: float | None = None


class Relay:
    """Drains the outbox of one database into one Redis. Several may run at once."""

    def __init__(self, wiring: Wiring, *, while_paused: Sequence[str] = (),
                 after_fire: Callable[[], None] | None = None) -> None:
        self.wiring = wiring
        self.config = wiring.config
        self.by_type = wiring.handlers.by_event_type
        # Ordered handlers' messages wait for the commit that gives their events a position (see
        # shared.delivery.ordering); every other handler's go out with the batch, before it.
        self._unordered_by_type = {t: [s for s in specs if s.ordered_by is None] for t, specs in self.by_type.items()}
        self._ordered_by_type = {t: o for t, specs in self.by_type.items() if (o := [s for s in specs if s.ordered_by])}
        # The claim records one pending delivery per (event, handler) from this table, server-side.
        routes = wiring.handlers.routes()
        self._routes = {"route_types": [t for t, _ in routes], "route_handlers": [h for _, h in routes]}
        self._while_paused = list(while_paused)
        #: Called after scheduled events fired (the composition root schedules recurring jobs' next).
        self._after_fire = after_fire
        self.stats = RelayStats()
        #: An operator paused dispatching: events wait in the outbox.
        self.paused = False
        self._wake = threading.Event()
        self._connections_ok = False  # the last batch succeeded: its pool needs no pre-ping
        self._missed_due = 0  # passes in a row that tried to fire, found a due row but fired nothing
        #: When (``time.monotonic()``) the earliest waiting scheduled event is due, as the last claim
        #: read it; None: none waits. 0.0 until the first read: fire whatever is due at start.
        self._timer_at: float | None = 0.0
        self._reason = "poll"
        self._stopping = threading.Event()
        self._drain_thread: threading.Thread | None = None
        self._own_scheduler: BackgroundScheduler | None = None
        namespace = self.config.redis_namespace
        self._events_channel = events_channel(namespace)
        self.subscriber = Subscriber(
            wiring.redis,
            [relay_channel(namespace)],
            lambda channel, data: self.wake("notify"),
            namespace=namespace,
            heartbeat=self.config.fast_channel_heartbeat,
            on_connect=lambda: self.wake("notify"),  # catch up on what was published while away
            name="relay",
        )

    # --- one drain ------------------------------------------------------------------------------

    def drain(self, *, next_due: bool = False) -> int:
        """Dispatch undispatched rows, batch after batch, until none remain; return how many.

        ``next_due``: the first batch also reads when the next scheduled event is due."""
        total = 0
        while not self._stopping.is_set():
            claimed = self.dispatch_batch(next_due=next_due)
            next_due = False
            total += claimed
            if claimed < self.config.batch_size:
                break
        self.stats.last_drain_at = time.time()
        return total

    def dispatch_batch(self, *, next_due: bool = False) -> int:
        """Claim, send and mark one batch in one transaction; return the number of rows claimed.

        Three PostgreSQL round trips, one of them overlapped by Redis's: BEGIN and the claim in one
        psycopg pipeline (see :func:`_transaction`), the lock with the mark (one statement, run by
        the server while the Redis pipeline is sent), the COMMIT. ``next_due``: the claim's pipeline
        also reads when the next scheduled event is due (no round trip of its own; not while
        paused). Checkouts skip the pool's pre-ping while
        batches succeed: a lost connection fails the batch, which rolls back, and the next batch
        pings its checkout (a dead pool is then replaced)."""
        started, started_ns = time.perf_counter(), time.time_ns()
        trusted = self._connections_ok
        self._connections_ok = False
        next_due = next_due and not self.paused
        with (unpinged() if trusted else nullcontext(), self.wiring.engine.connect() as conn,
              _transaction(conn) as driver, driver.cursor(row_factory=namedtuple_row) as cur, driver.cursor() as due):
            params: dict[str, Any] = {"limit": self.config.batch_size, **self._routes}
            with driver.pipeline():  # sent at once; the results come with the Sync at its end
                driver.execute("BEGIN")
                if self.paused:
                    cur.execute(sql.CLAIM_CONTROL_BATCH, {**params, "types": self._while_paused})
                else:
                    cur.execute(sql.CLAIM_BATCH, params)
                if next_due:
                    due.execute(sql.NEXT_DUE_TEXT)
            rows: list[Any] = cur.fetchall()
            if next_due:
                self._set_timer(due.fetchone())
            if not rows:
                self._connections_ok = True
                return 0
            known = registered_event_types()
            routable = [row for row in rows if row.event_type in known]
            self._park(conn, [row for row in rows if row.event_type not in known])
            envelopes = [envelope_json(row) for row in routable]
            deliveries = [(spec, env) for row, env in zip(routable, envelopes)
                          for spec in self._unordered_by_type.get(row.event_type, ())]
            ordered: list[tuple[HandlerSpec, str]] = []
            if routable:
                positions = mark_dispatched(
                    conn, [row.id for row in routable],
                    meanwhile=lambda: send(self.wiring.redis, self.config.redis_namespace, deliveries),
                )
                if self._ordered_by_type:
                    ordered = self._order(conn, routable, envelopes, positions)
        self._connections_ok = True
        self.stats.dispatched += len(routable)
        self.stats.batches += 1
        metrics.relay_dispatched.inc(len(routable))
        metrics.relay_batch_seconds.observe(time.perf_counter() - started)
        if tracing.active():
            tracing.dispatched([(row.event_id, row.event_type, row.metadata) for row in routable], started_ns)
        if routable:
            self._announce(routable, envelopes, positions, ordered)
        return len(rows)

    def _order(self, conn: Connection, rows: list[Any], envelopes: list[str],
               positions: dict[int, int]) -> list[tuple[HandlerSpec, str]]:
        """Record the key and position of the batch's ordered deliveries; return their messages."""
        params: dict[str, list[Any]] = {"event_ids": [], "handlers": [], "keys": [], "seqs": []}
        messages: list[tuple[HandlerSpec, str]] = []
        for row, env in zip(rows, envelopes):
            specs = self._ordered_by_type.get(row.event_type)
            if not specs:
                continue
            for spec, key in zip(specs, ordering.keys_for(specs, row)):
                messages.append((spec, env))
                if key is not None:
                    for name, value in zip(params, (row.event_id, spec.name, key, positions[row.id])):
                        params[name].append(value)
        if params["keys"]:
            conn.execute(sql_ordering.ORDER_DELIVERIES, params)
        return messages

    def _announce(self, rows: list[Any], envelopes: list[str], positions: dict[int, int],
                  ordered: list[tuple[HandlerSpec, str]]) -> None:
        """After commit, publish the batch (a JSON array of envelopes, each with its dispatch
        position) for live subscribers, and send the ordered handlers' messages, in one round trip;
        cluster listeners read the log if this is lost, and the sweep sends lost ordered messages."""
        announced = [with_dispatch_seq(env, positions[row.id]) for row, env in zip(rows, envelopes)]
        try:
            send(self.wiring.redis, self.config.redis_namespace, ordered, publish=announced,
                 channel=self._events_channel)
        except Exception as exc:  # noqa: BLE001 - a hint only; listeners poll the log
            log.warning("could not announce %d events on the fast channel: %s", len(envelopes), exc)

    def _park(self, conn: Connection, rows: list[Any]) -> None:
        for row in rows:
            reason = f"unknown event type {row.event_type!r} in this code version"
            conn.execute(sql.PARK, {"ids": [row.id], "reason": reason})
            log.error("parked event %s (%s): %s", row.event_id, row.id, reason)
        self.stats.parked += len(rows)

    def unpark_known(self) -> int:
        """Send back to the drain every parked row whose type this code version now knows."""
        try:
            with self.wiring.engine.begin() as conn:
                count = conn.execute(sql.UNPARK, {"types": list(registered_event_types())}).rowcount
        except SQLAlchemyError as exc:
            log.warning("could not unpark known event types (will retry at the next start): %s", exc)
            return 0
        if count:
            log.info("unparked %d events whose type is now known", count)
        return count

    def running(self) -> bool:
        """True until stopped, while the drain thread runs (for the liveness probe)."""
        return self._drain_thread is None or self._drain_thread.is_alive() or self._stopping.is_set()

    def status(self) -> dict[str, Any]:
        return {"relay": asdict(self.stats), "fast_channel": self.subscriber.status(), "paused": self.paused}

    # --- running in the background --------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.wake("notify")

    def wake(self, reason: str = "notify") -> None:
        """Ask for a drain as soon as the current one (if any) ends."""
        self._reason = reason
        self._wake.set()

    def start(self, scheduler: BaseScheduler | None = None) -> None:
        """Start the drain thread and the subscriber, and poll every ``poll_interval`` seconds on
        ``scheduler`` (the process's; without one the relay runs a scheduler of its own)."""
        self.unpark_known()
        self._drain_thread = threading.Thread(target=self._drain_loop, name="ozzy-relay-drain", daemon=True)
        self._drain_thread.start()
        self.subscriber.start()
        if scheduler is None:
            scheduler = self._own_scheduler = BackgroundScheduler(timezone=timezone.utc)
        scheduler.add_job(
            self.wake, "interval", args=("poll",), seconds=self.config.poll_interval, id="relay-poll",
            max_instances=1, coalesce=True, next_run_time=datetime.now(timezone.utc),
        )
        if self._own_scheduler is not None:
            self._own_scheduler.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current batch, then stop the relay's threads."""
        self._stopping.set()
        self._wake.set()
        if self._own_scheduler is not None:
            self._own_scheduler.shutdown(wait=True)
        self.subscriber.stop()
        if self._drain_thread is not None:
            self._drain_thread.join(timeout)

    def fire_due(self) -> int:
        """Move the scheduled events that are due into the event log (not while paused)."""
        if self.paused:
            return 0
        fired = timers.fire_due(self.wiring.engine, self.config.batch_size)
        self.stats.timers_fired += fired
        if fired and self._after_fire is not None:
            self._after_fire()
        return fired

    def _set_timer(self, row: Any) -> None:
        """Keep when the next scheduled event is due, from :data:`sql.NEXT_DUE_TEXT`'s row."""
        seconds = row[0] if row else None
        self._timer_at = None if seconds is None else time.monotonic() + max(0.0, float(seconds))

    def _fire_if_due(self) -> int | None:
        """Fire the scheduled events that are due, if the last read said one would be by now;
        return how many fired, None if none could be due (then nothing was asked).

        Skipping is safe: every pass reads the next due time again in its claim's pipeline, and
        a commit that schedules something wakes the relay (the poll otherwise), so an event due
        sooner than the one this relay waits for is seen on the next pass, and fired at once."""
        if self.paused or self._timer_at is None or self._timer_at > time.monotonic():
            return None
        return self.fire_due()

    def _next_timer(self, fired: int | None) -> float | None:
        """Seconds to wait for the next scheduled event (None: only a wake-up or the poll).

        A paused relay fires nothing, so it arms no timer. A row due now that this pass tried to
        fire and did not either became due during the pass (look again at once), or, if the next
        pass does not fire it either, is locked by someone else (another relay firing it, a
        transaction cancelling it): then wait a little rather than ask again and again. One this
        pass did not try to fire (it became due since the last read) is fired at once."""
        if self.paused or self._timer_at is None:
            return None
        timer = max(0.0, self._timer_at - time.monotonic())
        if timer == 0.0 and fired is None:
            return 0.0
        if timer == 0.0 and not fired:
            self._missed_due += 1
            return 0.0 if self._missed_due == 1 else timers.LOCKED_BACKOFF
        self._missed_due = 0
        return min(timer, timers.MAX_WAIT)

    def _drain_loop(self) -> None:
        timer: float | None = 0.0  # seconds until the earliest scheduled event; None: none waits
        while not self._stopping.is_set():
            woken = self._wake.wait(timer)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if not woken:
                self.stats.drains_by_timer += 1
            elif self._reason == "poll":
                self.stats.drains_by_poll += 1
            else:
                self.stats.drains_by_notify += 1
            metrics.relay_drains.labels("timer" if not woken else self._reason).inc()
            try:
                # Timers are fired only when the last read said one is due (a wake-up is usually a
                # commit, whose events should not wait behind a timer check), then the drain sends
                # what they fired with what was committed, and reads the next due time as it claims.
                fired = self._fire_if_due()
                self.drain(next_due=True)
                timer = self._next_timer(fired)
            except Exception as exc:  # noqa: BLE001 - nothing was marked dispatched; the next poll retries
                self.stats.errors += 1
                timer = None
                log.warning("drain failed, retrying at the next poll: %s", exc)


@contextmanager
def _transaction(conn: Connection) -> Iterator[psycopg.Connection[Any]]:
    """A transaction on the psycopg connection under ``conn`` that the caller opens with its own
    ``BEGIN``, sent in the pipeline of its first statements: one round trip where psycopg would
    send its BEGIN and wait for it first. The driver is in autocommit mode meanwhile, so psycopg
    adds no BEGIN; it follows the transaction the server reports, SQLAlchemy statements included.
    Commits at the end of the block, rolls back if it raises; a connection that cannot be brought
    back to its pooled state (not in a transaction, not in autocommit) is invalidated."""
    driver = _driver(conn)
    try:
        driver.autocommit = True
        yield driver
        driver.commit()
    except BaseException:
        try:
            driver.rollback()
        except psycopg.Error:
            pass  # the connection is lost: invalidated below
        raise
    finally:
        try:
            driver.autocommit = False
        except psycopg.Error:
            conn.invalidate()


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under ``conn``, for pipelined statements."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


def mark_dispatched(conn: Connection, ids: list[int], *,
                    meanwhile: Callable[[], None] | None = None) -> dict[int, int]:
    """Take :data:`sql.DISPATCH_LOCK` and mark the claimed rows ``ids`` dispatched, in one round
    trip; return each row's dispatch position, given in id order.

    ``meanwhile`` runs once the statement is on its way, while the server runs it (the relay sends
    its Redis pipeline then): the two round trips overlap. If it raises, the statement's result is
    still read, then the error goes up and the caller's transaction rolls back."""
    ids = sorted(ids)
    driver = _driver(conn)
    with driver.cursor() as cur:
        with driver.pipeline() if meanwhile else nullcontext():
            cur.execute(sql.MARK_DISPATCHED, {"ids": ids})
            if meanwhile is not None:
                meanwhile()
        base, marked = cur.fetchone()  # type: ignore[misc]  # one row, always
    if marked != len(ids):  # the rows are locked by this transaction: this is a bug, not a race
        raise OzzyError(f"marked {marked} of {len(ids)} claimed rows dispatched")
    return {row_id: base + k for k, row_id in enumerate(ids, 1)}
