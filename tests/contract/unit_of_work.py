"""The unit-of-work contract: one set of tests that both adapters pass, the in-memory one
(``tests/unit/test_unit_of_work_memory.py``) and PostgreSQL's (``tests/integration/
test_unit_of_work_contract.py``). Each test module provides a ``new_uow`` fixture: a function
that opens a new unit of work on one shared store, as separate requests would."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from shared import ConcurrencyError, UnitOfWork, causal_context
from tests.domain import Account, AccountOpened, Deposited, DepositAudited, SideEffect

NewUow = Callable[[], UnitOfWork]


def _open(new_uow: NewUow, owner: str = "ada") -> uuid.UUID:
    with new_uow() as uow:
        account = Account.open(owner)
        uow.add(account)
        uow.commit()
        return account.id


def test_a_commit_saves_state_and_its_events_together(new_uow: NewUow) -> None:
    # Given a new account, When it is committed
    with new_uow() as uow:
        account = Account.open("ada")
        uow.add(account)
        written = uow.commit()
    # Then another unit of work sees it, and its event carries the aggregate's identity
    with new_uow() as uow:
        loaded = uow.get(Account, account.id)
        assert loaded is not None and loaded.owner == "ada" and loaded.version == 1
    assert [s.type for s in written] == ["test.account_opened"]
    assert written[0].aggregate_type == "test_accounts" and written[0].aggregate_id == str(account.id)
    assert written[0].payload == {"account_id": str(account.id), "owner": "ada"}


def test_what_is_not_committed_is_not_saved(new_uow: NewUow) -> None:
    with new_uow() as uow:
        account = Account.open("ada")
        uow.add(account)  # and the block ends without a commit
    with new_uow() as uow:
        assert uow.get(Account, account.id) is None


def test_a_rollback_forgets_changes_and_events(new_uow: NewUow) -> None:
    account_id = _open(new_uow)
    with new_uow() as uow:
        account = uow.get(Account, account_id)
        assert account is not None
        account.deposit(Decimal(10), datetime.now(timezone.utc))
        uow.publish(DepositAudited(account_id=account_id, amount=Decimal(10)))
        uow.rollback()
        assert uow.commit() == []
    with new_uow() as uow:
        loaded = uow.get(Account, account_id)
        assert loaded is not None and loaded.balance == 0 and loaded.version == 1


def test_events_keep_the_order_they_were_recorded_in_across_aggregates(new_uow: NewUow) -> None:
    first, second = _open(new_uow, "a"), _open(new_uow, "b")
    with new_uow() as uow:
        a, b = uow.get(Account, first), uow.get(Account, second)
        assert a is not None and b is not None
        now = datetime.now(timezone.utc)
        b.deposit(Decimal(1), now)
        uow.publish(DepositAudited(account_id=first, amount=Decimal(0)))
        a.deposit(Decimal(2), now)
        written = uow.commit()
    assert [(s.type, s.aggregate_id) for s in written] == [
        ("test.deposited", str(second)), ("test.deposit_audited", None), ("test.deposited", str(first))
    ]


def test_each_commit_that_changes_an_aggregate_counts_one_version(new_uow: NewUow) -> None:
    account_id = _open(new_uow)
    with new_uow() as uow:
        account = uow.get(Account, account_id)
        assert account is not None
        account.deposit(Decimal(1), datetime.now(timezone.utc))
        account.deposit(Decimal(2), datetime.now(timezone.utc))
        uow.commit()
        account.owner = "ada l."  # a change without an event counts too
        uow.commit()
    with new_uow() as uow:
        loaded = uow.get(Account, account_id)
        assert loaded is not None and (loaded.version, loaded.balance, loaded.owner) == (3, Decimal(3), "ada l.")


def test_a_concurrent_change_loses_nothing_the_second_commit_fails_whole(new_uow: NewUow) -> None:
    account_id = _open(new_uow)
    first, second = new_uow(), new_uow()
    try:
        a, b = first.get(Account, account_id), second.get(Account, account_id)
        assert a is not None and b is not None
        a.deposit(Decimal(5), datetime.now(timezone.utc))
        first.commit()
        b.deposit(Decimal(7), datetime.now(timezone.utc))
        with pytest.raises(ConcurrencyError):
            second.commit()
    finally:
        first.close()
        second.close()
    with new_uow() as uow:
        loaded = uow.get(Account, account_id)
        assert loaded is not None and loaded.balance == 5 and loaded.version == 2


def test_all_filters_by_equal_attributes_in_primary_key_order(new_uow: NewUow) -> None:
    account_id = _open(new_uow)
    with new_uow() as uow:
        for key in ("b", "a", "c"):
            uow.add(SideEffect(handler="contract", event_key=key, account_id=account_id))
        uow.add(SideEffect(handler="other", event_key="z", account_id=account_id))
        uow.commit()
    with new_uow() as uow:
        found = uow.all(SideEffect, handler="contract", account_id=account_id)
        assert [e.event_key for e in found] == ["b", "a", "c"]
        assert [e.id for e in found] == sorted(e.id for e in found)


def test_published_events_and_their_causal_metadata(new_uow: NewUow) -> None:
    correlation, cause = uuid.uuid4(), uuid.uuid4()
    with new_uow() as uow, causal_context(correlation_id=correlation, causation_id=cause, actor="op"):
        uow.publish(AccountOpened(account_id=uuid.uuid4(), owner="x"))
        (stored,) = uow.commit()
    assert stored.aggregate_type is None and stored.correlation_id == correlation
    assert stored.metadata == {"correlation_id": str(correlation), "causation_id": str(cause), "actor": "op"}
    assert uow.written == [stored]


def test_an_event_written_outside_any_context_starts_its_own_correlation(new_uow: NewUow) -> None:
    with new_uow() as uow:
        uow.publish(Deposited.model_validate(
            {"account_id": uuid.uuid4(), "money": {"amount": "1", "currency": "EUR"}, "at": datetime.now(timezone.utc)}
        ))
        (stored,) = uow.commit()
    assert stored.correlation_id == stored.event_id and stored.causation_id is None
