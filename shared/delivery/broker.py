"""Dramatiq's Redis broker, set up in one place, with two additions:

* a quick-wake consumer: an idle consumer blocks on a per-process pub/sub listener instead of
  polling Redis with a backoff of up to a second, so a message is picked up within milliseconds and
  an idle worker costs next to nothing;
* queues an operator paused: their consumers hand prefetched messages back and fetch nothing.

The relay's batch enqueue (Dramatiq has none) is :func:`shared.delivery.messages.send`; the actors
and middleware of the handlers are set up by :func:`shared.delivery.worker.build_broker`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import redis
from dramatiq import Message, Middleware
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import ConnectionClosed

from shared.channel.pubsub import queue_channel

if TYPE_CHECKING:
    from shared.delivery.batching import Batching

log = logging.getLogger(__name__)


class WakeListener:
    """One pub/sub connection per process; sets the events of consumers whose queue got a message."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self._client = client
        self._prefix = queue_channel(namespace, "")
        self._events: dict[str, set[threading.Event]] = defaultdict(set)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def register(self, queue_name: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events[queue_name].add(event)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ozzy-wake-listener", daemon=True)
                self._thread.start()
        return event

    def unregister(self, queue_name: str, event: threading.Event) -> None:
        with self._lock:
            self._events[queue_name].discard(event)

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                self._listen()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - this thread must outlive any connection failure
                if self._stopped.is_set():
                    return
                failures += 1
                if failures == 1:
                    log.warning("queue wake-up channel lost, consumers poll until it is back: %s", exc)
            self._wake_all()  # whatever was published while we were away is fetched by a poll now
            self._stopped.wait(min(0.05 * 2**failures, 2.0))

    def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        try:
            pubsub.psubscribe(self._prefix + "*")
            self._wake_all()  # the subscription is live: anything earlier is found by one fetch
            while not self._stopped.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._wake(message["channel"].decode()[len(self._prefix) :])
        finally:
            pubsub.close()

    def _wake(self, queue_name: str) -> None:
        with self._lock:
            events = list(self._events.get(queue_name, ()))
        for event in events:
            event.set()

    def wake_all(self) -> None:
        self._wake_all()

    def _wake_all(self) -> None:
        with self._lock:
            events = [e for group in self._events.values() for e in group]
        for event in events:
            event.set()

    def stop(self) -> None:
        self._stopped.set()


class _QuickWakeConsumer(_RedisConsumer):
    def __init__(self, broker: OzzyBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        # Dramatiq's own idle backoff is turned off (timeout 0); we block on the wake event instead.
        super().__init__(broker, queue_name, prefetch, 0)  # type: ignore[no-untyped-call]  # dramatiq's consumer is untyped
        self.idle_timeout = timeout / 1000
        self._beat_every = broker.heartbeat_timeout / 1000 / 4
        self._last_beat = time.monotonic()
        self._listener = broker.wake_listener
        self.wake = self._listener.register(queue_name)

    def __next__(self) -> Any:
        if self.queue_name in self.broker.paused_queues:
            return self._paused()
        # Clear before fetching: a wake-up published after this point is never missed.
        if not self.message_cache:
            self.wake.clear()
        fetches = not self.message_cache and self.outstanding_message_count < self.prefetch
        message = super().__next__()  # type: ignore[no-untyped-call]  # dramatiq's consumer is untyped
        if fetches:
            self._last_beat = time.monotonic()  # every Dramatiq command records a heartbeat
        elif time.monotonic() - self._last_beat > self._beat_every:
            # Prefetch is full of long-running messages: nothing is fetched, so without this the
            # worker would look dead and its in-flight messages would be handed to another worker.
            self.broker.do_qsize(self.queue_name)
            self._last_beat = time.monotonic()
        if message is None:
            # Either Redis had nothing, or prefetch is full; a publication or an ack ends the wait.
            self.wake.wait(self.idle_timeout)
        return message

    def _paused(self) -> None:
        """A paused handler's queue: hand prefetched messages back to Redis and fetch nothing."""
        if self.message_cache:
            ids = [Message.decode(data).options["redis_message_id"] for data in self.message_cache]
            self.message_cache = []
            self.broker.do_requeue(self.queue_name, *ids)
        if time.monotonic() - self._last_beat > self._beat_every:
            self.broker.do_qsize(self.queue_name)  # stay alive in Dramatiq's heartbeat set
            self._last_beat = time.monotonic()
        self.wake.wait(self.idle_timeout)
        self.wake.clear()
        return None

    def ack(self, message: Any) -> None:
        try:
            super().ack(message)  # type: ignore[no-untyped-call]  # dramatiq's consumer is untyped
        finally:
            self.wake.set()

    def ack_many(self, messages: list[Any]) -> None:
        """Acknowledge ``messages`` in one Redis round trip: Dramatiq's ack script once per
        message, pipelined."""
        broker = self.broker
        dispatch = broker.scripts["dispatch"]
        try:
            with broker.client.pipeline(transaction=False) as pipe:
                for message in messages:
                    args = ["ack", current_millis(), self.queue_name, broker.broker_id, broker.heartbeat_timeout,
                            broker.dead_message_ttl, broker._should_do_maintenance("ack"), broker._max_unpack_size(),
                            message.options["redis_message_id"]]
                    dispatch(keys=[broker.namespace], args=args, client=pipe)
                pipe.execute()
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]  # dramatiq's error is untyped
        finally:
            for message in messages:
                self.queued_message_ids.discard(message.message_id)
            self.wake.set()

    def nack(self, message: Any) -> None:
        try:
            super().nack(message)  # type: ignore[no-untyped-call]  # dramatiq's consumer is untyped
        finally:
            self.wake.set()

    def close(self) -> None:
        self._listener.unregister(self.queue_name, self.wake)
        super().close()


class OzzyBroker(RedisBroker):
    """The Redis broker with quick wake-ups. Built by :func:`shared.delivery.worker.build_broker`."""

    def __init__(self, *, client: redis.Redis, namespace: str, middleware: list[Middleware], **kw: Any) -> None:
        super().__init__(client=client, namespace=namespace, middleware=middleware, **kw)  # type: ignore[no-untyped-call]  # dramatiq's RedisBroker is untyped
        self.wake_listener = WakeListener(client, namespace)
        #: Queues whose handlers an operator paused: their consumers fetch nothing.
        self.paused_queues: set[str] = set()
        #: Several deliveries per transaction (set by ``build_broker``; see batching).
        self.batching: Batching | None = None

    @property
    def consumer_class(self) -> type[_QuickWakeConsumer]:
        return _QuickWakeConsumer

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        sent = super().enqueue(message, delay=delay)
        try:
            self.client.publish(queue_channel(self.namespace, sent.queue_name), b"1")
        except redis.RedisError:
            pass  # the message is queued; consumers find it by their idle poll
        return sent

    def close(self) -> None:
        self.wake_listener.stop()
        super().close()


__all__ = ["OzzyBroker", "WakeListener", "dq_name"]
