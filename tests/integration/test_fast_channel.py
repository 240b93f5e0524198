"""The heartbeated subscriber against a private Redis: drops and stalls are noticed and healed."""

from __future__ import annotations

import threading
import time

import redis

from shared.channel.pubsub import Subscriber
from tests.integration.helpers import wait_until
from tests.servers import private_redis


def test_a_killed_subscription_is_noticed_counted_and_caught_up() -> None:
    with private_redis() as server:
        client = redis.Redis.from_url(server.url)
        received: list[bytes] = []
        connects = threading.Semaphore(0)
        sub = Subscriber(client, ["ns:test"], lambda ch, data: received.append(data), namespace="ns",
                         heartbeat=0.2, on_connect=connects.release, name="test")
        sub.start()
        try:
            assert connects.acquire(timeout=5)
            assert sub.state == "connected"
            client.publish("ns:test", b"one")
            wait_until(lambda: received == [b"one"], timeout=5)
            # When the connection is killed behind redis-py's back
            assert client.client_kill_filter(_type="pubsub") >= 1
            # Then the subscriber reconnects, tells its owner to catch up, and counts it
            assert connects.acquire(timeout=5)
            wait_until(lambda: sub.reconnects >= 1 and sub.state == "connected", timeout=5)
            client.publish("ns:test", b"two")
            wait_until(lambda: received == [b"one", b"two"], timeout=5)
        finally:
            sub.stop()
            client.close()


def test_a_stopped_redis_degrades_the_subscriber_until_it_is_back() -> None:
    with private_redis() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
        sub = Subscriber(client, ["ns:test"], lambda ch, data: None, namespace="ns", heartbeat=0.2, name="test")
        sub.start()
        try:
            wait_until(lambda: sub.state == "connected", timeout=5)
            server.stop()
            wait_until(lambda: sub.state == "degraded", timeout=5)
            time.sleep(0.5)
            server.start()
            wait_until(lambda: sub.state == "connected", timeout=10)
            assert sub.reconnects >= 1
        finally:
            sub.stop()
            client.close()
