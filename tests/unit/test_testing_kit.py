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
