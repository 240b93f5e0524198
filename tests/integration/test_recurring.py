"""Recurring jobs on PostgreSQL: each occurrence enters the log once however many relays run, the
missed-run policy at start, pause and resume."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from shared import Event, recurring
from shared.delivery import timers
from shared.delivery.relay import Relay
from shared.workflows.recurring import ensure_scheduled, pause, resume
from tests.integration.helpers import make_runtime, scalar


class Tick(Event, name="recurringtest.tick"):
    at: datetime


EVERY_SECOND = recurring(Tick, name="test.every_second", every=1)


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=[], poll_interval=3600.0)
    yield rt
    rt.close()


def ticks(runtime) -> list[datetime]:
    with runtime.engine.connect() as conn:
        return [datetime.fromisoformat(at) for (at,) in conn.exec_driver_sql(
            "SELECT payload->>'at' FROM ozzy_outbox WHERE event_type = 'recurringtest.tick' ORDER BY 1")]


def test_two_relays_record_each_occurrence_once(runtime) -> None:
    # Given two relays that both keep the job scheduled (as two `ozzy relay` processes do)
    others = [make_runtime(runtime.config, handlers=[], poll_interval=3600.0) for _ in range(2)]
    relays = [Relay(rt, after_fire=lambda rt=rt: ensure_scheduled(rt.engine, [EVERY_SECOND])) for rt in others]
    barrier = threading.Barrier(2)

    def first_schedule(rt) -> None:  # type: ignore[no-untyped-def]
        barrier.wait(10)
        ensure_scheduled(rt.engine, [EVERY_SECOND], at_start=True)

    threads = [threading.Thread(target=first_schedule, args=(rt,)) for rt in others]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for relay in relays:
            relay.start()
        # When four seconds pass
        time.sleep(4.5)
    finally:
        for relay in relays:
            relay.stop()
        for rt in others:
            rt.close()
    # Then the log holds one tick per second, none doubled, none skipped
    seen = ticks(runtime)
    assert len(seen) >= 3, seen
    assert all((b - a) == timedelta(seconds=1) for a, b in zip(seen, seen[1:])), seen
    assert scalar(runtime, "SELECT count(*) FROM ozzy_scheduled WHERE status = 'scheduled'") == 1
    # the one waiting is the next after the last that fired (it may be due by now: the relays stopped)
    waiting = scalar(runtime, "SELECT due_at FROM ozzy_scheduled WHERE status = 'scheduled'")
    assert waiting == seen[-1] + timedelta(seconds=1)
    assert scalar(runtime, "SELECT next_due_at FROM ozzy_recurring WHERE name = 'test.every_second'") == waiting
    assert sum(r.stats.timers_fired for r in relays) == len(seen)


def _overdue(runtime, job, minutes: int) -> None:
    """As if every relay had been down: the waiting occurrence is long past due."""
    ensure_scheduled(runtime.engine, [job])
    with runtime.engine.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE ozzy_scheduled SET due_at = due_at - interval '{minutes} minutes' WHERE status = 'scheduled'")


def test_missed_occurrences_run_once_at_start(runtime) -> None:
    job = recurring(Tick, name="test.hourly", every=timedelta(minutes=5), missed="run_once")
    _overdue(runtime, job, 60)
    assert ensure_scheduled(runtime.engine, [job], at_start=True) == 0
    assert timers.fire_due(runtime.engine) == 1
    assert ensure_scheduled(runtime.engine, [job]) == 1  # what the relay does after a fire
    assert len(ticks(runtime)) == 1
    assert scalar(runtime, "SELECT next_due_at > now() FROM ozzy_recurring WHERE name = 'test.hourly'")
    assert scalar(runtime, "SELECT last_due_at < now() - interval '50 minutes' FROM ozzy_recurring")


def test_missed_occurrences_are_skipped_when_declared_so(runtime) -> None:
    job = recurring(Tick, name="test.skipping", every=timedelta(minutes=5), missed="skip")
    _overdue(runtime, job, 60)
    assert ensure_scheduled(runtime.engine, [job], at_start=True) == 1
    assert timers.fire_due(runtime.engine) == 0 and ticks(runtime) == []
    assert scalar(runtime, "SELECT string_agg(status, ',' ORDER BY status) FROM ozzy_scheduled") == "cancelled,scheduled"


def test_pause_cancels_the_waiting_occurrence_and_resume_schedules_the_next(runtime) -> None:
    job = recurring(Tick, name="test.pausable", every=timedelta(minutes=5))
    ensure_scheduled(runtime.engine, [job])
    assert pause(runtime.engine, "test.pausable") and not pause(runtime.engine, "nope")
    assert ensure_scheduled(runtime.engine, [job]) == 0  # a paused job gets nothing
    assert scalar(runtime, "SELECT count(*) FROM ozzy_scheduled WHERE status = 'scheduled'") == 0
    assert resume(runtime.engine, "test.pausable", [job])
    assert scalar(runtime, "SELECT count(*) FROM ozzy_scheduled WHERE status = 'scheduled'") == 1
    assert scalar(runtime, "SELECT paused FROM ozzy_recurring") is False


def test_cron_jobs_occur_on_their_schedule() -> None:
    job = recurring(Tick, name="test.cron", cron="30 2 * * 1")  # Mondays 02:30 UTC
    monday = job.next_after(datetime(2026, 12, 1, tzinfo=timezone.utc))
    assert (monday.weekday(), monday.hour, monday.minute) == (0, 2, 30)
    assert job.next_after(monday) - monday == timedelta(days=7)
    assert job.occurrence(monday)[0] == job.occurrence(monday)[0]  # every relay derives the same id
