"""Projections on the real PostgreSQL and Redis: fed in dispatch order, checkpoint with the writes,
rebuilt while the system runs, ending equal to a count from scratch."""

from __future__ import annotations

import dataclasses
import random
import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import text

from services.loans.model import LoanApplicationSubmitted, LoanApproved, LoanRejected, OfferAccepted, OfferExpired
from services.loans.stats import COLUMNS, KINDS, LoanStats, loan_stats
from shared.delivery.relay import Relay
from shared.model.stored import to_stored
from shared.outbox.write import write_events
from shared.projections import Applied, Projection, applies
from shared.projections.runner import Projector, rebuild, run_batch, status
from tests.integration.helpers import make_runtime, scalar, wait_until

DAY0 = datetime(2026, 11, 28, 22, 30, tzinfo=timezone.utc)


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=[])
    yield rt
    rt.close()


def _event(kind: str):  # type: ignore[no-untyped-def]
    app = uuid.uuid4()
    return {
        "submitted": lambda: LoanApplicationSubmitted(application_id=app, applicant_name="A", email="a@example.com",
                                                      amount=Decimal("100")),
        "approved": lambda: LoanApproved(application_id=app, amount=Decimal("100"), score=700),
        "rejected": lambda: LoanRejected(application_id=app, score=400, reason="score"),
        "accepted": lambda: OfferAccepted(application_id=app),
        "expired": lambda: OfferExpired(application_id=app),
    }[kind]()


def write_loan_events(runtime, n: int, rng: random.Random) -> None:
    """``n`` loan events of random kinds at random times over four days (across UTC midnights)."""
    stored = []
    for _ in range(n):
        s = to_stored(_event(rng.choice(COLUMNS)))
        stored.append(dataclasses.replace(s, occurred_at=DAY0 + timedelta(minutes=rng.randrange(4 * 24 * 60))))
    with runtime.session_factory() as session, session.begin():
        write_events(session, stored)


def counted_from_scratch(runtime) -> dict:
    """What loans.stats must say, counted straight from the event log."""
    days: dict[str, dict[str, int]] = {}
    with runtime.engine.connect() as conn:
        for day, kind, n in conn.execute(text(
            "SELECT (occurred_at AT TIME ZONE 'UTC')::date, event_type, count(*) FROM ozzy_outbox"
            " WHERE event_type = ANY(:types) GROUP BY 1, 2"), {"types": list(KINDS)}):
            days.setdefault(day.isoformat(), dict.fromkeys(COLUMNS, 0))[KINDS[kind]] = n
    return {"days": dict(sorted(days.items()))}


def shown(runtime) -> dict:
    with runtime.engine.connect() as conn:
        return loan_stats(conn)


def test_a_batch_applies_events_in_dispatch_order_with_its_checkpoint(runtime) -> None:
    # Given 300 loan events dispatched by the relay
    write_loan_events(runtime, 300, random.Random(1))
    Relay(runtime).drain()
    # When the projection runs batches of 120 until it is caught up
    projection = LoanStats()
    batches = [run_batch(runtime.engine, projection, 120)]
    while not batches[-1].caught_up:
        batches.append(run_batch(runtime.engine, projection, 120))
    # Then it took three batches, its checkpoint is the end of the log, and the counts match
    assert [b.applied for b in batches] == [120, 120, 60]
    assert batches[-1].position == scalar(runtime, "SELECT max(dispatch_seq) FROM ozzy_outbox")
    assert shown(runtime) == counted_from_scratch(runtime)
    # ... and running again applies nothing more
    again = run_batch(runtime.engine, projection, 120)
    assert again.applied == 0 and again.caught_up
    assert shown(runtime) == counted_from_scratch(runtime)


def test_a_failing_batch_is_rolled_back_and_retried_never_skipped(runtime) -> None:
    # Given a projection that fails on its 5th event, once
    seen: list[int] = []
    fail = {"left": 1}

    class Fussy(Projection, name="test.fussy"):
        @applies(LoanApplicationSubmitted, LoanApproved, LoanRejected, OfferAccepted, OfferExpired)
        def count(self, event, applied: Applied) -> None:  # type: ignore[no-untyped-def]
            if len(seen) == 4 and fail["left"]:
                fail["left"] -= 1
                raise RuntimeError("bug")
            seen.append(applied.position)

    write_loan_events(runtime, 10, random.Random(2))
    Relay(runtime).drain()
    # When it runs, fails, and runs again
    with pytest.raises(RuntimeError):
        run_batch(runtime.engine, Fussy(), 100)
    seen.clear()  # the failed batch was rolled back: nothing of it counts
    batch = run_batch(runtime.engine, Fussy(), 100)
    # Then every event was applied once, in dispatch order
    positions = [r[0] for r in _rows(runtime, "SELECT dispatch_seq FROM ozzy_outbox ORDER BY dispatch_seq")]
    assert seen == positions and batch.applied == 10


def _rows(runtime, sql: str) -> list:
    with runtime.engine.connect() as conn:
        return list(conn.execute(text(sql)))


def test_rebuild_during_live_traffic_ends_equal_to_a_count_from_scratch(runtime) -> None:
    # Given 3,000 loan events already projected by two live projectors (two relays), and a relay
    rng = random.Random(3)
    write_loan_events(runtime, 3000, rng)
    relay = Relay(runtime)
    relay.start()
    projectors = [Projector(runtime.engine, runtime.redis, runtime.config, [LoanStats()]) for _ in range(2)]
    for p in projectors:
        p.start()
    try:
        wait_until(lambda: status(runtime.engine)[0]["applied"] == 3000 if status(runtime.engine) else False, 60)
        # ... and a writer that keeps committing events while the projection is rebuilt
        stop = threading.Event()

        def traffic() -> None:
            writer_rng = random.Random(4)
            while not stop.is_set():
                write_loan_events(runtime, writer_rng.randrange(1, 20), writer_rng)
                runtime.wake_relays()
                stop.wait(0.005)

        writer = threading.Thread(target=traffic)
        writer.start()
        # When the projection is rebuilt in small batches while both go on
        progress: list[tuple[int, int]] = []
        try:
            rebuild(runtime.engine, LoanStats(), 200, progress=lambda p, e: progress.append((p, e)))
        finally:
            stop.set()
            writer.join()
        # Then once the relay and the live projectors have caught up, the numbers equal a count from scratch
        total = scalar(runtime, "SELECT count(*) FROM ozzy_outbox")
        assert total > 3000
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatch_seq IS NULL") == 0, 60)
        end = scalar(runtime, "SELECT max(dispatch_seq) FROM ozzy_outbox")
        wait_until(lambda: status(runtime.engine)[0]["position"] == end, 60)
        assert shown(runtime) == counted_from_scratch(runtime)
        assert status(runtime.engine)[0]["applied"] == total  # since the reset: every event once
        assert len(progress) >= 2 and progress[-1][0] >= progress[-1][1]  # the live ones took batches too
        assert status(runtime.engine)[0]["state"] == "live" and status(runtime.engine)[0]["lag"] == 0
    finally:
        for p in projectors:
            p.stop()
        relay.stop()


def test_a_live_projector_follows_the_log_as_events_are_dispatched(runtime) -> None:
    # Given a live projector and a relay
    relay = Relay(runtime)
    relay.start()
    projector = Projector(runtime.engine, runtime.redis, runtime.config, [LoanStats()])
    projector.start()
    try:
        # When events are written in several transactions
        rng = random.Random(5)
        for _ in range(5):
            write_loan_events(runtime, 40, rng)
            runtime.wake_relays()
        # Then the projection reaches them all, with no lag left
        wait_until(lambda: shown(runtime) == counted_from_scratch(runtime) and sum(
            sum(d.values()) for d in shown(runtime)["days"].values()) == 200, 30)
        wait_until(lambda: status(runtime.engine)[0]["lag"] == 0, 30)
    finally:
        projector.stop()
        relay.stop()


@pytest.fixture
def cli_env(monkeypatch, clean_db) -> None:
    monkeypatch.setenv("DATABASE_URL", clean_db.database_url)
    monkeypatch.setenv("REDIS_URL", clean_db.redis_url)
    monkeypatch.setenv("OZZY_REDIS_NAMESPACE", clean_db.redis_namespace)
    monkeypatch.setenv("OZZY_HANDLER_MODULES", '["workers.handlers.projections"]')


def test_the_cli_rebuilds_a_projection_and_shows_its_status(runtime, cli_env) -> None:
    import json

    from click.testing import CliRunner

    from shared.cli import main

    # Given 700 dispatched loan events and a projection that counted some of them wrongly
    write_loan_events(runtime, 700, random.Random(6))
    Relay(runtime).drain()
    run_batch(runtime.engine, LoanStats(), 1000)
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE loan_stats_days SET submitted = submitted + 1000"))
    assert shown(runtime) != counted_from_scratch(runtime)
    # When it is rebuilt from the command line
    result = CliRunner().invoke(main, ["projections", "rebuild", "loans.stats", "--batch-size", "100"])
    # Then the numbers are right again, and the status shows it live at the end of the log
    assert result.exit_code == 0, result.output
    assert "loans.stats rebuilt: 700 events applied" in result.output
    assert shown(runtime) == counted_from_scratch(runtime)
    listed = CliRunner().invoke(main, ["projections", "status", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    assert row["name"] == "loans.stats" and row["state"] == "live" and row["lag"] == 0 and row["applied"] == 700
    # ... and an unknown name is refused with the known ones
    wrong = CliRunner().invoke(main, ["projections", "rebuild", "loans.stat"])
    assert wrong.exit_code == 2 and "loans.stats" in wrong.output


def test_get_loan_stats_shows_the_projection(runtime) -> None:
    from services.app import create_app

    write_loan_events(runtime, 50, random.Random(7))
    Relay(runtime).drain()
    run_batch(runtime.engine, LoanStats(), 1000)
    body = create_app(runtime).test_client().get("/loan-stats").get_json()
    assert body == counted_from_scratch(runtime)
    day = next(iter(body["days"].values()))
    assert set(day) == {"submitted", "approved", "rejected", "accepted", "expired"}
    assert sum(sum(d.values()) for d in body["days"].values()) == 50
