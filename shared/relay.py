"""The relay: moves committed outbox rows to Redis, then marks them dispatched.

A drain claims a batch of undispatched rows (``FOR UPDATE SKIP LOCKED``), records one pending
delivery per handler, sends the whole batch to Redis in one pipeline (a pub/sub publication per event
for live subscribers, a Dramatiq message per handler, a wake-up per queue) and commits only after
Redis accepted it. If Redis fails, the transaction rolls back and the rows wait for the next drain.
A row whose event type this code version does not know is parked, not sent and not lost.

Drains are triggered by the fast channel (a unit of work's wake-up) or, when that is silent or down,
by an APScheduler job every ``poll_interval`` seconds. Housekeeping (redelivery sweep, dead-worker
recovery, the node heartbeat) runs on the same scheduler.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from shared import control, sql
from shared import settings as shared_settings
from shared.chores import Lease, run_retention
from shared.cluster import ClusterListener, start_listeners
from shared.dispatch import envelope_json, send
from shared.errors import OzzyError
from shared.events import registered_event_types
from shared.fastchannel import Subscriber, events_channel, relay_channel
from shared.handlers import HandlerSpec, handlers_by_event_type, import_handler_modules
from shared.nodes import Node
from shared.runtime import Runtime
from shared.sweep import recover_dead_workers, redeliver_stale

log = logging.getLogger(__name__)

#: Event types a paused relay still dispatches (see sql.CLAIM_CONTROL_BATCH).
CONTROL_PLANE = ("ozzy.control_command", "ozzy.setting_changed", "ozzy.flag_changed")


@dataclass
class RelayStats:
    """What the relay has done, for logs, the status API and tests."""

    drains_by_notify: int = 0
    drains_by_poll: int = 0
    dispatched: int = 0
    parked: int = 0
    batches: int = 0
    redelivered: int = 0
    errors: int = 0
    last_drain_at: float | None = None


class Relay:
    """Drains the outbox of one database into one Redis. Several may run at once."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.by_type = handlers_by_event_type(runtime.handlers.values())
        # The claim records one pending delivery per (event, handler) from this table, server-side.
        routes = [(t, spec.name) for t, specs in self.by_type.items() for spec in specs]
        self._routes = {"route_types": [t for t, _ in routes], "route_handlers": [h for _, h in routes]}
        self.stats = RelayStats()
        self.node = Node(runtime.engine, "relay", self.status)
        self.listeners: ClusterListener | None = None
        self.lease = Lease(runtime.engine)
        #: An operator paused dispatching: events wait in the outbox.
        self.paused = False
        self._wake = threading.Event()
        self._reason = "poll"
        self._stopping = threading.Event()
        self._drain_thread: threading.Thread | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._events_channel = events_channel(self.settings.redis_namespace)
        self.subscriber = Subscriber(
            runtime.redis,
            [relay_channel(self.settings.redis_namespace)],
            lambda channel, data: self.wake("notify"),
            namespace=self.settings.redis_namespace,
            heartbeat=self.settings.fast_channel_heartbeat,
            on_connect=lambda: self.wake("notify"),  # catch up on what was published while away
            name="relay",
        )

    # --- one drain ------------------------------------------------------------------------------

    def drain(self) -> int:
        """Dispatch undispatched rows, batch after batch, until none remain; return how many."""
        total = 0
        while not self._stopping.is_set():
            claimed = self.dispatch_batch()
            total += claimed
            if claimed < self.settings.batch_size:
                break
        self.stats.last_drain_at = time.time()
        return total

    def dispatch_batch(self) -> int:
        """Claim, send and mark one batch in one transaction; return the number of rows claimed."""
        with self.runtime.engine.connect() as conn, conn.begin():
            params = {"limit": self.settings.batch_size, **self._routes}
            if self.paused:
                rows = conn.execute(sql.CLAIM_CONTROL_BATCH, {**params, "types": list(CONTROL_PLANE)}).all()
            else:
                rows = conn.execute(sql.CLAIM_BATCH, params).all()
            if not rows:
                return 0
            known = registered_event_types()
            routable = [row for row in rows if row.event_type in known]
            self._park(conn, [row for row in rows if row.event_type not in known])
            envelopes = [envelope_json(row) for row in routable]
            send(self.runtime.broker, [
                (spec, env) for row, env in zip(routable, envelopes) for spec in self.by_type.get(row.event_type, ())
            ])
            if routable:
                conn.execute(sql.DISPATCH_LOCK)
                positions = mark_dispatched(conn, [row.id for row in routable])
        self.stats.dispatched += len(routable)
        self.stats.batches += 1
        if routable:
            self._announce(routable, envelopes, positions)
        return len(rows)

    def _announce(self, rows: list[Any], envelopes: list[str], positions: dict[int, int]) -> None:
        """After commit, publish the batch (a JSON array of envelopes, each with its dispatch
        position) for live subscribers; cluster listeners read the log if this is lost."""
        announced = [f'{env[:-1]},"dispatch_seq":{positions[row.id]}}}' for row, env in zip(rows, envelopes)]
        try:
            send(self.runtime.broker, [], publish=announced, channel=self._events_channel)
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
            with self.runtime.engine.begin() as conn:
                count = conn.execute(sql.UNPARK, {"types": list(registered_event_types())}).rowcount
        except SQLAlchemyError as exc:
            log.warning("could not unpark known event types (will retry at the next start): %s", exc)
            return 0
        if count:
            log.info("unparked %d events whose type is now known", count)
        return count

    def housekeeping(self) -> None:
        """On the one relay holding the lease: redeliver what Redis lost, recover dead workers'
        messages, prune old deliveries (and events, if configured), mark silent nodes gone."""
        if not self.lease.acquire():
            return
        try:
            self.stats.redelivered += redeliver_stale(
                self.runtime, self.runtime.handlers, older_than=self.settings.redelivery_after
            )
            recover_dead_workers(self.runtime.broker, {spec.queue for spec in self.runtime.handlers.values()})
            pruned = run_retention(self.runtime.engine, self.settings)
            if any(pruned.values()):
                log.info("housekeeping: %s", pruned)
        except Exception as exc:  # noqa: BLE001 - housekeeping retries at its next run
            log.warning("housekeeping failed, retrying at the next sweep: %s", exc)

    def status(self) -> dict[str, Any]:
        status = {"relay": asdict(self.stats), "fast_channel": self.subscriber.status(), "leader": self.lease.held,
                  "paused": self.paused, "commands": control.acknowledged()}
        if self.listeners is not None:
            status["listeners"] = self.listeners.status()
        return status

    # --- running as a process -------------------------------------------------------------------

    def _honour_pause(self) -> None:
        self.paused = bool(shared_settings.get(control.RELAY_PAUSED, False))

    def _pause(self) -> None:
        self.paused = True

    def _resume(self) -> None:
        self.paused = False
        self.wake("notify")

    def wake(self, reason: str = "notify") -> None:
        """Ask for a drain as soon as the current one (if any) ends."""
        self._reason = reason
        self._wake.set()

    def start(self, listeners: bool = True) -> None:
        """Register the node, then start the drain loop, the subscriber and the scheduled jobs."""
        if listeners:
            # Until the settings are loaded, assume paused: only the control plane moves.
            self.paused = True
            control.install(control.Controls(self.node, pause_relay=self._pause, resume_relay=self._resume))
            self.listeners = start_listeners(self.runtime, "relay", on_ready=self._honour_pause)
        self.node.register()
        self.unpark_known()
        self._drain_thread = threading.Thread(target=self._drain_loop, name="ozzy-relay-drain", daemon=True)
        self._drain_thread.start()
        self.subscriber.start()
        self._scheduler = BackgroundScheduler(timezone=timezone.utc)
        now = datetime.now(timezone.utc)
        jobs = (
            (self.wake, self.settings.poll_interval, ("poll",), "poll"),
            (self.housekeeping, self.settings.sweep_interval, (), "housekeeping"),
            (self.node.heartbeat, self.settings.node_heartbeat, (), "node-heartbeat"),
        )
        for func, seconds, args, job_id in jobs:
            self._scheduler.add_job(
                func, "interval", args=args, seconds=seconds, id=job_id, max_instances=1, coalesce=True,
                next_run_time=now,
            )
        self._scheduler.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current batch, then stop every thread and record the node as stopped."""
        self._stopping.set()
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        self.subscriber.stop()
        if self._drain_thread is not None:
            self._drain_thread.join(timeout)
        if self.listeners is not None:
            self.listeners.stop()
        self.lease.release()
        self.node.stopped()

    def _drain_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            if self._reason == "poll":
                self.stats.drains_by_poll += 1
            else:
                self.stats.drains_by_notify += 1
            try:
                self.drain()
            except Exception as exc:  # noqa: BLE001 - nothing was marked dispatched; the next poll retries
                self.stats.errors += 1
                log.warning("drain failed, retrying at the next poll: %s", exc)


def mark_dispatched(conn: Connection, ids: list[int]) -> dict[int, int]:
    """Mark the claimed rows ``ids`` dispatched (the caller holds :data:`sql.DISPATCH_LOCK`);
    return each row's dispatch position, given in id order."""
    ids = sorted(ids)
    base, marked = conn.execute(sql.MARK_DISPATCHED, {"ids": ids}).one()
    if marked != len(ids):  # the rows are locked by this transaction: this is a bug, not a race
        raise OzzyError(f"marked {marked} of {len(ids)} claimed rows dispatched")
    return {row_id: base + k for k, row_id in enumerate(ids, 1)}


def relay_runtime(runtime: Runtime) -> Runtime:
    """Import the configured event modules too, so only truly unknown types are parked."""
    import_handler_modules(runtime.settings.event_modules)
    return runtime


def run_relay(runtime: Runtime) -> int:
    """``ozzy relay``: run until SIGTERM or SIGINT, finish the current batch, return 0."""
    relay = Relay(relay_runtime(runtime))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    relay.start()
    log.info("relay started: %d handlers for %d event types", len(runtime.handlers), len(relay.by_type))
    stop.wait()
    log.info("relay stopping")
    relay.stop()
    runtime.close()
    return 0


__all__ = ["HandlerSpec", "Relay", "RelayStats", "run_relay"]
