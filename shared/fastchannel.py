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

    def _run(self) -> None:
        while not self._closed:
            self._pending.wait()
            self._pending.clear()
            if not self._closed:
                self.publish_now()

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
