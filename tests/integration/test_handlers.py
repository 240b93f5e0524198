"""Handlers on the real PostgreSQL and Redis: once per (event, handler), retried, chained."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal

import pytest

from shared import PermanentError, UnitOfWork, handles
from shared.model.stored import StoredEvent
from shared.delivery.relay import Relay
from shared.delivery.worker import run_handler
from tests.domain import Account, AccountOpened, DepositAudited, SideEffect
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=["test.welcome", "test.audit"], worker_idle_ms=200)
    yield rt
    rt.close()


def opened(runtime, owner: str = "ada") -> StoredEvent:
    with runtime.unit_of_work() as uow:
        uow.add(Account.open(owner))
        (stored,) = uow.commit()
    return stored


def effects(runtime, handler: str) -> int:
    return scalar(runtime, "SELECT count(*) FROM test_side_effects WHERE handler = :h", h=handler)


def test_the_same_message_delivered_twice_changes_state_once(runtime) -> None:
    stored = opened(runtime)
    spec = runtime.handlers["test.welcome"]
    assert run_handler(runtime, spec, stored) is True
    assert run_handler(runtime, spec, stored) is False
    assert effects(runtime, "welcome") == 1
    assert scalar(runtime, "SELECT attempts FROM ozzy_deliveries WHERE handler = 'test.welcome'") == 1


def test_concurrent_duplicates_run_the_handler_once(runtime) -> None:
    # Given eight threads delivering the same message at the same moment
    stored = opened(runtime)
    spec = runtime.handlers["test.welcome"]
    results: list[bool] = []
    gate = threading.Barrier(8, timeout=30)

    def deliver() -> None:
        gate.wait()
        results.append(run_handler(runtime, spec, stored))

    threads = [threading.Thread(target=deliver, daemon=True) for _ in range(8)]
    try:
        for t in threads:
            t.start()
    finally:
        for t in threads:
            if t.ident is not None:
                t.join(60)
    assert not any(t.is_alive() for t in threads), "a delivery is still running after a minute"
    # Then exactly one ran; the others waited on the inbox row and skipped
    assert sorted(results) == [False] * 7 + [True]
    assert effects(runtime, "welcome") == 1


def test_a_handlers_events_are_caused_by_the_event_it_handles(runtime) -> None:
    stored = opened(runtime)
    run_handler(runtime, runtime.handlers["test.welcome"], stored)
    with runtime.engine.connect() as conn:
        child = conn.exec_driver_sql(
            "SELECT correlation_id, causation_id FROM ozzy_outbox WHERE event_type = 'test.deposit_audited'"
        ).one()
    assert child.causation_id == stored.event_id
    assert child.correlation_id == stored.correlation_id


def test_a_handler_whose_events_fail_to_commit_saves_nothing_and_runs_again(runtime, monkeypatch) -> None:
    # Given a handler that raises an event, whose id will already be in the log at commit
    import shared.model.stored
    from sqlalchemy.exc import IntegrityError

    stored = opened(runtime)
    spec = runtime.handlers["test.welcome"]
    monkeypatch.setattr(shared.model.stored, "new_event_id", lambda: stored.event_id)
    # When it runs, its outbox INSERT fails together with the COMMIT it travels with
    with pytest.raises(IntegrityError):
        run_handler(runtime, spec, stored)
    # Then neither its effect nor its inbox row was saved, so the next delivery runs it, once
    assert effects(runtime, "welcome") == 0
    assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'") == 0
    monkeypatch.undo()
    assert run_handler(runtime, spec, stored) is True
    assert run_handler(runtime, spec, stored) is False
    assert effects(runtime, "welcome") == 1
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE causation_id = :id", id=stored.event_id) == 1


def test_relay_and_worker_complete_a_chain_of_two_handlers(runtime) -> None:
    # Given a relay and a worker running in this process
    relay = Relay(runtime)
    relay.start()
    try:
        with running_worker(runtime):
            # When 50 accounts are opened
            for i in range(50):
                opened(runtime, f"chain-{i}")
            # Then each is welcomed, the welcome's event is audited, each once
            wait_until(lambda: effects(runtime, "audit") >= 50)
    finally:
        relay.stop()
    assert effects(runtime, "welcome") == 50
    assert effects(runtime, "audit") == 50
    assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'") == 100
    assert relay.stats.drains_by_notify > 0


def test_a_failing_handler_is_retried_then_succeeds_and_its_failed_attempts_rolled_back(clean_db) -> None:
    calls: list[int] = []

    @handles(AccountOpened, name="test.flaky", min_backoff=10, max_backoff=20, max_retries=5)
    def flaky(event: AccountOpened, uow: UnitOfWork) -> None:
        calls.append(1)
        uow.add(SideEffect(handler="flaky", event_key=str(event.account_id)))
        if len(calls) < 3:
            raise RuntimeError(f"transient failure {len(calls)}")

    runtime = make_runtime(clean_db, handlers=[flaky], worker_idle_ms=100)
    relay = Relay(runtime)
    try:
        with running_worker(runtime, threads=1):
            opened(runtime)
            relay.drain()
            wait_until(lambda: scalar(runtime, "SELECT status FROM ozzy_deliveries") == "done")
        assert len(calls) == 3
        assert effects(runtime, "flaky") == 1  # the two failed attempts left nothing behind
        row = _delivery(runtime)
        assert row.attempts == 3 and "transient failure 2" in row.last_error
    finally:
        runtime.close()


def test_exhausted_retries_and_permanent_errors_end_dead_in_postgresql(clean_db) -> None:
    @handles(AccountOpened, name="test.always_fails", min_backoff=10, max_backoff=20, max_retries=2)
    def always_fails(event: AccountOpened, uow: UnitOfWork) -> None:
        raise RuntimeError("still broken")

    @handles(DepositAudited, name="test.refuses", max_retries=5)
    def refuses(event: DepositAudited, uow: UnitOfWork) -> None:
        raise PermanentError("this can never work")

    runtime = make_runtime(clean_db, handlers=[always_fails, refuses], worker_idle_ms=100)
    try:
        with running_worker(runtime, threads=2):
            opened(runtime)
            with runtime.unit_of_work() as uow:
                uow.publish(DepositAudited(account_id=uuid.uuid4(), amount=Decimal(1)))
                uow.commit()
            Relay(runtime).drain()
            wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'") == 2)
        rows = {r.handler: r for r in _deliveries(runtime)}
        assert rows["test.always_fails"].attempts == 3  # the first try and two retries
        assert "still broken" in rows["test.always_fails"].last_error
        assert rows["test.refuses"].attempts == 1  # no retry for a permanent error
        assert "PermanentError" in rows["test.refuses"].last_error
    finally:
        runtime.close()


def _deliveries(runtime):
    with runtime.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT * FROM ozzy_deliveries").all()


def _delivery(runtime):
    (row,) = _deliveries(runtime)
    return row


def _kill_other_connections(runtime) -> int:
    """Terminate every other session of the test database (the pool's idle connections)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    killer = create_engine(runtime.engine.url, poolclass=NullPool)
    try:
        with killer.connect() as conn:
            return len(conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()")).all())
    finally:
        killer.dispose()


def test_a_killed_connection_is_retried_without_a_pre_ping_and_the_handler_runs_once(runtime, caplog) -> None:
    from shared.delivery.worker import actor_function

    # Given a worker that handled an event, its pooled connection then killed by the server
    spec = runtime.handlers["test.welcome"]
    handle = actor_function(runtime, spec)
    first, second = opened(runtime, "ada"), opened(runtime, "bob")
    handle(first.to_message())
    assert _kill_other_connections(runtime) >= 1
    # When the next event comes: no ping on the worker's checkout, so the dead connection fails it
    with caplog.at_level("WARNING", logger="shared.delivery.worker"):
        handle(second.to_message())
    # Then it was retried as "database unavailable" (no retry budget spent) and ran once
    assert any("database unavailable" in r.getMessage() for r in caplog.records), caplog.text
    assert effects(runtime, "welcome") == 2
    assert scalar(runtime, "SELECT max(attempts) FROM ozzy_deliveries WHERE handler = 'test.welcome'") == 1
    # And a checkout elsewhere in the process is still pinged: a killed connection is replaced silently
    assert _kill_other_connections(runtime) >= 1
    assert scalar(runtime, "SELECT 1") == 1
