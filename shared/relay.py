"""The relay: moves committed outbox rows to Redis, then marks them dispatched.

A drain claims a batch of undispatched rows (``FOR UPDATE SKIP LOCKED``), records one pending
delivery per handler, sends the whole batch to Redis in one pipeline (a pub/sub publication per event
for live subscribers, a Dramatiq message per handler, a wake-up per queue) and commits only after
Redis accepted it. If Redis fails, the transaction rolls back and the rows wait for the next drain.

Drains are triggered by the fast channel (a unit of work's wake-up) or, when that is silent or down,
by an APScheduler job every ``poll_interval`` seconds.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis
from apscheduler.schedulers.background import BackgroundScheduler
from dramatiq import Message
from sqlalchemy.exc import SQLAlchemyError

from shared import sql
from shared.broker import enqueue_pipelined
from shared.fastchannel import events_channel, relay_channel
from shared.handlers import handlers_by_event_type
from shared.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class RelayStats:
    """What the relay has done and how its fast channel is, for logs, status and tests."""

    fast_channel: str = "connecting"  # connected | degraded | connecting
    fast_channel_since: float = field(default_factory=time.time)
    last_notification_at: float | None = None
    drains_by_notify: int = 0
    drains_by_poll: int = 0
    dispatched: int = 0
    batches: int = 0
    errors: int = 0


class Relay:
    """Drains the outbox of one database into one Redis. Several may run at once."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.by_type = handlers_by_event_type(runtime.handlers.values())
        self.stats = RelayStats()
        self._wake = threading.Event()
        self._reason = "poll"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scheduler: BackgroundScheduler | None = None
        self._events_channel = events_channel(self.settings.redis_namespace)

    # --- one drain ------------------------------------------------------------------------------

    def drain(self) -> int:
        """Dispatch undispatched rows, batch after batch, until none remain; return how many."""
        total = 0
        while not self._stopping.is_set():
            sent = self.dispatch_batch()
            total += sent
            if sent < self.settings.batch_size:
                break
        return total

    def dispatch_batch(self) -> int:
        """Claim, send and mark one batch in one transaction; return the number of rows."""
        with self.runtime.engine.connect() as conn:
            with conn.begin():
                rows = conn.execute(sql.CLAIM_BATCH, {"limit": self.settings.batch_size}).all()
                if not rows:
                    return 0
                envelopes = [_envelope(row) for row in rows]
                pending = self._deliveries(envelopes)
                if pending:
                    conn.execute(
                        sql.INSERT_PENDING,
                        {"event_ids": [e for e, _, _ in pending], "handlers": [s.name for _, s, _ in pending]},
                    )
                self._send(envelopes, pending)
                conn.execute(sql.MARK_DISPATCHED, {"ids": [row.id for row in rows]})
        self.stats.dispatched += len(rows)
        self.stats.batches += 1
        return len(rows)

    def _deliveries(self, envelopes: list[dict[str, Any]]) -> list[tuple[str, Any, dict[str, Any]]]:
        return [(env["event_id"], spec, env) for env in envelopes for spec in self.by_type.get(env["type"], ())]

    def _send(self, envelopes: list[dict[str, Any]], pending: list[tuple[str, Any, dict[str, Any]]]) -> None:
        broker = self.runtime.broker
        pipe = broker.client.pipeline(transaction=False)
        for env in envelopes:
            pipe.publish(self._events_channel, json.dumps(env, separators=(",", ":")))
        now = int(time.time() * 1000)
        messages = [
            Message(
                queue_name=spec.queue,
                actor_name=spec.name,
                args=(env,),
                kwargs={},
                options={},
                message_id=str(uuid.uuid4()),
                message_timestamp=now,
            )
            for _, spec, env in pending
        ]
        enqueue_pipelined(broker, pipe, messages)
        pipe.execute()

    # --- running as a process -------------------------------------------------------------------

    def wake(self, reason: str = "notify") -> None:
        """Ask for a drain as soon as the current one (if any) ends."""
        self._reason = reason
        self._wake.set()

    def start(self) -> None:
        """Start the drain loop, the fast-channel subscriber and the poll job."""
        for target, name in ((self._drain_loop, "ozzy-relay-drain"), (self._subscribe_loop, "ozzy-relay-fast")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._scheduler = BackgroundScheduler(timezone=timezone.utc)
        self._scheduler.add_job(
            self.wake,
            "interval",
            args=("poll",),
            seconds=self.settings.poll_interval,
            id="poll",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(timezone.utc),
        )
        self._scheduler.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current batch, then stop every thread."""
        self._stopping.set()
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        for thread in self._threads:
            thread.join(timeout)

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
            self._guarded_drain()

    def _guarded_drain(self) -> None:
        try:
            self.drain()
        except (SQLAlchemyError, redis.RedisError) as exc:
            # Nothing was marked dispatched; the next poll tries again.
            self.stats.errors += 1
            log.warning("drain failed, retrying at the next poll: %s", exc)

    def _subscribe_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._listen()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the subscriber must outlive any connection failure
                if self._stopping.is_set():
                    return
                failures += 1
                self._set_channel_state("degraded", exc)
            self._stopping.wait(min(0.1 * 2**failures, 5.0))

    def _listen(self) -> None:
        pubsub = self.runtime.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(relay_channel(self.settings.redis_namespace))
            self._set_channel_state("connected")
            self.wake("notify")  # anything committed while we were not listening
            while not self._stopping.is_set():
                if pubsub.get_message(timeout=1.0) is not None:
                    self.stats.last_notification_at = time.time()
                    self.wake("notify")
        finally:
            pubsub.close()

    def _set_channel_state(self, state: str, exc: Exception | None = None) -> None:
        if state != self.stats.fast_channel:
            if state == "degraded":
                log.warning("fast channel lost, relying on the %ss poll: %s", self.settings.poll_interval, exc)
            else:
                log.info("fast channel %s", state)
            self.stats.fast_channel = state
            self.stats.fast_channel_since = time.time()


def _envelope(row: Any) -> dict[str, Any]:
    return {
        "event_id": str(row.event_id),
        "type": row.event_type,
        "version": row.event_version,
        "payload": row.payload,
        "metadata": row.metadata,
        "occurred_at": row.occurred_at.isoformat(),
        "aggregate_type": row.aggregate_type,
        "aggregate_id": row.aggregate_id,
        "position": row.id,
    }


def run_relay(runtime: Runtime) -> int:
    """``ozzy relay``: run until SIGTERM or SIGINT, finish the current batch, return 0."""
    relay = Relay(runtime)
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
