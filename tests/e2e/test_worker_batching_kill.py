"""A worker SIGKILLed in the middle of a batch of deliveries (shared/delivery/batching.py): nothing
of the batch is committed or acknowledged, and a new worker runs every handler once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.e2e.faults import (
    assert_exactly_once,
    fault_env,
    redis_server,  # noqa: F401 (fixture)
    report,
    settings,  # noqa: F401 (fixture)
    wait_all_handled,
    writer,
)
from tests.e2e.procs import OzzyProcess, ozzy_processes
from tests.domain import Account
from tests.integration.helpers import scalar, wait_until

pytestmark = pytest.mark.fault

N = 12


def welcomed(runtime) -> set[str]:  # type: ignore[no-untyped-def]
    with runtime.engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql("SELECT event_key FROM test_side_effects WHERE handler = 'welcome'")}


def test_worker_killed_in_the_middle_of_a_batch_then_restarted(settings, redis_server) -> None:  # noqa: F811
    w = writer(settings)
    # The first welcome that runs in a batch after others counts its start, then sleeps: the others'
    # effects wait in the open transaction for the COMMIT the kill prevents
    env = fault_env(settings, OZZY_WORKER_BATCH="8", OZZY_TEST_COUNT_STARTS="1",
                    OZZY_TEST_WELCOME_DELAY="60", OZZY_TEST_WELCOME_DELAY_IN_BATCH="1")
    client = redis.Redis.from_url(redis_server.url)
    starts_key = f"{settings.redis_namespace}:test:welcome-starts"
    try:
        with w.unit_of_work() as uow:
            for i in range(N):
                uow.add(Account.open(f"batch-{i}"))
            uow.commit()
        with ozzy_processes(env, ["relay"]):
            # Given every event queued before a worker starts
            wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL") == N)
            worker = OzzyProcess(["worker", "--threads", "1"], env)
            try:
                # When it has started the slow welcome, after others of its batch, it is killed
                wait_until(lambda: len(client.hkeys(starts_key)) - len(welcomed(w)) >= 2, timeout=60, interval=0.02)
                time.sleep(0.3)
                worker.kill()
                assert worker.proc.returncode == -9
            finally:
                worker.terminate(timeout=10)
                Path(worker.log.name).unlink(missing_ok=True)
            # Then the batch's deliveries started and none of them committed
            interrupted = {k.decode() for k in client.hkeys(starts_key)} - welcomed(w)
            assert len(interrupted) >= 2, interrupted
            # And a new worker runs every handler once, the interrupted welcomes again
            killed = time.monotonic()
            plain = fault_env(settings, OZZY_WORKER_BATCH="8", OZZY_TEST_COUNT_STARTS="1")
            with ozzy_processes(plain, ["worker", "--threads", "2"]):
                wait_all_handled(w, N, timeout=120)
                recovery = time.monotonic() - killed
                final = assert_exactly_once(w, N)
            starts = {k.decode(): int(v) for k, v in client.hgetall(starts_key).items()}
            assert all(starts[key] >= 2 for key in interrupted), (interrupted, starts)
    finally:
        client.close()
        w.close()
    report("worker_sigkill_mid_batch", interrupted=len(interrupted), recovery_s=round(recovery, 2), **final)
