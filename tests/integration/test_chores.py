"""Singleton chores on the real PostgreSQL: one lease holder, retention in small batches."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from shared.ops.housekeeping import Lease, run_retention
from shared.delivery.relay import Relay
from tests.domain import Account
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until
from tests.integration.test_faults_inprocess import after_a_drain


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=["test.welcome", "test.audit"], worker_idle_ms=100)
    yield rt
    rt.close()


def test_only_one_holder_of_the_lease_and_it_passes_on_when_released(runtime) -> None:
    first, second = Lease(runtime.engine), Lease(runtime.engine)
    assert first.acquire() is True
    assert second.acquire() is False
    assert first.acquire() is True  # still held
    first.release()
    assert second.acquire() is True
    second.release()


def test_the_lease_passes_on_when_its_holders_connection_dies(runtime) -> None:
    first, second = Lease(runtime.engine), Lease(runtime.engine)
    assert first.acquire()
    pid = first._conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with runtime.engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    wait_until(lambda: second.acquire(), timeout=10)
    assert first.acquire() is False  # the old holder notices it lost the lease
    second.release()


def test_retention_prunes_old_completed_deliveries_in_batches_and_keeps_the_log(runtime) -> None:
    with runtime.unit_of_work() as uow:
        for i in range(25):
            uow.add(Account.open(f"r{i}"))
        uow.commit()
    relay = Relay(runtime)
    done = "SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'"
    with running_worker(runtime):
        wait_until(after_a_drain(relay, lambda: scalar(runtime, done) == 50))
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE ozzy_deliveries SET completed_at = now() - interval '30 days' WHERE id IN "
                          "(SELECT id FROM ozzy_deliveries ORDER BY id LIMIT 30)"))
        conn.execute(text("INSERT INTO ozzy_nodes (id, kind, host, pid, version, heartbeat_at) VALUES "
                          "(gen_random_uuid(), 'worker', 'h', 1, 'v', now() - interval '10 minutes')"))
    settings = runtime.config.model_copy(update={"retention_batch": 7})
    result = run_retention(runtime.engine, settings)
    assert result == {"deliveries_pruned": 30, "events_pruned": 0, "nodes_marked_gone": 1}
    assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries") == 20
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 50  # the event log is kept by default
    # With an outbox retention, old dispatched events go too (and their deliveries with them)
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE ozzy_outbox SET occurred_at = now() - interval '400 days' WHERE id IN "
                          "(SELECT id FROM ozzy_outbox WHERE event_id IN (SELECT event_id FROM ozzy_deliveries) ORDER BY id LIMIT 10)"))
    doomed = scalar(runtime, "SELECT count(*) FROM ozzy_deliveries d JOIN ozzy_outbox o USING (event_id)"
                             " WHERE o.occurred_at < now() - interval '365 days'")
    assert doomed > 0
    kept = runtime.config.model_copy(update={"outbox_retention_days": 365.0, "retention_batch": 3})
    assert run_retention(runtime.engine, kept)["events_pruned"] == 10
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 40
    orphans = "SELECT count(*) FROM ozzy_deliveries d WHERE NOT EXISTS (SELECT 1 FROM ozzy_outbox o WHERE o.event_id = d.event_id)"
    assert scalar(runtime, orphans) == 0
    assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries") == 20 - doomed
