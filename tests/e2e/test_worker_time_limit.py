"""``ozzy worker`` enforces the handler time limit (OZZY_TIME_LIMIT_MS): a handler that runs past it
is interrupted and its delivery recorded as failed, then retried or dead, as Dramatiq's TimeLimit
promises. Dramatiq starts that watchdog on its process-boot hook, which the worker must emit."""

from __future__ import annotations

import pytest

from tests.e2e.faults import (
    fault_env,
    redis_server,  # noqa: F401 (fixture)
    settings,  # noqa: F401 (fixture)
    writer,
)
from tests.e2e.procs import ozzy_processes
from tests.domain import Account
from tests.integration.helpers import scalar, wait_until

pytestmark = pytest.mark.fault


def test_a_handler_past_its_time_limit_is_interrupted_and_recorded(settings, redis_server) -> None:  # noqa: F811
    w = writer(settings)
    # Every welcome sleeps 3 s, the limit is 0.5 s, and one failure is final.
    env = fault_env(settings, OZZY_TIME_LIMIT_MS="500", OZZY_MAX_RETRIES="0", OZZY_TEST_WELCOME_DELAY="3")
    try:
        with w.unit_of_work() as uow:
            uow.add(Account.open("slow"))
            uow.commit()
        with ozzy_processes(env, ["relay"], ["worker", "--threads", "1"]):
            wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_deliveries WHERE handler = 'test.welcome'"
                                         " AND status NOT IN ('pending', 'running')") == 1, timeout=60)
        status, error = _delivery(w)
        assert status == "dead", (status, error)
        assert "TimeLimitExceeded" in (error or ""), error
        # Its effects were rolled back with the interrupted transaction
        assert scalar(w, "SELECT count(*) FROM test_side_effects WHERE handler = 'welcome'") == 0
    finally:
        w.close()


def _delivery(runtime) -> tuple[str, str | None]:  # type: ignore[no-untyped-def]
    with runtime.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT status, last_error FROM ozzy_deliveries WHERE handler = 'test.welcome'"
        ).one()
    return row[0], row[1]
