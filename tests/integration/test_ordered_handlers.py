"""Ordered handlers (#14): one delivery at a time per key, in dispatch order, across relays,
workers and threads; a delivery that fails for good blocks only its own key until retried."""

from __future__ import annotations

import random
import threading
import uuid
from collections import defaultdict

import pytest

from shared.delivery import deadletters, ordering
from shared.delivery.relay import Relay
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until
from tests.ordered_handlers import TRACKER, Keyed, ordered, unordered


@pytest.fixture
def tracker():
    TRACKER.reset()
    yield TRACKER
    TRACKER.reset()


def publish(runtime, events: list[Keyed], per_commit: int = 50) -> None:
    for start in range(0, len(events), per_commit):
        with runtime.unit_of_work() as uow:
            for event in events[start:start + per_commit]:
                uow.publish(event)
            uow.commit()


def dispatch_order(runtime) -> dict[str, list]:
    """Each key's events in the log's dispatch order."""
    order: dict[str, list] = defaultdict(list)
    with runtime.engine.connect() as conn:
        for key, event_id in conn.exec_driver_sql(
            "SELECT payload->>'key', event_id FROM ozzy_outbox WHERE event_type = 'test.keyed' ORDER BY dispatch_seq"
        ):
            order[key].append(event_id)
    return order


def count(runtime, status: str, handler: str = "test.ordered") -> int:
    return scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE handler = :h AND status = :s",
                  h=handler, s=status)


def test_events_of_a_key_run_one_at_a_time_in_dispatch_order_and_a_poison_blocks_only_its_key(
    clean_db, tracker
) -> None:
    # Given 2 relays and 2 workers of 8 threads, a handler ordered by key with random delays,
    # and one event (k007, n=5) that fails for good
    runtimes = [make_runtime(clean_db, handlers=[ordered], worker_idle_ms=100, redelivery_after=600.0)
                for _ in range(2)]
    tracker.max_delay = 0.004
    tracker.poison.add(("k007", 5))
    keys, per_key = 200, 25
    events = [Keyed(key=f"k{k:03d}", n=n) for n in range(per_key) for k in range(keys)]
    random.Random(14).shuffle(events)  # keys interleave; each key's events stay in n order per writer
    events.sort(key=lambda e: e.n)  # ... committed in n order, so n order is each key's commit order
    relays = [Relay(rt) for rt in runtimes]
    writer = threading.Thread(target=publish, args=(runtimes[0], events), daemon=True)
    try:
        with running_worker(runtimes[0], threads=8), running_worker(runtimes[1], threads=8):
            for relay in relays:
                relay.start()
            writer.start()
            # When 5,000 events flow: every key but k007 completes, and k007 stops at its poison
            writer.join(60)
            total = keys * per_key
            wait_until(lambda: count(runtimes[0], "done") == total - (per_key - 5), timeout=90, interval=0.2)
            wait_until(lambda: count(runtimes[0], "blocked") == per_key - 6, timeout=30, interval=0.2)
            assert count(runtimes[0], "dead") == 1
            poison_id = scalar(runtimes[0], "SELECT id FROM ozzy_deliveries WHERE status = 'dead'")
            with runtimes[0].engine.connect() as conn:
                blocked_ids = [r[0] for r in conn.exec_driver_sql(
                    "SELECT id FROM ozzy_deliveries WHERE status = 'blocked'")]
                # Then each blocked delivery names the poison as the one holding it up
                assert set(ordering.blockers(conn, blocked_ids).values()) == {poison_id}
            assert len(tracker.runs["k007"]) == 5
            # When an operator retries the poison after a fix, the key is released in order
            tracker.poison.clear()
            assert deadletters.retry_dead(runtimes[0], ids=[poison_id]) == 1
            wait_until(lambda: count(runtimes[0], "done") == total, timeout=60, interval=0.2)
        # Then no key ever ran two events at once, and each key ran exactly its dispatch order
        assert tracker.overlaps == []
        expected = dispatch_order(runtimes[0])
        assert len(expected) == keys
        assert {k: tracker.runs[k] for k in expected} == expected
        assert scalar(runtimes[0], "SELECT count(*) FROM test_side_effects WHERE handler = 'ordered'") == total
    finally:
        for relay in relays:
            relay.stop()
        for rt in runtimes:
            rt.close()


def test_resolving_the_blocking_delivery_releases_the_next_of_its_key(clean_db, tracker) -> None:
    # Given a key whose second event failed for good, and two later events waiting behind it
    from shared.testing.pipeline import run_until_idle

    runtime = make_runtime(clean_db, handlers=[ordered, unordered])
    tracker.poison.add(("a", 1))
    try:
        publish(runtime, [Keyed(key="a", n=n) for n in range(4)] + [Keyed(key="b", n=0)], per_commit=1)
        run_until_idle(runtime, raise_errors=False)
        assert count(runtime, "blocked") == 2 and count(runtime, "dead") == 1
        # The unordered handler of the same events is not held up
        assert count(runtime, "done", "test.unordered") == 5
        dead = scalar(runtime, "SELECT id FROM ozzy_deliveries WHERE status = 'dead'")
        # When an operator resolves it (decides it needs no run)
        assert deadletters.resolve(runtime, [dead], "ops") == 1
        run_until_idle(runtime)
        # Then the rest of the key runs, in order, and the poison never did
        assert count(runtime, "done") == 4 and count(runtime, "resolved") == 1
        assert [len(tracker.runs["a"]), len(tracker.runs["b"])] == [3, 1]
        assert tracker.runs["a"] == [e for e in dispatch_order(runtime)["a"] if e in tracker.runs["a"]]
    finally:
        runtime.close()


def queued_event_ids(runtime, queue: str = "test.ordered") -> list[str]:
    """The event ids of the messages waiting in ``queue``, head first."""
    from dramatiq import Message

    ns = runtime.config.redis_namespace
    ids = runtime.redis.lrange(f"{ns}:{queue}", 0, -1)
    return [Message.decode(raw).args[0]["event_id"] for raw in runtime.redis.hmget(f"{ns}:{queue}.msgs", ids)]


def test_a_released_delivery_goes_to_the_head_of_its_queue_ahead_of_the_backlog(clean_db, tracker) -> None:
    # Given a backlog: a0, a1 of key a, then five events of key b, dispatched and queued
    from shared.delivery.worker import run_handler
    from shared.model.stored import StoredEvent

    runtime = make_runtime(clean_db, handlers=[ordered])
    try:
        publish(runtime, [Keyed(key="a", n=0), Keyed(key="a", n=1)] + [Keyed(key="b", n=n) for n in range(5)],
                per_commit=1)
        Relay(runtime).drain()
        backlog = queued_event_ids(runtime)
        a0, a1 = backlog[:2]
        spec = runtime.handlers["test.ordered"]

        def stored(event_id: str) -> StoredEvent:
            from dramatiq import Message

            ns = runtime.config.redis_namespace
            ids = runtime.redis.lrange(f"{ns}:test.ordered", 0, -1)
            for raw in runtime.redis.hmget(f"{ns}:test.ordered.msgs", ids):
                envelope = Message.decode(raw).args[0]
                if envelope["event_id"] == event_id:
                    return StoredEvent.from_message(envelope)
            raise AssertionError(event_id)

        # When a1 reaches its gate before a0 (it is blocked), then a0 runs and releases it
        assert run_handler(runtime, spec, stored(a1)) is False
        assert count(runtime, "blocked") == 1
        assert run_handler(runtime, spec, stored(a0)) is True
        # Then a1 is pending again and its new message is first in the queue, before the backlog
        assert count(runtime, "blocked") == 0
        assert queued_event_ids(runtime) == [a1] + backlog
        assert run_handler(runtime, spec, stored(a1)) is True
        assert tracker.runs["a"] == [uuid.UUID(a0), uuid.UUID(a1)]
    finally:
        runtime.close()


def test_the_gate_prepares_its_statements_again_when_a_connection_lost_them(clean_db, tracker) -> None:
    # Given three dispatched events of one key, and one connection for all their gates
    from sqlalchemy.orm import Session

    runtime = make_runtime(clean_db, handlers=[ordered])
    try:
        publish(runtime, [Keyed(key="a", n=n) for n in range(3)], per_commit=1)
        Relay(runtime).drain()
        first, second, third = dispatch_order(runtime)["a"]
        with runtime.engine.connect() as conn:
            session = Session(bind=conn)
            driver = conn.connection.driver_connection
            gate = ordering.enter(session, "test.ordered", first)
            assert gate is not None and gate.blocker is None and gate.claimed is not None
            session.commit()
            # When psycopg rolls back a transaction after preparing statements of its own, it
            # deallocates every prepared statement of the connection, the gate's too
            driver.execute("SELECT 1", prepare=True)
            driver.rollback()
            gate = ordering.enter(session, "test.ordered", second)
            # Then the gate prepares them again and passes
            assert gate is not None and gate.blocker is None and gate.claimed is not None
            session.commit()
            # And when it thinks a connection has none (they are there), it passes as well
            ordering._prepared.discard(driver)
            gate = ordering.enter(session, "test.ordered", third)
            assert gate is not None and gate.blocker is None and gate.claimed is not None
            session.commit()
            names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM pg_prepared_statements")}
            assert {"ozzy_gate_lock", "ozzy_gate_claim"} <= names
        assert count(runtime, "done") == 3
    finally:
        runtime.close()
