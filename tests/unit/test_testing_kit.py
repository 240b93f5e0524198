"""shared.testing: handlers run on the in-memory store as a worker runs them on PostgreSQL."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from shared import EventDecodeError, PermanentError, UnitOfWork, handles
from shared.model.stored import to_stored
from shared.testing import InMemoryStore
from tests.domain import Account, AccountOpened, DepositAudited, SideEffect
from tests.handlers import audit, welcome


def _opened(store: InMemoryStore) -> uuid.UUID:
    with store.unit_of_work() as uow:
        account = Account.open("ada")
        uow.add(account)
        uow.commit()
    return account.id


def test_a_handler_changes_state_and_raises_events_caused_by_the_one_it_handles() -> None:
    # Given an opened account's event
    store = InMemoryStore()
    account_id = _opened(store)
    (opened,) = store.log
    # When the welcome handler handles it
    raised = store.handle(welcome, opened)
    # Then its effect is saved, and the event it raised is in the log, caused by the first
    assert [e.event_key for e in store.all(SideEffect, handler="welcome")] == [str(account_id)]
    assert raised == [DepositAudited(account_id=account_id, amount=Decimal("0"))]
    assert store.log[-1].causation_id == opened.event_id and store.log[-1].correlation_id == opened.correlation_id


def test_each_event_is_handled_once_per_handler_however_often_it_is_delivered() -> None:
    store = InMemoryStore()
    _opened(store)
    (opened,) = store.log
    store.handle(welcome, opened)
    assert store.handle(welcome, opened) == []  # the inbox: a duplicate delivery changes nothing
    assert len(store.all(SideEffect)) == 1 and len(store.log) == 2


def test_run_until_idle_follows_the_chain_of_events_to_its_end() -> None:
    store = InMemoryStore()
    ids = [_opened(store) for _ in range(3)]
    # When every handler runs until nothing is left
    assert store.run_until_idle([welcome, audit]) == 6
    # Then each account was welcomed, and each welcome's event audited, once
    assert sorted(e.event_key for e in store.all(SideEffect, handler="audit")) == sorted(map(str, ids))
    assert store.run_until_idle([welcome, audit]) == 0
    assert [type(e).__name__ for e in store.events(DepositAudited)] == ["DepositAudited"] * 3


def test_a_failing_handler_saves_nothing_and_its_error_reaches_the_test() -> None:
    @handles(AccountOpened, name="kit.refuses")
    def refuses(event: AccountOpened, uow: UnitOfWork) -> None:
        uow.add(SideEffect(handler="refuses", event_key="x"))
        uow.publish(DepositAudited(account_id=event.account_id, amount=Decimal(1)))
        raise PermanentError("no")

    store = InMemoryStore()
    _opened(store)
    with pytest.raises(PermanentError):
        store.run_until_idle([refuses])
    assert store.all(SideEffect) == [] and len(store.log) == 1
    assert not store.done  # not done: a retry would run it again


def test_an_event_whose_payload_does_not_survive_storage_fails_as_in_production() -> None:
    store = InMemoryStore()
    bad = to_stored(AccountOpened(account_id=uuid.uuid4(), owner="x"))
    object.__setattr__(bad, "payload", {"account_id": "not-a-uuid", "owner": "x"})
    with pytest.raises(EventDecodeError):
        store.handle(welcome, bad)


def test_scheduled_events_wait_until_the_test_moves_the_clock_and_fire_once() -> None:
    store = InMemoryStore()
    account_id = uuid.uuid4()
    with store.unit_of_work() as uow:
        uow.schedule(AccountOpened(account_id=account_id, owner="later"), after=60, key="welcome-later")
        cancelled = uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner="never"), after=30)
        uow.commit()
    with store.unit_of_work() as uow:
        uow.cancel_scheduled(cancelled)
        uow.commit()
    assert [e.owner for _, e in store.scheduled()] == ["later"]  # type: ignore[attr-defined]
    assert store.advance(59) == 0 and store.log == []
    assert store.advance(1) == 1
    (fired,) = store.log
    assert fired.metadata["due_at"] and store.scheduled() == []
    assert store.advance(3600) == 0
    assert store.run_until_idle([welcome]) == 1


def test_a_key_names_one_waiting_event_and_a_rollback_schedules_nothing() -> None:
    from shared import OzzyError

    store = InMemoryStore()
    with store.unit_of_work() as uow:
        uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner="a"), after=10, key="k")
        uow.commit()
    with pytest.raises(OzzyError), store.unit_of_work() as uow:
        uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner="b"), after=10, key="k")
        uow.commit()
    with store.unit_of_work() as uow:
        uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner="c"), after=5, key="k", replace=True)
        uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner="d"), after=1)
        uow.rollback()
        uow.commit()
    assert [e.owner for _, e in store.scheduled()] == ["a"]  # type: ignore[attr-defined]
    with store.unit_of_work() as uow:
        uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner="c"), after=5, key="k", replace=True)
        uow.commit()
    assert [e.owner for _, e in store.scheduled()] == ["c"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        store.unit_of_work().schedule(AccountOpened(account_id=uuid.uuid4(), owner="x"))
