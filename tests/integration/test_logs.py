"""Logs a person can read: one line per handled event in development, one warning per retry and
the traceback once when dead, never an event's payload, no access-log line per static file."""

from __future__ import annotations

import logging
import uuid

from services.app import create_app
from shared import UnitOfWork, handles
from shared.delivery.relay import Relay
from tests.domain import Account, AccountOpened
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until

SECRET_OWNER = "Ada Secret-Lovelace"  # must never reach a log line


def test_failures_log_one_line_per_retry_and_the_traceback_once_without_the_payload(clean_db, caplog) -> None:
    @handles(AccountOpened, name="logtest.flaky", max_retries=2, min_backoff=10, max_backoff=20)
    def flaky(event: AccountOpened, uow: UnitOfWork) -> None:
        raise RuntimeError("downstream said no")

    runtime = make_runtime(clean_db, handlers=[flaky], worker_idle_ms=100)
    caplog.set_level(logging.DEBUG)
    try:
        with runtime.unit_of_work() as uow:
            uow.add(Account.open(SECRET_OWNER))
            uow.commit()
        with running_worker(runtime, threads=1):
            Relay(runtime).drain()
            wait_until(lambda: scalar(runtime, "SELECT status FROM ozzy_deliveries") == "dead")
    finally:
        runtime.close()
    mine = [r for r in caplog.records if r.name == "shared.delivery.worker"]
    retries = [r for r in mine if r.levelno == logging.WARNING]
    dead = [r for r in mine if r.levelno == logging.ERROR]
    assert len(retries) == 2 and all("will retry" in r.getMessage() for r in retries)
    assert "logtest.flaky failed on test.account_opened" in retries[0].getMessage()
    assert len(dead) == 1 and dead[0].exc_info is not None and "after attempt 3" in dead[0].getMessage()
    assert sum(1 for r in caplog.records if r.exc_info) == 1  # the traceback once
    assert not [r for r in caplog.records if SECRET_OWNER in r.getMessage()]


def test_a_handled_event_is_one_line_with_its_time_in_development(clean_db, caplog) -> None:
    runtime = make_runtime(clean_db, handlers=["test.welcome", "test.audit"], worker_idle_ms=100, dev=True)
    caplog.set_level(logging.INFO)
    try:
        with runtime.unit_of_work() as uow:
            uow.add(Account.open(SECRET_OWNER))
            uow.commit()
        relay = Relay(runtime)
        with running_worker(runtime, threads=1):
            wait_until(lambda: relay.drain() >= 0 and scalar(
                runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'") == 2)
    finally:
        runtime.close()
    handled = [r.getMessage() for r in caplog.records if "handled" in r.getMessage()]
    assert len(handled) == 2 and handled[0].startswith("test.welcome handled test.account_opened ")
    assert " ms, raised 1" in handled[0]
    assert not [r for r in caplog.records if SECRET_OWNER in r.getMessage()]


def test_static_files_are_not_access_logged(clean_db, caplog) -> None:
    runtime = make_runtime(clean_db, handlers=[])
    caplog.set_level(logging.INFO, logger="ozzy.access")
    try:
        client = create_app(runtime).test_client()
        static = client.get("/admin/static/bootstrap/bootstrap4/css/bootstrap.min.css")
        assert static.status_code == 200
        static.close()
        client.get(f"/loan-applications/{uuid.uuid4()}")
    finally:
        runtime.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "ozzy.access"]
    assert len(lines) == 1 and lines[0].startswith("GET /loan-applications/")
