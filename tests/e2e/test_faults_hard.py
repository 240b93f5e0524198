"""Harder fault tests (issue #11): a hung Redis, a Redis killed under load, a PostgreSQL crash.

Same style as ``test_faults.py``: real ``ozzy relay`` / ``ozzy worker`` processes, private servers
broken on purpose (the machine's shared PostgreSQL and Redis are never touched), and exact counts
at the end: every committed account's ``welcome`` ran once, the ``audit`` of the event it raised
ran once, no duplicate effect, every delivery done, nothing left undispatched in the outbox.
"""

from __future__ import annotations

import time

import pytest
import redis

from tests.e2e.faults import (
    BackgroundWriter,
    assert_delivered_exactly_once,
    counts,
    fault_env,
    open_accounts,
    redis_server,  # noqa: F401 (fixture)
    report,
    settings,  # noqa: F401 (fixture)
    wait_all_handled,
    writer,
)
from tests.e2e.procs import OzzyProcess, ozzy_processes
from tests.integration.helpers import scalar, wait_until
from tests.servers import (
    crash_postgres,
    frozen_redis,
    kill_redis,
    private_postgres,
    provisioned,
    restart_postgres_after_crash,
)

pytestmark = pytest.mark.fault

#: An outcome bound, not a performance threshold: a business write that takes longer than this
#: while Redis is broken is one that waits on Redis.
WRITE_BOUND_S = 5.0

#: Longer than the relay's Redis socket timeout (10 s) and the heartbeat timeout (3 s), so the
#: relay's pipeline and the workers' commands time out while the server still holds their bytes.
FREEZE_S = 12.0


def _alive(procs: list[OzzyProcess]) -> dict[str, int | None]:
    """Each process's exit code (None while it runs): recovery must need no restart."""
    return {" ".join(p.args): p.proc.poll() for p in procs}


def _relay_errors(runtime) -> int:  # type: ignore[no-untyped-def]
    """Failed drains the relay reported in its last node heartbeat."""
    sql = "SELECT coalesce(max((info->'relay'->>'errors')::int), 0) FROM ozzy_nodes WHERE kind = 'relay'"
    return scalar(runtime, sql)


def _accounts(runtime) -> int:  # type: ignore[no-untyped-def]
    return scalar(runtime, "SELECT count(*) FROM test_accounts")


def test_redis_frozen_writes_keep_committing_and_every_event_is_handled_once(settings, redis_server) -> None:
    w = writer(settings)
    try:
        with ozzy_processes(fault_env(settings), ["relay"], ["worker"]) as procs:
            open_accounts(w, 30, "before", per_commit=5)
            wait_all_handled(w, 30, timeout=60)
            load = BackgroundWriter(w, "frozen", pause=0.02).start()
            try:
                time.sleep(1)
                # When Redis hangs (SIGSTOP: connections are accepted by the kernel, nothing answers)
                with frozen_redis(redis_server):
                    frozen_at = time.monotonic()
                    time.sleep(FREEZE_S)
                    stuck_at_thaw = load.in_progress()
                    # (the freeze is felt: the relay cannot hand events to Redis)
                    undispatched_at_thaw = scalar(w, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL")
                    thawed_at = time.monotonic()
                time.sleep(1)
            finally:
                load.stop()
            during = load.between(frozen_at, thawed_at)
            slowest = max((seconds for _, seconds, _ in during), default=0.0)
            # Then every business write during the freeze committed, none waited on Redis ...
            assert load.failed == 0, load.errors
            assert undispatched_at_thaw > 0, "the relay kept dispatching: was Redis really frozen?"
            assert len(during) >= 20, f"only {len(during)} writes started during the {FREEZE_S}s freeze"
            assert stuck_at_thaw < WRITE_BOUND_S, f"a write had been waiting {stuck_at_thaw:.1f}s when Redis was thawed"
            assert slowest < WRITE_BOUND_S, f"the slowest write during the freeze took {slowest:.2f}s"
            # ... and, Redis back, every committed event is handled exactly once, without restarts
            total = _accounts(w)
            assert total == 30 + load.succeeded * load.per_commit
            wait_all_handled(w, total, timeout=120)
            recovery = time.monotonic() - thawed_at
            final = assert_delivered_exactly_once(w, total)
            assert _alive(procs) == {"relay": None, "worker": None}
            errors = _relay_errors(w)
    finally:
        w.close()
    # relay_failed_drains is 0 or 1: redis-py retries a timed-out pipeline, and a retry that
    # straddles the thaw succeeds (the inbox absorbs the duplicate messages it leaves in Redis).
    report("redis_frozen", frozen_s=FREEZE_S, relay_failed_drains=errors, undispatched_at_thaw=undispatched_at_thaw,
           written_while_frozen=len(during), slowest_write_s=round(slowest, 3),
           recovery_after_thaw_s=round(recovery, 2), **final)


def test_redis_killed_under_load_and_restarted_empty_every_event_is_handled_once(settings, redis_server) -> None:
    w = writer(settings)
    namespace = settings.redis_namespace
    # A slow first handler keeps a backlog in Redis, so the kill really loses messages
    env = fault_env(settings, OZZY_TEST_WELCOME_DELAY="0.05")
    try:
        with ozzy_processes(env, ["relay"], ["worker", "--threads", "4"]) as procs:
            load = BackgroundWriter(w, "killed", per_commit=5, pause=0.05).start()
            try:
                wait_until(lambda: counts(w)["welcome"] >= 20, timeout=60)
                time.sleep(1)
                client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
                held = sum(client.hlen(f"{namespace}:{q}.msgs") for q in ("test.welcome", "test.audit"))
                client.close()
                # When Redis is SIGKILLed (no persistence) ...
                kill_redis(redis_server)
                killed_at = time.monotonic()
                open_at_kill = scalar(w, "SELECT count(*) FROM ozzy_deliveries WHERE status <> 'done'")
                time.sleep(2)
                # ... and an empty one comes back on the same port while the writes go on
                redis_server.start()
                restarted_at = time.monotonic()
                time.sleep(3)
            finally:
                load.stop()
            written_while_down = sum(1 for _, _, ok in load.between(killed_at, restarted_at) if ok)
            slowest = max((seconds for _, seconds, _ in load.attempts), default=0.0)
            # Then no business write failed or waited on Redis ...
            assert load.failed == 0, load.errors
            assert slowest < WRITE_BOUND_S, f"the slowest write took {slowest:.2f}s"
            assert held > 0, "Redis held no message when it was killed: nothing was at stake"
            # ... and the sweep re-enqueues what Redis forgot: every event handled exactly once
            total = _accounts(w)
            assert total == load.succeeded * load.per_commit
            wait_all_handled(w, total, timeout=120)
            recovery = time.monotonic() - restarted_at
            final = assert_delivered_exactly_once(w, total)
            assert _alive(procs) == {"relay": None, "worker --threads 4": None}
    finally:
        w.close()
    report("redis_sigkill_under_load", messages_lost=held, open_deliveries_at_kill=open_at_kill,
           written_while_down=written_while_down, recovery_after_restart_s=round(recovery, 2), **final)


def test_postgresql_crashed_under_load_relay_and_worker_recover_by_themselves(redis_server) -> None:
    with private_postgres() as pg, provisioned(pg.url, redis_server.url) as settings:
        w = writer(settings)
        try:
            with ozzy_processes(fault_env(settings), ["relay"], ["worker"]) as procs:
                open_accounts(w, 50, "before", per_commit=10)
                wait_all_handled(w, 50, timeout=60)
                load = BackgroundWriter(w, "crash", per_commit=2, pause=0.01).start()
                try:
                    time.sleep(2)
                    # When the postmaster and every backend are SIGKILLed mid-load (a host crash:
                    # no shutdown checkpoint, transactions cut off, crash recovery at the restart)
                    killed = crash_postgres(pg)
                    crashed_at = time.monotonic()
                    time.sleep(4)
                    restart_postgres_after_crash(pg)
                    restarted_at = time.monotonic()
                    # A real crash: the restarted server had to replay its WAL
                    assert "not properly shut down" in (pg.data / "log").read_text(errors="replace")
                    wait_until(lambda: any(ok for _, _, ok in load.between(restarted_at, float("inf"))), timeout=30)
                    time.sleep(2)
                finally:
                    load.stop()
                failed_while_down = sum(1 for _, _, ok in load.between(crashed_at, restarted_at) if not ok)
                # Then writes failed during the outage and succeed again without any restart ...
                assert failed_while_down > 0, "the crash should have been felt by the writer"
                # ... and every account the database says was committed (a write cut off by the
                # crash may or may not have been) has its handlers run exactly once
                committed = _accounts(w)
                assert 50 + load.succeeded * load.per_commit <= committed <= 50 + len(load.attempts) * load.per_commit
                wait_all_handled(w, committed, timeout=120)
                recovery = time.monotonic() - restarted_at
                final = assert_delivered_exactly_once(w, committed)
                assert _alive(procs) == {"relay": None, "worker": None}
        finally:
            w.close()
    report("postgres_crash_under_load", processes_killed=killed, committed=committed,
           failed_writes=load.failed, succeeded_writes=load.succeeded,
           recovery_after_restart_s=round(recovery, 2), **final)
