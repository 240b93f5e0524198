"""Cluster listeners are woken only by the relay's announcements that concern them: a batch of
events no listener of the process takes does not make it read the log (every process did, for
every batch), a batch with one of its types does, at once, and a message of any other shape still
wakes it."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
import redis

from shared.channel.pubsub import events_channel
from shared.cluster.listeners import ListenerCommand, listener
from shared.cluster.reader import ClusterListener
from shared.delivery.relay import Relay
from tests.domain import AccountOpened, DepositAudited
from tests.integration.helpers import make_runtime, wait_until


@pytest.fixture
def runtime(clean_db):
    # The poll is an hour away: only an announcement can wake a reader during a test.
    rt = make_runtime(clean_db, handlers=[], poll_interval=3600)
    yield rt
    rt.close()


class Announcements:
    """What the relay publishes on the events channel, as a subscriber receives it."""

    def __init__(self, runtime) -> None:
        self.client = redis.Redis.from_url(runtime.config.redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(events_channel(runtime.config.redis_namespace))
        wait_until(lambda: self.pubsub.get_message(timeout=0.1) is None and self.pubsub.subscribed, 10)

    def next(self) -> bytes:
        message = wait_until(lambda: self.pubsub.get_message(timeout=0.1), 10)
        data: bytes = message["data"]
        return data

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


def dispatch(runtime, *events) -> None:
    with runtime.unit_of_work() as uow:
        for event in events:
            uow.publish(event)
        uow.commit()
    assert Relay(runtime).drain() == len(events)


def reader_of(runtime, seen: list[str]) -> ClusterListener:
    return ClusterListener(runtime.engine, runtime.redis, runtime.config, "test-node",
                           [listener(lambda e: seen.append(e.owner), AccountOpened, name="test.owners")])


def audited() -> DepositAudited:
    return DepositAudited(account_id=uuid.uuid4(), amount=Decimal("1.00"))


def test_only_a_batch_holding_a_type_it_reads_wakes_the_reader(runtime) -> None:
    announcements = Announcements(runtime)
    reader = reader_of(runtime, [])
    try:
        # Given what the relay really announced: a batch of other types, then one with an AccountOpened
        dispatch(runtime, audited(), audited())
        other = announcements.next()
        dispatch(runtime, audited(), AccountOpened(account_id=uuid.uuid4(), owner="ann"))
        mixed = announcements.next()
        # Then the first leaves the reader asleep, the second wakes it
        reader._announced("events", other)
        assert not reader._wake.is_set()
        reader._announced("events", mixed)
        assert reader._wake.is_set()
        # And a message that is not a batch of envelopes wakes it, as every message used to
        reader._wake.clear()
        reader._announced("events", b"1")
        assert reader._wake.is_set()
    finally:
        announcements.close()


def test_a_running_reader_still_gets_its_events_at_once_between_others(runtime) -> None:
    seen: list[str] = []
    reader = reader_of(runtime, seen)
    reader.start()
    try:
        assert reader.ready.wait(10)
        wait_until(lambda: reader.subscriber.state == "connected", 10)
        reads = []
        catch_up = reader.catch_up
        reader.catch_up = lambda limit=500: reads.append(1) or catch_up(limit)  # type: ignore[method-assign]
        # When batches of other types go out, then one of its own, then others again
        dispatch(runtime, audited())
        dispatch(runtime, AccountOpened(account_id=uuid.uuid4(), owner="bob"), audited())
        dispatch(runtime, audited())
        # Then its listener gets its event through the announcement (the poll is an hour away)
        wait_until(lambda: seen == ["bob"], 10)
        dispatch(runtime, AccountOpened(account_id=uuid.uuid4(), owner="cy"))
        wait_until(lambda: seen == ["bob", "cy"], 10)
        # and it read the log only for the batches that held its events (fewer if two wake-ups
        # coalesced; a re-subscription, which reads the log, only if the channel dropped meanwhile)
        assert 1 <= len(reads) <= 2 + reader.subscriber.reconnects
    finally:
        reader.stop()


def test_a_listener_command_wakes_every_reader(runtime) -> None:
    """The reader applies ``ozzy.listener_command`` itself, whatever its listeners take."""
    announcements = Announcements(runtime)
    reader = reader_of(runtime, [])
    try:
        dispatch(runtime, ListenerCommand(action="retry", listener="test.elsewhere"))
        reader._announced("events", announcements.next())
        assert reader._wake.is_set()
    finally:
        announcements.close()
