"""Ordered handlers (#14): one delivery at a time per key, in dispatch order, across relays,
workers and threads; a delivery that fails for good blocks only its own key until retried."""

from __future__ import annotations

import random
import threading
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
