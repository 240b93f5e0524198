"""shared.testing.pipeline: the real relay and handlers, synchronously, on PostgreSQL and Redis."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.loans.model import LoanApplication
from services.loans.use_cases import submit_application
from shared import PermanentError, UnitOfWork, handles
from shared.testing.pipeline import run_until_idle
from tests.domain import AccountOpened
from tests.integration.helpers import make_runtime, scalar

LOANS = ["loans.credit_check", "loans.decide", "loans.notify_approved", "loans.notify_rejected"]


def test_run_until_idle_relays_and_handles_the_whole_chain_once(clean_db) -> None:
    runtime = make_runtime(clean_db, handlers=LOANS)
    try:
        # Given two submitted applications
        with runtime.unit_of_work() as uow:
            ids = [submit_application(uow, "Ada", f"ada{n}@example.com", Decimal(500)) for n in range(2)]
        # When the pipeline runs until idle, in this process
        assert run_until_idle(runtime) == 6
        # Then both are decided and notified once, every delivery is done, nothing waits
        with runtime.unit_of_work() as uow:
            assert all(uow.get(LoanApplication, i).status in ("approved", "rejected") for i in ids)  # type: ignore[union-attr]
        assert scalar(runtime, "SELECT count(*) FROM loan_notifications") == 2
        assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status <> 'done'") == 0
        assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL") == 0
        assert run_until_idle(runtime) == 0
    finally:
        runtime.close()


def test_a_handler_error_is_recorded_dead_and_raised(clean_db) -> None:
    @handles(AccountOpened, name="kit.refuses")
    def refuses(event: AccountOpened, uow: UnitOfWork) -> None:
        raise PermanentError("refused")

    runtime = make_runtime(clean_db, handlers=[refuses])
    try:
        from tests.domain import Account

        with runtime.unit_of_work() as uow:
            uow.add(Account.open("ada"))
            uow.commit()
        with pytest.raises(PermanentError):
            run_until_idle(runtime)
        assert scalar(runtime, "SELECT status || ':' || dead_reason FROM ozzy_deliveries") == "dead:permanent_error"
        assert run_until_idle(runtime, raise_errors=False) == 0  # the message was taken: nothing left
    finally:
        runtime.close()
