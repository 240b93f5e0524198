"""End to end: real ``ozzy relay`` and ``ozzy worker`` processes on the real PostgreSQL and Redis."""

from __future__ import annotations

import time

import pytest

from shared.db.engine import make_engine
from shared.runtime import Runtime
from tests.domain import Account
from tests.e2e.procs import ozzy_processes, process_env
from tests.e2e.test_faults import WRITE_RETURNS_WITHIN_S, redis_is_down
from tests.integration.helpers import scalar, wait_until
from tests.integration.test_unit_of_work import returns_within
from tests.servers import private_redis


def open_accounts(runtime: Runtime, n: int, prefix: str) -> None:
    for i in range(n):
        with runtime.unit_of_work() as uow:
            uow.add(Account.open(f"{prefix}-{i}"))
            uow.commit()


def effects(runtime: Runtime, handler: str) -> int:
    return scalar(runtime, "SELECT count(*) FROM test_side_effects WHERE handler = :h", h=handler)


@pytest.fixture
def runtime(clean_db):
    rt = Runtime(clean_db, make_engine(clean_db), {})
    yield rt
    rt.close()


def test_relay_and_worker_processes_run_a_chain_and_stop_cleanly(runtime) -> None:
    env = process_env(runtime.config)
    with ozzy_processes(env, ["relay"], ["worker", "--threads", "4"]) as (relay, worker):
        # When 100 accounts are opened, each by its own business transaction
        open_accounts(runtime, 100, "e2e")
        # Then each welcome runs once and raises an event whose audit runs once
        wait_until(lambda: effects(runtime, "audit") == 100, timeout=60)
        time.sleep(0.5)  # a duplicate, if any, would land now
        assert effects(runtime, "welcome") == 100
        assert effects(runtime, "audit") == 100
        assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status <> 'done'") == 0
        # And both stop on SIGTERM with exit code 0
        assert relay.terminate() == 0, relay.output()
        assert worker.terminate() == 0, worker.output()


def test_with_redis_down_writes_succeed_and_events_are_handled_once_it_is_back(runtime) -> None:
    with private_redis() as redis_server:
        settings = runtime.config.model_copy(update={"redis_url": redis_server.url})
        env = process_env(settings)
        writer = Runtime(settings, make_engine(settings), {})
        try:
            with ozzy_processes(env, ["relay"], ["worker", "--threads", "2"]):
                open_accounts(writer, 5, "before")
                wait_until(lambda: effects(runtime, "audit") == 5, timeout=60)
                # When Redis goes away, business writes still succeed, and each returns (none hangs)
                redis_server.stop()
                assert redis_is_down(redis_server.url)
                for i in range(20):
                    returns_within(WRITE_RETURNS_WITHIN_S, lambda: open_accounts(writer, 1, f"during-{i}"))
                assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 25
                time.sleep(1.5)
                # And once Redis is back (empty), relay and worker reconnect by themselves
                redis_server.start()
                wait_until(lambda: effects(runtime, "audit") == 25, timeout=60)
                time.sleep(0.5)
                assert effects(runtime, "welcome") == 25
                assert effects(runtime, "audit") == 25
        finally:
            writer.close()
