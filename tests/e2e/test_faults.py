"""Fault tests: real processes, private servers broken on purpose, exact counts afterwards.

Each test starts its own Redis (and, where PostgreSQL is stopped, its own PostgreSQL), so the
machine's shared servers are never touched. Run only these with ``scripts/test -m fault``.
"""

from __future__ import annotations

import threading
import time

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
from tests.servers import private_postgres, provisioned

pytestmark = pytest.mark.fault



def test_redis_stopped_for_ten_seconds_writes_succeed_and_every_event_is_handled_once(settings, redis_server) -> None:
    w = writer(settings)
    with ozzy_processes(fault_env(settings), ["relay"], ["worker"]):
        open_accounts(w, 50, "before")
        wait_until(lambda: all_handled(w, 50), timeout=60)
        redis_server.stop()
        # While Redis is down for 10 s, every business write succeeds, each within a bound
        slowest, written, started = 0.0, 0, time.monotonic()
        while time.monotonic() - started < 10:
            t = time.perf_counter()
            written += open_accounts(w, 1, f"down-{written}")
            slowest = max(slowest, time.perf_counter() - t)
            time.sleep(0.02)
        redis_server.start()
        with_back = time.monotonic()
        total = 50 + written
        wait_until(lambda: all_handled(w, total), timeout=90)
        recovery = time.monotonic() - with_back
        final = assert_exactly_once(w, total)
    w.close()
    assert slowest < 0.5
    report("redis_down_10s", written_while_down=written, slowest_write_s=round(slowest, 3),
           recovery_s=round(recovery, 2), **final)


def test_redis_restarted_empty_while_hundreds_of_messages_are_queued(settings, redis_server) -> None:
    w = writer(settings)
    env = fault_env(settings)
    # Given 400 events dispatched to Redis while no worker runs
    with ozzy_processes(env, ["relay"]):
        open_accounts(w, 400, "queued", per_commit=20)
        wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'pending'") == 400)
        client = redis.Redis.from_url(redis_server.url)
        queued = client.hlen(f"{settings.redis_namespace}:test.welcome.msgs")
        # When Redis loses everything (no persistence) and comes back empty
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        client.close()
        redis_server.process.wait(10)
        redis_server.start()
        restarted = time.monotonic()
        # Then the relay's sweep finds the unfinished deliveries in PostgreSQL and a worker runs each once
        with ozzy_processes(env, ["worker"]):
            wait_until(lambda: all_handled(w, 400), timeout=120)
            recovery = time.monotonic() - restarted
            final = assert_exactly_once(w, 400)
    w.close()
    assert queued == 400
    report("redis_restarted_empty", queued_when_lost=queued, recovery_s=round(recovery, 2), **final)


def test_relay_killed_in_the_middle_of_a_batch_then_restarted(settings) -> None:
    w = writer(settings)
    env = fault_env(settings, OZZY_BATCH_SIZE="200")
    open_accounts(w, 3000, "batch", per_commit=500)
    with ozzy_processes(env, ["worker"]):
        relay = OzzyProcess(["relay"], env)
        wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL") > 0,
                   timeout=30, interval=0.005)
        relay.kill()  # SIGKILL: its open batch rolls back
        dispatched_at_kill = scalar(w, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL")
        restarted = time.monotonic()
        with ozzy_processes(env, ["relay"]):
            wait_until(lambda: all_handled(w, 3000), timeout=120)
            recovery = time.monotonic() - restarted
            final = assert_exactly_once(w, 3000)
    w.close()
    assert 0 < dispatched_at_kill < 6000
    report("relay_sigkill_mid_batch", dispatched_at_kill=dispatched_at_kill, recovery_s=round(recovery, 2), **final)


def test_worker_killed_in_the_middle_of_a_handler_then_restarted(settings) -> None:
    w = writer(settings)
    env = fault_env(settings, OZZY_TEST_WELCOME_DELAY="0.3")
    open_accounts(w, 60, "slow", per_commit=60)
    with ozzy_processes(env, ["relay"]):
        worker = OzzyProcess(["worker", "--threads", "4"], env)
        # Let some handlers complete and others be in flight, then kill the worker
        wait_until(lambda: counts(w)["welcome"] >= 8, timeout=60)
        time.sleep(0.15)
        worker.kill()
        done_at_kill = counts(w)["welcome"]
        killed = time.monotonic()
        with ozzy_processes(env, ["worker", "--threads", "4"]):
            wait_until(lambda: all_handled(w, 60), timeout=120)
            recovery = time.monotonic() - killed
            final = assert_exactly_once(w, 60)
    w.close()
    assert done_at_kill < 60
    report("worker_sigkill_mid_handler", done_at_kill=done_at_kill, recovery_s=round(recovery, 2), **final)


def test_postgresql_stopped_and_restarted_under_load_relay_and_workers_reconnect(redis_server) -> None:
    with private_postgres() as pg, provisioned(pg.url, redis_server.url) as settings:
        w = writer(settings)
        with ozzy_processes(fault_env(settings), ["relay"], ["worker"]):
            committed = open_accounts(w, 100, "before", per_commit=10)
            stop_load = threading.Event()
            failed_writes = [0]

            def load() -> None:
                nonlocal committed
                i = 0
                while not stop_load.is_set():
                    try:
                        committed += open_accounts(w, 1, f"load-{i}")
                    except Exception:  # noqa: BLE001 - writes fail while the database is down
                        failed_writes[0] += 1
                        time.sleep(0.1)
                    i += 1

            thread = threading.Thread(target=load)
            thread.start()
            time.sleep(1)
            pg.stop()
            time.sleep(5)
            pg.start()
            restarted = time.monotonic()
            time.sleep(2)
            stop_load.set()
            thread.join()
            # A commit cut off by the shutdown may or may not have happened: the database decides.
            committed = scalar(w, "SELECT count(*) FROM test_accounts")
            wait_all_handled(w, committed, timeout=120)
            recovery = time.monotonic() - restarted
            final = assert_exactly_once(w, committed)
        w.close()
    assert failed_writes[0] > 0, "the database outage should have been felt"
    report("postgres_restart_under_load", committed=committed, failed_writes=failed_writes[0],
           recovery_s=round(recovery, 2), **final)


def test_fast_channel_connection_killed_events_still_flow_without_any_restart(settings, redis_server) -> None:
    w = writer(settings)
    client = redis.Redis.from_url(redis_server.url)
    with ozzy_processes(fault_env(settings, OZZY_POLL_INTERVAL="30"), ["relay"], ["worker"]):
        open_accounts(w, 20, "before")
        wait_until(lambda: all_handled(w, 20), timeout=60)
        # When every pub/sub connection is killed (the relay's subscriber and the workers' wake-ups)
        killed = client.client_kill_filter(_type="pubsub")
        started = time.monotonic()
        open_accounts(w, 20, "after")
        # Then events keep flowing fast, long before the 30 s poll would find them
        wait_until(lambda: all_handled(w, 40), timeout=25)
        latency = time.monotonic() - started
        final = assert_exactly_once(w, 40)
        time.sleep(1.5)  # one more node heartbeat carries the subscriber's counters
        reconnects = scalar(w, "SELECT max((info->'fast_channel'->>'reconnects')::int) FROM ozzy_nodes WHERE kind = 'relay'")
    client.close()
    w.close()
    assert killed >= 1
    assert latency < 15
    assert reconnects >= 1, "the relay should have noticed and counted the dropped subscription"
    report("fast_channel_client_kill", connections_killed=killed, handled_after_s=round(latency, 2),
           relay_reconnects=reconnects, **final)


def test_two_relays_and_two_workers_under_five_thousand_events(settings) -> None:
    w = writer(settings)
    env = fault_env(settings, OZZY_LOG_LEVEL="ERROR")
    with ozzy_processes(env, ["relay"], ["relay"], ["worker"], ["worker"]):
        started = time.monotonic()
        open_accounts(w, 5000, "load", per_commit=250)
        wait_until(lambda: all_handled(w, 5000), timeout=240, interval=0.5)
        elapsed = time.monotonic() - started
        final = assert_exactly_once(w, 5000)
        relays = scalar(w, "SELECT count(*) FROM ozzy_nodes WHERE kind = 'relay' AND (info->'relay'->>'dispatched')::int > 0")
    w.close()
    report("two_relays_two_workers_5000", seconds=round(elapsed, 2), relays_that_dispatched=relays, **final)


def test_a_poison_message_among_a_thousand_good_ones_is_parked_and_the_rest_complete(settings) -> None:
    from tests.integration.test_faults_inprocess import raw_event

    w = writer(settings)
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
    w.close()
    report("poison_among_1000", parked=1, dead_invalid_payload=1, **final)


def _dead(runtime) -> int:
    return scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'")


def test_sigterm_lets_the_worker_finish_the_handler_it_is_running_and_exit_zero(settings, redis_server) -> None:
    w = writer(settings)
    env = fault_env(settings, OZZY_TEST_WELCOME_DELAY="2", OZZY_TEST_COUNT_STARTS="1")
    client = redis.Redis.from_url(redis_server.url)
    with ozzy_processes(env, ["relay"]):
        worker = OzzyProcess(["worker", "--threads", "1"], env)
        open_accounts(w, 1, "graceful")
        # Wait until the handler has started (it sleeps 2 s before returning), then SIGTERM
        wait_until(lambda: client.hlen(f"{settings.redis_namespace}:test:welcome-starts") == 1, timeout=30,
                   interval=0.01)
        client.close()
        started = time.monotonic()
        code = worker.terminate(timeout=30)
        stopped_after = time.monotonic() - started
    assert code == 0, worker.output()
    assert counts(w)["welcome"] == 1, "the handler in flight completed before the worker exited"
    assert stopped_after > 1.0
    w.close()
    report("worker_sigterm_graceful", exit_code=code, stopped_after_s=round(stopped_after, 2))


def test_a_handler_longer_than_the_heartbeat_timeout_is_not_started_twice(settings, redis_server) -> None:
    """Lesson 2: a redelivery timeout shorter than the work must not run the work twice."""
    w = writer(settings)
    env = fault_env(settings, OZZY_TEST_WELCOME_DELAY="5", OZZY_TEST_COUNT_STARTS="1")
    with ozzy_processes(env, ["relay"], ["worker", "--threads", "1"], ["worker", "--threads", "1"]):
        open_accounts(w, 4, "long", per_commit=4)
        wait_all_handled(w, 4, timeout=90)
        final = assert_exactly_once(w, 4)
    starts = redis.Redis.from_url(redis_server.url).hgetall(f"{settings.redis_namespace}:test:welcome-starts")
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
            assert health_status == 503 and health["database"].startswith("error") and health["redis"] == "ok"
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
