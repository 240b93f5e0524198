"""Poison data, dead letters and lost messages, on the real PostgreSQL and Redis, in one process."""

from __future__ import annotations

import dataclasses
import sys
import types
import uuid
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from shared import Event, UnitOfWork, handles
from shared.cli import main
from shared.model.events import forget_event_type
from shared.model.stored import to_stored
from shared.delivery.relay import Relay
from shared.delivery.recovery import redeliver_stale
from shared.outbox.write import write_events
from tests.domain import Account, AccountOpened, SideEffect
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until


def open_accounts(runtime, n: int) -> None:
    with runtime.unit_of_work() as uow:
        for i in range(n):
            uow.add(Account.open(f"owner-{i}"))
        uow.commit()


def raw_event(runtime, type_name: str, payload: dict) -> uuid.UUID:
    """An outbox row written by some other code version: any type, any payload."""
    stored = dataclasses.replace(
        to_stored(AccountOpened(account_id=uuid.uuid4(), owner="x")), type=type_name, payload=payload
    )
    with runtime.session_factory() as session:
        write_events(session, [stored])
        session.commit()
    return stored.event_id


def after_a_drain(relay: Relay, check: Callable[[], bool]) -> Callable[[], bool]:
    """A ``wait_until`` predicate that drains the outbox (the handlers' own events wait there for a
    relay), then checks."""

    def predicate() -> bool:
        relay.drain()
        return check()

    return predicate


def effects(runtime, handler: str) -> int:
    return scalar(runtime, "SELECT count(*) FROM test_side_effects WHERE handler = :h", h=handler)


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=["test.welcome", "test.audit"], worker_idle_ms=100)
    yield rt
    rt.close()


def test_an_unknown_event_type_is_parked_the_rest_flows_and_a_later_version_sends_it(runtime) -> None:
    # Given a row of a type this code does not know, between good events
    open_accounts(runtime, 10)
    unknown = raw_event(runtime, "test.from_the_future", {"account_id": str(uuid.uuid4()), "owner": "z"})
    open_accounts(runtime, 10)
    relay = Relay(runtime)
    # When the relay drains, the good events are dispatched and the unknown one parked, with a reason
    assert relay.drain() == 21
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL") == 20
    assert "unknown event type 'test.from_the_future'" in scalar(
        runtime, "SELECT park_reason FROM ozzy_outbox WHERE event_id = :id", id=unknown
    )
    assert relay.drain() == 0  # parked rows are not claimed again and again
    # Then once a deploy brings the type (and a handler), the relay unparks and sends it
    class FromTheFuture(Event, name="test.from_the_future"):
        account_id: uuid.UUID
        owner: str

    @handles(FromTheFuture, name="test.future_handler")
    def future_handler(event: FromTheFuture, uow: UnitOfWork) -> None:
        uow.add(SideEffect(handler="future", event_key=str(event.account_id)))

    newer = make_runtime(runtime.config, handlers=[future_handler], worker_idle_ms=100)
    try:
        newer_relay = Relay(newer)
        assert newer_relay.unpark_known() == 1
        with running_worker(newer):
            assert newer_relay.drain() == 1
            wait_until(lambda: effects(newer, "future") == 1)
        assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE parked_at IS NOT NULL") == 0
        assert scalar(runtime, "SELECT dispatched_at IS NOT NULL FROM ozzy_outbox WHERE event_id = :id", id=unknown)
    finally:
        newer.close()
        forget_event_type("test.from_the_future")


def test_a_payload_that_no_longer_validates_is_dead_with_its_reason_and_the_rest_complete(runtime) -> None:
    poison = raw_event(runtime, "test.account_opened", {"account_id": "not-a-uuid", "owner": 5})
    open_accounts(runtime, 30)
    relay = Relay(runtime)
    with running_worker(runtime):
        wait_until(after_a_drain(relay, lambda: effects(runtime, "audit") == 30 and _dead(runtime) == 1))
    row = _delivery(runtime, poison)
    assert (row.status, row.dead_reason, row.attempts) == ("dead", "invalid_payload", 1)
    assert "EventDecodeError" in row.last_error and row.first_failed_at and row.last_failed_at
    assert effects(runtime, "welcome") == 30


def test_dead_letters_are_listed_and_retried_by_cli_with_a_fresh_budget(clean_db, monkeypatch) -> None:
    broken = {"on": True}

    @handles(AccountOpened, name="test.sometimes", max_retries=1, min_backoff=10, max_backoff=20)
    def sometimes(event: AccountOpened, uow: UnitOfWork) -> None:
        if broken["on"]:
            raise RuntimeError("downstream is down")
        uow.add(SideEffect(handler="sometimes", event_key=str(event.account_id)))

    runtime = make_runtime(clean_db, handlers=[sometimes], worker_idle_ms=100)
    try:
        with running_worker(runtime):
            open_accounts(runtime, 3)
            Relay(runtime).drain()
            wait_until(lambda: _dead(runtime) == 3)
            # The CLI lists them with their reason and attempts (the CLI runs in this process;
            # the module it is told to load holds the handler declared above)
            module = sys.modules["cli_handlers"] = types.ModuleType("cli_handlers")
            module.sometimes = sometimes  # type: ignore[attr-defined]
            _env(monkeypatch, clean_db, modules='["cli_handlers"]')
            listed = CliRunner().invoke(main, ["deadletters", "list", "--handler", "test.sometimes"])
            assert listed.exit_code == 0, listed.output
            assert listed.output.count("retries_exhausted") == 3 and "attempts=2" in listed.output
            # The CLI refuses to retry without saying which (a usage error), and retries nothing
            refused = CliRunner().invoke(main, ["deadletters", "retry"])
            assert (refused.exit_code, refused.exception is None or isinstance(refused.exception, SystemExit)) == (2, True)
            assert "say which" in refused.output
            assert _dead(runtime) == 3
            # When the cause is fixed and they are retried, they complete and are dead no more
            broken["on"] = False
            retried = CliRunner().invoke(main, ["deadletters", "retry", "--handler", "test.sometimes"])
            assert retried.exit_code == 0 and "3 dead deliveries enqueued again" in retried.output
            wait_until(lambda: effects(runtime, "sometimes") == 3)
        assert _dead(runtime) == 0
        assert scalar(runtime, "SELECT min(attempts) FROM ozzy_deliveries") == 3
    finally:
        sys.modules.pop("cli_handlers", None)
        runtime.close()


def test_deliveries_that_redis_forgot_are_enqueued_again_and_handled_once(runtime) -> None:
    # Given 200 dispatched events whose messages were lost (Redis restarted empty)
    open_accounts(runtime, 200)
    Relay(runtime).drain()
    _flush_namespace(runtime)
    # When the sweep runs after the redelivery delay
    assert redeliver_stale(runtime, older_than=3600) == 0  # not stale yet
    sent = redeliver_stale(runtime, older_than=0, limit=1000)
    assert sent == 200
    # Then a worker handles each exactly once, and the chain continues
    with running_worker(runtime):
        relay = Relay(runtime)
        wait_until(after_a_drain(relay, lambda: effects(runtime, "audit") == 200))
    assert effects(runtime, "welcome") == 200
    # And a sweep while Redis still holds the messages does not double the queue
    open_accounts(runtime, 50)
    Relay(runtime).drain()
    assert redeliver_stale(runtime, older_than=0, limit=1000) == 0


def _flush_namespace(runtime) -> None:
    keys = list(runtime.redis.scan_iter(f"{runtime.config.redis_namespace}:*"))
    if keys:
        runtime.redis.delete(*keys)


def _env(monkeypatch, settings, modules: str = "[]") -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("OZZY_REDIS_NAMESPACE", settings.redis_namespace)
    monkeypatch.setenv("OZZY_HANDLER_MODULES", modules)


def _dead(runtime) -> int:
    return scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'")


def _delivery(runtime, event_id):
    with runtime.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT * FROM ozzy_deliveries WHERE event_id = %s", (event_id,)).one()
