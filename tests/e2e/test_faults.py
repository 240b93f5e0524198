"""Fault tests: real processes, private servers broken on purpose, exact counts afterwards.

Each test starts its own Redis (and, where PostgreSQL is stopped, its own PostgreSQL), so the
machine's shared servers are never touched. Run only these with ``scripts/test -m fault``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from tests.e2e.faults import (
    all_handled,
    wait_all_handled,
    assert_exactly_once,
    counts,
    fault_env,
    open_accounts,
    redis_server,  # noqa: F401 (fixture)
    report,
    settings,  # noqa: F401 (fixture)
    writer,
)
from tests.e2e.procs import OzzyProcess, ozzy_processes
from tests.integration.helpers import scalar, wait_until
from tests.integration.test_relay import claimed_rows, dispatch_lock_held, relays_waiting_to_mark
from tests.integration.test_unit_of_work import returns_within
from tests.servers import private_postgres, provisioned

pytestmark = pytest.mark.fault

#: A business write during an outage must return, not hang: a deadline far above any plausible
#: commit (how fast it is goes to bench/latency.py, not here).
WRITE_RETURNS_WITHIN_S = 5.0


def redis_is_down(url: str) -> bool:
    """True when nothing answers at ``url``: the outage the test relies on is real."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
        return False
    except redis.ConnectionError:
        return True
    finally:
        client.close()


def relay_listening(runtime) -> int:
    """Relays that run (not paused) with their fast channel subscription connected."""
    return scalar(runtime, "SELECT count(*) FROM ozzy_nodes WHERE kind = 'relay' AND stopped_at IS NULL"
                           " AND (info->>'paused')::boolean = false AND info->'fast_channel'->>'state' = 'connected'")


def dispatched(runtime) -> int:
    return scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL")


def welcomed(runtime) -> set[str]:
    """The accounts whose welcome handler committed its effect."""
    with runtime.engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql("SELECT event_key FROM test_side_effects WHERE handler = 'welcome'")}


def discard(process: OzzyProcess) -> None:
    """Stop a process started outside ``ozzy_processes`` (SIGKILL if need be) and drop its log."""
    process.terminate(timeout=10)
    Path(process.log.name).unlink(missing_ok=True)


def test_redis_stopped_for_ten_seconds_writes_succeed_and_every_event_is_handled_once(settings, redis_server) -> None:
    w = writer(settings)
    try:
        with ozzy_processes(fault_env(settings), ["relay"], ["worker"]):
            open_accounts(w, 50, "before")
            wait_until(lambda: all_handled(w, 50), timeout=60)
            redis_server.stop()
            assert redis_is_down(redis_server.url)
            # While Redis is down for 10 s, every business write succeeds and returns (none hangs)
            slowest, written, started = 0.0, 0, time.monotonic()
            while time.monotonic() - started < 10:
                t = time.perf_counter()
                written += returns_within(WRITE_RETURNS_WITHIN_S, lambda: open_accounts(w, 1, f"down-{written}"))
                slowest = max(slowest, time.perf_counter() - t)
                time.sleep(0.02)
            assert redis_is_down(redis_server.url)  # ... all of them during the outage
            assert scalar(w, "SELECT count(*) FROM test_accounts") == 50 + written
            redis_server.start()
            with_back = time.monotonic()
            total = 50 + written
            wait_until(lambda: all_handled(w, total), timeout=90)
            recovery = time.monotonic() - with_back
            final = assert_exactly_once(w, total)
    finally:
        w.close()
    report("redis_down_10s", written_while_down=written, slowest_write_s=round(slowest, 3),
           recovery_s=round(recovery, 2), **final)


def test_redis_restarted_empty_while_hundreds_of_messages_are_queued(settings, redis_server) -> None:
    w = writer(settings)
    env = fault_env(settings)
    queue = f"{settings.redis_namespace}:test.welcome.msgs"
    client = redis.Redis.from_url(redis_server.url)
    try:
        # Given 400 events dispatched to Redis while no worker runs
        with ozzy_processes(env, ["relay"]):
            open_accounts(w, 400, "queued", per_commit=20)
            wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'pending'") == 400)
            queued = client.hlen(queue)
            assert queued == 400
            # When Redis loses everything (no persistence) and comes back empty
            try:
                client.shutdown(nosave=True)
            except redis.ConnectionError:
                pass
            redis_server.process.wait(10)
            redis_server.start()
            restarted = time.monotonic()
            fresh = redis.Redis.from_url(redis_server.url)
            try:
                assert fresh.hlen(queue) == 0, "Redis came back with the messages: nothing was lost"
            finally:
                fresh.close()
            # Then the relay's sweep finds the unfinished deliveries in PostgreSQL and a worker runs each once
            with ozzy_processes(env, ["worker"]):
                wait_until(lambda: all_handled(w, 400), timeout=120)
                recovery = time.monotonic() - restarted
                final = assert_exactly_once(w, 400)
    finally:
        client.close()
        w.close()
    report("redis_restarted_empty", queued_when_lost=queued, recovery_s=round(recovery, 2), **final)


def test_relay_killed_in_the_middle_of_a_batch_then_restarted(settings) -> None:
    w = writer(settings)
    env = fault_env(settings, OZZY_BATCH_SIZE="200")
    try:
        with ozzy_processes(env, ["worker"]):
            relay = OzzyProcess(["relay"], env)
            try:
                # Given 500 accounts whose events (and the events their handlers raised) the relay dispatched
                open_accounts(w, 500, "before", per_commit=250)
                wait_until(lambda: all_handled(w, 500) and dispatched(w) == 1000, timeout=60)
                # When 2,500 more are written while the dispatch lock is held, the relay claims a batch,
                # sends it to Redis and waits to mark it dispatched ...
                with dispatch_lock_held(w.engine):
                    open_accounts(w, 2500, "batch", per_commit=500)
                    wait_until(lambda: relays_waiting_to_mark(w.engine) == 1, timeout=30)
                    # ... so the kill lands in the middle of a batch: 200 rows claimed, none marked
                    claimed_at_kill = claimed_rows(w.engine)
                    dispatched_at_kill = dispatched(w)
                    assert (claimed_at_kill, dispatched_at_kill) == (200, 1000)
                    relay.kill()  # SIGKILL: its open batch rolls back
                    assert relay.proc.returncode == -9
                # Then the killed relay's batch was rolled back: its rows are free and still undispatched
                wait_until(lambda: claimed_rows(w.engine) == 0, timeout=30)
                assert dispatched(w) == dispatched_at_kill
            finally:
                discard(relay)
            # And a new relay sends them again; the worker, which may have the first copies from Redis,
            # handles each event once
            restarted = time.monotonic()
            with ozzy_processes(env, ["relay"]):
                wait_until(lambda: all_handled(w, 3000), timeout=120)
                recovery = time.monotonic() - restarted
                final = assert_exactly_once(w, 3000)
    finally:
        w.close()
    report("relay_sigkill_mid_batch", dispatched_at_kill=dispatched_at_kill, claimed_at_kill=claimed_at_kill,
           recovery_s=round(recovery, 2), **final)


def test_worker_killed_in_the_middle_of_a_handler_then_restarted(settings, redis_server) -> None:
    w = writer(settings)
    # Each welcome counts its start in Redis, then takes a second before its transaction commits
    env = fault_env(settings, OZZY_TEST_WELCOME_DELAY="1", OZZY_TEST_COUNT_STARTS="1")
    client = redis.Redis.from_url(redis_server.url)
    starts_key = f"{settings.redis_namespace}:test:welcome-starts"

    def in_flight() -> set[str]:
        """Welcomes that started and have not committed."""
        return {k.decode() for k in client.hkeys(starts_key)} - welcomed(w)

    seen: set[str] = set()

    def one_just_started() -> bool:
        """Some welcomes are done, and one started since the last look (polled far more often than
        a welcome lasts): it has most of its second still to run."""
        current = in_flight()
        fresh = current - seen
        seen.update(current)
        return len(welcomed(w)) >= 4 and bool(fresh)

    try:
        open_accounts(w, 40, "slow", per_commit=40)
        with ozzy_processes(env, ["relay"]):
            worker = OzzyProcess(["worker", "--threads", "4"], env)
            try:
                # When the worker has finished some welcomes and has just started another, it is killed
                wait_until(one_just_started, timeout=60, interval=0.02)
                worker.kill()
                assert worker.proc.returncode == -9
            finally:
                discard(worker)
            # Then the kill landed in the middle of handlers: started, never committed (no worker runs now)
            interrupted = in_flight()
            done_at_kill = len(welcomed(w))
            assert interrupted, "no handler was running when the worker was killed"
            assert done_at_kill < 40
            # And a new worker runs every event's handlers once, the interrupted ones again
            killed = time.monotonic()
            with ozzy_processes(env, ["worker", "--threads", "4"]):
                wait_until(lambda: all_handled(w, 40), timeout=120)
                recovery = time.monotonic() - killed
                final = assert_exactly_once(w, 40)
            starts = {k.decode(): int(v) for k, v in client.hgetall(starts_key).items()}
            assert all(starts[key] >= 2 for key in interrupted), (interrupted, starts)
    finally:
        client.close()
        w.close()
    report("worker_sigkill_mid_handler", done_at_kill=done_at_kill, interrupted=len(interrupted),
           recovery_s=round(recovery, 2), **final)


def test_postgresql_stopped_and_restarted_under_load_relay_and_workers_reconnect(redis_server) -> None:
    with private_postgres() as pg, provisioned(pg.url, redis_server.url) as settings:
        w = writer(settings)
        stop_load = threading.Event()
        failed_writes = [0]
        restarted_at: list[float] = []
        written_after_restart = [0]

        def load() -> None:
            i = 0
            while not stop_load.is_set():
                try:
                    started = time.monotonic()
                    open_accounts(w, 1, f"load-{i}")
                    if restarted_at and started > restarted_at[0]:
                        written_after_restart[0] += 1
                except Exception:  # noqa: BLE001 - writes fail while the database is down
                    failed_writes[0] += 1
                    stop_load.wait(0.1)
                i += 1

        thread = threading.Thread(target=load, name="load", daemon=True)
        try:
            with ozzy_processes(fault_env(settings), ["relay"], ["worker"]):
                open_accounts(w, 100, "before", per_commit=10)
                thread.start()
                time.sleep(1)
                pg.stop()
                time.sleep(5)
                pg.start()
                restarted = time.monotonic()
                restarted_at.append(restarted)
                # The same writer's business writes succeed again, without a restart of anything
                wait_until(lambda: written_after_restart[0] >= 20, timeout=30)
                stop_load.set()
                thread.join(30)
                assert not thread.is_alive(), "a business write has not returned 30 s after the restart"
                # A commit cut off by the shutdown may or may not have happened: the database decides.
                committed = scalar(w, "SELECT count(*) FROM test_accounts")
                wait_all_handled(w, committed, timeout=120)
                recovery = time.monotonic() - restarted
                final = assert_exactly_once(w, committed)
        finally:
            stop_load.set()
            if thread.ident is not None:
                thread.join(30)
            w.close()
    assert failed_writes[0] > 0, "the database outage should have been felt"
    report("postgres_restart_under_load", committed=committed, failed_writes=failed_writes[0],
           written_after_restart=written_after_restart[0], recovery_s=round(recovery, 2), **final)


def test_fast_channel_connection_killed_events_still_flow_without_any_restart(settings, redis_server) -> None:
    w = writer(settings)
    client = redis.Redis.from_url(redis_server.url)
    # The relay's poll is an hour away: only the fast channel can bring it the events in time
    try:
        with ozzy_processes(fault_env(settings, OZZY_POLL_INTERVAL="3600"), ["relay"], ["worker"]):
            # (written once the relay runs unpaused and listens: its one poll is behind it)
            wait_until(lambda: relay_listening(w) == 1, timeout=60)
            open_accounts(w, 20, "before")
            wait_until(lambda: all_handled(w, 20), timeout=60)
            # When every pub/sub connection is killed (the relay's subscriber and the workers' wake-ups)
            killed = client.client_kill_filter(_type="pubsub")
            assert killed >= 1
            started = time.monotonic()
            open_accounts(w, 20, "after")
            # Then the subscriptions heal by themselves and the events keep flowing, with no poll to help
            wait_until(lambda: all_handled(w, 40), timeout=60)
            latency = time.monotonic() - started
            final = assert_exactly_once(w, 40)
            reconnects_sql = ("SELECT max((info->'fast_channel'->>'reconnects')::int) FROM ozzy_nodes"
                              " WHERE kind = 'relay'")
            # the next node heartbeat carries the subscriber's counters
            reconnects = wait_until(lambda: scalar(w, reconnects_sql), timeout=15)
            polls = scalar(w, "SELECT max((info->'relay'->>'drains_by_poll')::int) FROM ozzy_nodes WHERE kind = 'relay'")
    finally:
        client.close()
        w.close()
    assert reconnects >= 1, "the relay should have noticed and counted the dropped subscription"
    assert polls <= 1, f"the relay drained by poll {polls} times: the events may not have come by the fast channel"
    report("fast_channel_client_kill", connections_killed=killed, handled_after_s=round(latency, 2),
           relay_reconnects=reconnects, **final)


def test_two_relays_and_two_workers_under_five_thousand_events(settings) -> None:
    w = writer(settings)
    env = fault_env(settings, OZZY_LOG_LEVEL="ERROR", OZZY_BATCH_SIZE="50")
    relays_sql = ("SELECT count(*) FROM ozzy_nodes WHERE kind = 'relay' AND stopped_at IS NULL"
                  " AND (info->'relay'->>'batches')::int > 0")
    try:
        with ozzy_processes(env, ["relay"], ["relay"], ["worker"], ["worker"]):
            wait_until(lambda: relay_listening(w) == 2, timeout=60)
            started = time.monotonic()
            # Both relays hold a claimed batch at the same moment: both take part, on different rows
            with dispatch_lock_held(w.engine):
                open_accounts(w, 250, "load-first", per_commit=250)
                wait_until(lambda: relays_waiting_to_mark(w.engine) == 2, timeout=30)
                assert claimed_rows(w.engine) == 2 * 50
            open_accounts(w, 4750, "load", per_commit=250)
            wait_until(lambda: all_handled(w, 5000), timeout=240, interval=0.5)
            elapsed = time.monotonic() - started
            final = assert_exactly_once(w, 5000)
            # ... which the relays' own counters, carried by their next heartbeats, confirm
            wait_until(lambda: scalar(w, relays_sql) == 2, timeout=15)
            relays = scalar(w, relays_sql)
    finally:
        w.close()
    report("two_relays_two_workers_5000", seconds=round(elapsed, 2), relays_that_dispatched=relays, **final)


def test_a_poison_message_among_a_thousand_good_ones_is_parked_and_the_rest_complete(settings) -> None:
    from tests.integration.test_faults_inprocess import raw_event

    w = writer(settings)
    try:
        open_accounts(w, 500, "good", per_commit=100)
        unknown = raw_event(w, "test.never_heard_of", {"x": 1})
        invalid = raw_event(w, "test.account_opened", {"account_id": "nope", "owner": None})
        open_accounts(w, 500, "good2", per_commit=100)
        with ozzy_processes(fault_env(settings), ["relay"], ["worker"]):
            wait_until(lambda: all_handled(w, 1000) and _dead(w) == 1, timeout=120)
            final = counts(w)
        assert (final["welcome"], final["audit"], final["duplicates"]) == (1000, 1000, 0)
        assert scalar(w, "SELECT park_reason FROM ozzy_outbox WHERE event_id = :e", e=unknown).startswith("unknown event type")
        assert scalar(w, "SELECT dead_reason FROM ozzy_deliveries WHERE event_id = :e", e=invalid) == "invalid_payload"
    finally:
        w.close()
    report("poison_among_1000", parked=1, dead_invalid_payload=1, **final)


def _dead(runtime) -> int:
    return scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'")


def test_sigterm_lets_the_worker_finish_the_handler_it_is_running_and_exit_zero(settings, redis_server) -> None:
    w = writer(settings)
    env = fault_env(settings, OZZY_TEST_WELCOME_DELAY="3", OZZY_TEST_COUNT_STARTS="1")
    client = redis.Redis.from_url(redis_server.url)
    try:
        with ozzy_processes(env, ["relay"]):
            worker = OzzyProcess(["worker", "--threads", "1"], env)
            try:
                open_accounts(w, 1, "graceful")
                # Given the handler started (it then sleeps 3 s before its transaction commits) ...
                wait_until(lambda: client.hlen(f"{settings.redis_namespace}:test:welcome-starts") == 1, timeout=30,
                           interval=0.01)
                # ... and has not finished when the worker is told to stop
                assert counts(w)["welcome"] == 0, "the handler finished before SIGTERM: nothing was in flight"
                started = time.monotonic()
                code = worker.terminate(timeout=30)
                stopped_after = time.monotonic() - started
            finally:
                worker_log = worker.output()
                discard(worker)
        # Then the worker exited 0 only after the handler in flight completed (no other worker ran it)
        assert code == 0, worker_log
        assert counts(w)["welcome"] == 1, "the handler in flight completed before the worker exited"
        assert scalar(w, "SELECT status FROM ozzy_deliveries WHERE handler = 'test.welcome'") == "done"
    finally:
        client.close()
        w.close()
    report("worker_sigterm_graceful", exit_code=code, stopped_after_s=round(stopped_after, 2))


def test_a_handler_longer_than_the_heartbeat_timeout_is_not_started_twice(settings, redis_server) -> None:
    """Lesson 2: a redelivery timeout shorter than the work must not run the work twice."""
    w = writer(settings)
    env = fault_env(settings, OZZY_TEST_WELCOME_DELAY="5", OZZY_TEST_COUNT_STARTS="1")
    client = redis.Redis.from_url(redis_server.url)
    try:
        with ozzy_processes(env, ["relay"], ["worker", "--threads", "1"], ["worker", "--threads", "1"]):
            open_accounts(w, 4, "long", per_commit=4)
            wait_all_handled(w, 4, timeout=90)
            final = assert_exactly_once(w, 4)
        starts = client.hgetall(f"{settings.redis_namespace}:test:welcome-starts")
    finally:
        client.close()
        w.close()
    assert len(starts) == 4 and set(starts.values()) == {b"1"}, starts
    report("long_handler_vs_heartbeat_timeout", handler_seconds=5, heartbeat_timeout_s=3, starts_per_event=1, **final)


def test_web_answers_503_while_the_database_is_down_and_recovers_without_restart(redis_server) -> None:
    from tests.e2e.procs import process_env
    from tests.e2e.test_loans_http import call
    from tests.servers import free_port

    body = {"applicant_name": "Ada", "email": "ada@example.com", "amount": 100}
    with private_postgres() as pg, provisioned(pg.url, redis_server.url) as settings:
        port = free_port()
        env = process_env(settings, PORT=str(port), OZZY_LOG_LEVEL="WARNING")
        base = f"http://127.0.0.1:{port}"
        with ozzy_processes(env, ["web", "--host", "127.0.0.1"]):
            wait_until(lambda: _up(base), timeout=30)
            assert call("POST", f"{base}/loan-applications", body)[0] == 201
            pg.stop()
            status, error = call("POST", f"{base}/loan-applications", body)
            assert status == 503 and error["error"]["code"] == "database_unavailable", (status, error)
            health_status, health = call("GET", f"{base}/healthz")
            assert health_status == 503 and health["database"] == "down" and health["redis"] == "ok"
            pg.start()
            recovered = time.monotonic()
            wait_until(lambda: call("POST", f"{base}/loan-applications", body)[0] == 201, timeout=30)
            report("web_database_outage", status_while_down=status, recovered_after_s=round(time.monotonic() - recovered, 2))


def _up(base: str) -> bool:
    from tests.e2e.test_loans_http import call

    try:
        return call("GET", f"{base}/healthz")[0] == 200
    except OSError:
        return False
