"""Handlers for the framework's own tests. Loaded by tests and by e2e processes
(``OZZY_HANDLER_MODULES=tests.handlers``)."""

from __future__ import annotations

import os
import time
from decimal import Decimal

from shared import UnitOfWork, handles
from tests.domain import AccountOpened, DepositAudited, Deposited, SideEffect


@handles(AccountOpened, name="test.welcome", min_backoff=50, max_backoff=200)
def welcome(event: AccountOpened, uow: UnitOfWork) -> None:
    """Effect once per opened account; the first link of a chain (raises DepositAudited)."""
    _count_start(str(event.account_id))
    uow.add(SideEffect(handler="welcome", event_key=str(event.account_id), account_id=event.account_id))
    uow.publish(DepositAudited(account_id=event.account_id, amount=Decimal("0")))
    _maybe_slow("OZZY_TEST_WELCOME_DELAY")


@handles(DepositAudited, name="test.audit", min_backoff=50, max_backoff=200)
def audit(event: DepositAudited, uow: UnitOfWork) -> None:
    """The second link of the chain."""
    uow.add(SideEffect(handler="audit", event_key=str(event.account_id), account_id=event.account_id))


@handles(Deposited, name="test.count_deposit", min_backoff=50, max_backoff=200)
def count_deposit(event: Deposited, uow: UnitOfWork) -> None:
    uow.add(SideEffect(handler="count_deposit", event_key=str(event.account_id), account_id=event.account_id))


def _count_start(key: str) -> None:
    """Fault tests count handler starts outside the transaction (in Redis) to see duplicates."""
    if os.environ.get("OZZY_TEST_COUNT_STARTS") == "1":
        import redis

        namespace = os.environ["OZZY_REDIS_NAMESPACE"]
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        client.hincrby(f"{namespace}:test:welcome-starts", key, 1)
        client.close()


def _maybe_slow(variable: str) -> None:
    """Fault tests make a handler slow to kill its worker in the middle of it."""
    delay = float(os.environ.get(variable, "0"))
    if delay and _chosen(variable):
        time.sleep(delay)


_slowed: list[int] = []


def _chosen(variable: str) -> bool:
    """With ``<variable>_IN_BATCH=1`` only one delivery is slow: the first to run in a batch after
    others, whose effects then wait for its COMMIT (shared/delivery/batching.py)."""
    if os.environ.get(f"{variable}_IN_BATCH") != "1":
        return True
    from shared.delivery import batching

    batch = batching.current()
    if _slowed or batch is None or not batch.pending:
        return False
    _slowed.append(1)
    return True
