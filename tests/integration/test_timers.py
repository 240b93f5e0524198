"""Scheduled events on PostgreSQL: committed with the business change, fired once when due by the
relay (its timer, not its poll), cancellable until then, whatever Redis holds."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import IntegrityError

from shared.delivery import timers
from shared.delivery.relay import Relay
from tests.domain import Account, AccountOpened
from tests.integration.helpers import make_runtime, scalar, wait_until


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=["test.welcome"], poll_interval=3600.0)
    yield rt
    rt.close()


def schedule(runtime, n: int = 1, **when) -> list[uuid.UUID]:
    with runtime.unit_of_work() as uow:
        ids = [uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner=f"later-{i}"), **when) for i in range(n)]
        uow.commit()
    return ids


def statuses(runtime) -> dict[str, int]:
    with runtime.engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT status, count(*) FROM ozzy_scheduled GROUP BY status").all())


def test_a_scheduled_event_waits_in_postgresql_and_fires_once_when_due_by_the_relays_timer(runtime) -> None:
    # Given a relay whose poll would not come for an hour
    relay = Relay(runtime)
    relay.start()
    try:
        # When an event is scheduled half a second ahead
        (event_id,) = schedule(runtime, after=0.5)
        assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 0
        # Then the relay's timer fires it into the log, and it is dispatched to its handler
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL") == 1,
                   timeout=30)
    finally:
        relay.stop()
    row = _logged(runtime, event_id)
    assert row.metadata["due_at"] and row.occurred_at >= datetime.fromisoformat(row.metadata["due_at"])
    assert statuses(runtime) == {"fired": 1}
    assert relay.stats.timers_fired == 1 and relay.stats.drains_by_timer >= 1
    assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE handler = 'test.welcome'") == 1


def test_an_event_cancelled_before_it_is_due_never_fires(runtime) -> None:
    kept, cancelled = schedule(runtime, 2, at=datetime.now(timezone.utc) + timedelta(seconds=0.2))
    with runtime.unit_of_work() as uow:
        uow.cancel_scheduled(cancelled)
        uow.commit()
    wait_until(lambda: timers.fire_due(runtime.engine) >= 0 and statuses(runtime).get("fired") == 1, timeout=10)
    assert scalar(runtime, "SELECT status FROM ozzy_scheduled WHERE event_id = :id", id=cancelled) == "cancelled"
    assert [r.event_id for r in _log(runtime)] == [kept]


def test_a_rolled_back_schedule_leaves_nothing(runtime) -> None:
    with runtime.unit_of_work() as uow:
        uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner="x"), after=0)
        uow.rollback()
        uow.commit()
    assert scalar(runtime, "SELECT count(*) FROM ozzy_scheduled") == 0


def test_a_key_names_one_waiting_event_and_replace_moves_it(runtime) -> None:
    schedule(runtime, key="reminder:1", after=3600)
    with pytest.raises(IntegrityError), runtime.unit_of_work() as uow:
        uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner="x"), key="reminder:1", after=10)
        uow.commit()
    with runtime.unit_of_work() as uow:
        new = uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner="x"), key="reminder:1", after=0, replace=True)
        uow.commit()
    assert statuses(runtime) == {"cancelled": 1, "scheduled": 1}
    assert timers.fire_due(runtime.engine) == 1
    assert [r.event_id for r in _log(runtime)] == [new]
    with runtime.unit_of_work() as uow:  # a fired key is free again, and cancelling by key is a no-op then
        uow.cancel_scheduled(key="reminder:1")
        uow.commit()
    assert statuses(runtime) == {"cancelled": 1, "fired": 1}


def test_cancelling_while_relays_fire_gives_each_event_one_fate(runtime) -> None:
    # Given 300 events due now, and one transaction per cancellation racing three firing threads
    ids = schedule(runtime, 300, at=datetime.now(timezone.utc) - timedelta(seconds=1))
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def fire() -> None:
        start.wait(10)
        while timers.fire_due(runtime.engine, limit=7):
            pass

    def cancel() -> None:
        start.wait(10)
        for event_id in reversed(ids):
            with runtime.unit_of_work() as uow:
                uow.cancel_scheduled(event_id)
                uow.commit()

    threads = [threading.Thread(target=_catching(f, errors)) for f in (fire, fire, fire, cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    # Then every event either fired (and is in the log once) or was cancelled (and is not)
    fired = {r.event_id for r in _log(runtime)}
    counts = statuses(runtime)
    assert counts.get("fired", 0) + counts.get("cancelled", 0) == 300 and "scheduled" not in counts
    assert len(fired) == counts.get("fired", 0) == scalar(runtime, "SELECT count(*) FROM ozzy_outbox")
    cancelled = {r for (r,) in _rows(runtime, "SELECT event_id FROM ozzy_scheduled WHERE status = 'cancelled'")}
    assert not fired & cancelled and fired | cancelled == set(ids)


def test_two_relays_fire_each_due_event_exactly_once(runtime) -> None:
    schedule(runtime, 2000, at=datetime.now(timezone.utc) - timedelta(seconds=1))
    others = [make_runtime(runtime.config, handlers=["test.welcome"], batch_size=100) for _ in range(2)]
    relays = [Relay(rt) for rt in others]
    counts = [0, 0]
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait(10)
        counts[i] = relays[i].fire_due()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for rt in others:
            rt.close()
    assert sum(counts) == 2000
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 2000
    assert scalar(runtime, "SELECT count(DISTINCT event_id) FROM ozzy_outbox") == 2000
    assert statuses(runtime) == {"fired": 2000}


def test_scheduled_events_do_not_depend_on_redis(runtime) -> None:
    # Given events scheduled while Redis is unreachable for the writer
    broken = make_runtime(runtime.config, handlers=[], redis_url="redis://127.0.0.1:9/0")
    try:
        (event_id,) = schedule(broken, at=datetime.now(timezone.utc) + timedelta(seconds=0.2))
    finally:
        broken.close()
    # and Redis emptied afterwards
    keys = list(runtime.redis.scan_iter(f"{runtime.config.redis_namespace}:*"))
    if keys:
        runtime.redis.delete(*keys)
    # When a relay runs, Then it fires and dispatches the event
    relay = Relay(runtime)
    relay.start()
    try:
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL") == 1,
                   timeout=30)
    finally:
        relay.stop()
    assert _log(runtime)[0].event_id == event_id


def _started_and_idle(runtime) -> Relay:
    """A relay (poll an hour away) past its start-up passes, its timer armed for a scheduled event
    an hour ahead (so its own timer waits ``timers.MAX_WAIT``, 60 s)."""
    relay = Relay(runtime)
    relay.start()
    wait_until(lambda: relay.stats.last_drain_at, timeout=30)
    seen = relay.stats.drains_by_notify + relay.stats.drains_by_poll
    committed = time.time()
    schedule(runtime, after=3600)
    wait_until(lambda: relay.stats.drains_by_notify + relay.stats.drains_by_poll > seen
               and (relay.stats.last_drain_at or 0) > committed, timeout=30)
    return relay


def test_a_timer_written_without_a_wake_up_fires_on_the_next_wake_up_of_any_kind(runtime) -> None:
    # Given an idle relay whose timer waits for an event an hour ahead, and whose poll is an hour away
    relay = _started_and_idle(runtime)
    try:
        # When another process schedules an event due now and its wake-up is lost (Redis unreachable)
        silent = make_runtime(runtime.config, handlers=[], redis_url="redis://127.0.0.1:9/0")
        try:
            (event_id,) = schedule(silent, at=datetime.now(timezone.utc) - timedelta(seconds=1))
        finally:
            silent.close()
        # and then an unrelated commit wakes the relay (a wake-up that says nothing of timers)
        with runtime.unit_of_work() as uow:
            uow.add(Account.open("unrelated"))
            uow.commit()
        # Then that wake-up's pass sees the due event and fires it, well before its timer (60 s)
        wait_until(lambda: statuses(runtime).get("fired") == 1, timeout=30)
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL") == 0,
                   timeout=30)
    finally:
        relay.stop()
    assert _logged(runtime, event_id).event_id == event_id
    assert relay.stats.timers_fired == 1


def test_a_timer_written_without_any_wake_up_fires_at_the_poll(clean_db) -> None:
    rt = make_runtime(clean_db, handlers=["test.welcome"], poll_interval=0.5)
    relay = Relay(rt)
    relay.start()
    try:
        wait_until(lambda: relay.stats.drains_by_poll >= 1 and relay.stats.last_drain_at, timeout=30)
        silent = make_runtime(rt.config, handlers=[], redis_url="redis://127.0.0.1:9/0")
        try:
            schedule(silent, after=0.2)
        finally:
            silent.close()
        wait_until(lambda: statuses(rt) == {"fired": 1}, timeout=30)
    finally:
        relay.stop()
        rt.close()


def test_a_wake_up_with_no_timer_due_does_not_ask_to_fire_timers(runtime) -> None:
    # Given an idle relay whose next scheduled event is an hour ahead
    relay = _started_and_idle(runtime)
    fire_calls: list[int] = []
    fire_due = relay.fire_due

    def counting() -> int:
        fire_calls.append(1)
        return fire_due()

    relay.fire_due = counting  # type: ignore[method-assign]
    try:
        # When commits wake it, one after the other
        for i in range(5):
            with runtime.unit_of_work() as uow:
                uow.add(Account.open(f"owner-{i}"))
                uow.commit()
            wait_until(lambda i=i: scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL")
                       == i + 1, timeout=30)
        # Then each is dispatched, and no pass tried to fire timers (the claim read the next due time)
        assert fire_calls == []
        # but an event scheduled due now by a commit is fired at once
        schedule(runtime, after=0)
        wait_until(lambda: statuses(runtime).get("fired") == 1, timeout=30)
    finally:
        relay.stop()
    assert len(fire_calls) >= 1 and statuses(runtime) == {"fired": 1, "scheduled": 1}


def _catching(fn, errors):  # type: ignore[no-untyped-def]
    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    return run


def _rows(runtime, sql: str, **params):  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    with runtime.engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def _log(runtime):  # type: ignore[no-untyped-def]
    return _rows(runtime, "SELECT event_id, metadata, occurred_at FROM ozzy_outbox ORDER BY id")


def _logged(runtime, event_id):  # type: ignore[no-untyped-def]
    (row,) = _rows(runtime, "SELECT event_id, metadata, occurred_at FROM ozzy_outbox WHERE event_id = :id", id=event_id)
    return row
