"""The fast channel: Redis pub/sub used as a hint that work is waiting. The database stays the truth.

Channels, all under the deployment's namespace:

``<ns>:relay:wake``      a unit of work committed events; relays drain at once instead of at the poll.
``<ns>:events``          every dispatched event, published by the relay for live subscribers.
``<ns>:queue:<queue>``   a message was enqueued on ``<queue>``; idle worker consumers fetch at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)


def relay_channel(namespace: str) -> str:
    return f"{namespace}:relay:wake"


def events_channel(namespace: str) -> str:
    return f"{namespace}:events"


def queue_channel(namespace: str, queue_name: str) -> str:
    return f"{namespace}:queue:{queue_name}"


def bounded_client(url: str, timeout: float) -> redis.Redis:
    """A Redis client whose every connect, read and write gives up after ``timeout`` seconds."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


class WakeNotifier:
    """Publishes a wake-up after commits, from a background thread, so the write path never waits.

    Several commits in a burst coalesce into one publication. A Redis failure is logged once per
    outage and otherwise ignored: the relay's poll finds the rows anyway.
    """

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._pending = threading.Event()
        self._closed = False
        self._failing = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._start_lock = threading.Lock()

    def notify(self) -> None:
        """Ask for one wake-up to be published soon; returns at once."""
        self._ensure_thread()
        self._pending.set()

    def _ensure_thread(self) -> None:
        # A forked child (a WSGI server's worker) inherits no threads: start one in each process.
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._start_lock:
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="ozzy-wake-notifier", daemon=True)
                self._thread.start()

    #: At most one wake-up per this many seconds: a burst of commits costs one publication per
    #: interval (the relay's drain keeps going while rows remain), and an isolated commit none extra.
    MIN_INTERVAL = 0.005

    def _run(self) -> None:
        last = 0.0
        while not self._closed:
            self._pending.wait()
            since = time.monotonic() - last
            if since < self.MIN_INTERVAL:
                time.sleep(self.MIN_INTERVAL - since)
            self._pending.clear()
            if not self._closed:
                self.publish_now()
                last = time.monotonic()

    def publish_now(self) -> bool:
        """Publish one wake-up in the caller's thread; False if Redis did not take it."""
        try:
            self._client.publish(self._channel, b"1")
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("fast channel unavailable, relays will find events by polling: %s", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("fast channel is back")
        self._failing = False
        return True

    def close(self) -> None:
        self._closed = True
        self._pending.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=1)
        self._client.close()


def heartbeat_channel(namespace: str, subscriber_id: str) -> str:
    return f"{namespace}:hb:{subscriber_id}"


class _Stalled(Exception):
    pass


class _TrackedPubSub(redis.client.PubSub):
    """Tells its owner about every (re)connection, which redis-py otherwise handles silently."""

    owner: Subscriber | None = None

    def on_connect(self, connection: redis.connection.AbstractConnection) -> None:
        super().on_connect(connection)
        if self.owner is not None:
            self.owner._resubscribed = True


class Subscriber:
    """A pub/sub subscription that knows whether it works, for relays and cluster listeners.

    Redis pub/sub drops what is published while a subscriber is away, and redis-py re-subscribes
    silently after a dropped connection. So this subscriber publishes a heartbeat to itself every
    ``heartbeat`` seconds and re-subscribes when three in a row fail to come back (a silent stall),
    and it calls ``on_connect`` after every (re)subscription so the owner can catch up by polling
    the database for whatever was missed. ``state`` is ``connecting``, ``connected`` or ``degraded``.
    """

    def __init__(
        self,
        client: redis.Redis,
        channels: list[str],
        on_message: Callable[[str, bytes], None],
        *,
        namespace: str,
        heartbeat: float,
        on_connect: Callable[[], None] | None = None,
        name: str = "subscriber",
    ) -> None:
        self._client = client
        self._channels = channels
        self._on_message = on_message
        self._on_connect = on_connect or (lambda: None)
        self._heartbeat = heartbeat
        self._name = name
        self.id = uuid.uuid4().hex
        self._hb_channel = heartbeat_channel(namespace, self.id)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._resubscribed = False
        self.state = "connecting"
        self.since = time.time()
        self.last_message_at: float | None = None
        self.last_heartbeat_at: float | None = None
        self.last_connected_at: float | None = None
        #: Connections after the first: re-subscriptions after a drop, silent or not.
        self.reconnects = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"ozzy-{self._name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, object]:
        return {
            "state": self.state,
            "since": self.since,
            "last_message_at": self.last_message_at,
            "last_heartbeat_at": self.last_heartbeat_at,
            "reconnects": self.reconnects,
        }

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                self._session()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the subscriber must outlive any failure
                if self._stopped.is_set():
                    return
                failures += 1
                self._set_state("degraded", exc)
            self._stopped.wait(min(0.05 * 2**failures, 2.0))

    def _session(self) -> None:
        pubsub = _TrackedPubSub(self._client.connection_pool, ignore_subscribe_messages=True)
        pubsub.owner = self
        try:
            pubsub.subscribe(*self._channels, self._hb_channel)
            self._listen(pubsub)
        finally:
            pubsub.close()

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        last_seen = time.monotonic()
        next_beat = 0.0
        while not self._stopped.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self._client.publish(self._hb_channel, b"1")
                next_beat = now + self._heartbeat
            if now - last_seen > 3 * self._heartbeat:
                raise _Stalled(f"no heartbeat for {now - last_seen:.1f}s")
            if self._resubscribed and self.state == "connected":
                self._resubscribed = False
                self.reconnects += 1
                log.info("%s re-subscribed after a dropped connection; catching up", self._name)
                self._on_connect()
            message = pubsub.get_message(timeout=min(self._heartbeat, 0.5))
            if message is None:
                continue
            channel = message["channel"].decode()
            if channel == self._hb_channel:
                last_seen = time.monotonic()
                self.last_heartbeat_at = time.time()
                if self.state != "connected":
                    self._resubscribed = False
                    if self.last_connected_at is not None:
                        self.reconnects += 1
                    self.last_connected_at = time.time()
                    self._set_state("connected")
                    self._on_connect()
                continue
            self.last_message_at = time.time()
            self._on_message(channel, message["data"])

    def _set_state(self, state: str, exc: Exception | None = None) -> None:
        if state == self.state:
            return
        if state == "degraded":
            log.warning("%s: fast channel degraded, relying on polling until it is back: %s", self._name, exc)
        else:
            log.info("%s: fast channel %s", self._name, state)
        self.state = state
        self.since = time.time()
