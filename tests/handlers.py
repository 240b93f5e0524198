"""Handlers for the framework's own tests. Loaded by tests and by e2e processes
(``OZZY_HANDLER_MODULES=tests.handlers``)."""

from __future__ import annotations

import os
from decimal import Decimal

from shared import UnitOfWork, handles
from tests.domain import AccountOpened, DepositAudited, Deposited, SideEffect


@handles(AccountOpened, name="test.welcome", min_backoff=50, max_backoff=200)
def welcome(event: AccountOpened, uow: UnitOfWork) -> None:
    """Effect once per opened account; the first link of a chain (raises DepositAudited)."""
    uow.add(SideEffect(handler="welcome", event_key=str(event.account_id), account_id=event.account_id))
    uow.publish(DepositAudited(account_id=event.account_id, amount=Decimal("0")))


@handles(DepositAudited, name="test.audit", min_backoff=50, max_backoff=200)
def audit(event: DepositAudited, uow: UnitOfWork) -> None:
    """The second link of the chain."""
    uow.add(SideEffect(handler="audit", event_key=str(event.account_id), account_id=event.account_id))


@handles(Deposited, name="test.count_deposit", min_backoff=50, max_backoff=200)
def count_deposit(event: Deposited, uow: UnitOfWork) -> None:
    uow.add(SideEffect(handler="count_deposit", event_key=str(event.account_id), account_id=event.account_id))
    delay = float(os.environ.get("OZZY_TEST_HANDLER_DELAY", "0"))
    if delay:
        import time

        time.sleep(delay)
