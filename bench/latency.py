#!/usr/bin/env python
"""Ozzy latency benchmark: the speeds the functional tests used to assert, measured here instead.

    .venv/bin/python bench/latency.py                          # every measurement
    .venv/bin/python bench/latency.py --only commits,flags     # some of them
    .venv/bin/python bench/latency.py --quick                  # fewer samples (about two minutes)

The tests check outcomes under generous deadlines (a commit during a Redis outage returns, a flag
reaches every process, the housekeeping lease passes on); how fast those outcomes come is measured
here, on the same machinery (real ``ozzy`` processes, private servers where one is broken), and
printed next to the bound a test used to assert, as ``ratio_to_old_bound`` (below 1 is within it).
Nothing here fails on a slow figure: the exit code is 0 when every measurement ran.

=================  ===========================================================  =======================
measurement        figure                                                       old bound (test)
=================  ===========================================================  =======================
``commits``        per-commit time with Redis up, refusing (closed port) and     20 commits < 20 x
                   silent (accepts, never answers); 20 commits; the slowest      notify_timeout
                   write                                                         (test_unit_of_work),
                                                                                 20 writes < 5 s
                                                                                 (test_pipeline_processes),
                                                                                 a write < 0.5 s
                                                                                 (test_faults)
``flags``          ms from a flag's change event to each process seeing the     < 100 ms; < 2 x poll
                   new value, fast channel on, and with every pub/sub           interval + 0.5 s
                   connection killed (found by the polls)                       (test_cluster)
``fast_channel``   s from killing every pub/sub connection to 20 new events     < 15 s (test_faults)
                   handled, with the relay's poll an hour away
``lease``          s from SIGKILL of the relay holding the housekeeping lease   < 10 s (test_cluster)
                   to the other relay holding it (sweep interval 1 s)
``loans_http``     s for 200 loan applications posted over HTTP to reach their  60 s (test_loans_http)
                   final state (real web, relay and worker)
=================  ===========================================================  =======================

Each measurement provisions its own database (``ozzy_test_<hex>``, migrated, with the test tables)
and Redis namespace, and removes both at the end, even on error; measurements that break Redis use a
private ``redis-server`` of their own. Servers: ``OZZY_BENCH_DATABASE_URL`` (admin URL) and
``OZZY_BENCH_REDIS_URL``, else the tests' choice (``OZZY_TEST_*``, the local servers, or embedded
ones). Progress goes to stderr; the last line of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench import common  # noqa: E402
from bench.common import BenchError, record_failure, percentile  # noqa: E402
from shared.config import Config  # noqa: E402
from shared.db.engine import make_engine  # noqa: E402
from shared.ops.accounts import create_token, create_user  # noqa: E402
from shared.runtime import Runtime  # noqa: E402
from tests import servers  # noqa: E402
from tests.domain import Account  # noqa: E402
from tests.e2e.faults import all_handled, fault_env, open_accounts, writer  # noqa: E402
from tests.e2e.procs import OzzyProcess, ozzy_processes, process_env  # noqa: E402

_T0 = time.monotonic()

#: What the functional tests used to assert, for the ``ratio_to_old_bound`` figures.
OLD_BOUNDS = {
    "twenty_commits_s": 20 * 0.05,  # 20 x the default notify_timeout
    "twenty_writes_redis_down_s": 5.0,
    "slowest_write_redis_down_s": 0.5,
    "flag_fast_channel_ms": 100.0,
    "flag_without_pubsub_ms": (2 * 1.0 + 0.5) * 1000,  # poll interval 1 s in the fault settings
    "fast_channel_recovery_s": 15.0,
    "lease_takeover_s": 10.0,
    "loans_http_200_s": 60.0,
}

CLUSTER_MODULES = '["tests.handlers", "tests.cluster_listeners"]'
NODES = ("web-1", "relay-1", "worker-1")


def say(message: str) -> None:
    sys.stderr.write(f"[latency {time.monotonic() - _T0:7.1f}s] {message}\n")
    sys.stderr.flush()


#: This script's waits poll every 20 ms (the shared default is 50 ms): its figures are times to an outcome.
wait_until = functools.partial(common.wait_until, interval=0.02)


def summary(values: list[float], digits: int = 2) -> dict[str, Any]:
    return {"n": len(values), "p50": round(percentile(values, 50), digits), "p90": round(percentile(values, 90), digits),
            "max": round(max(values), digits), "min": round(min(values), digits)}


def ratio(figure: float, bound_key: str) -> float:
    return round(figure / OLD_BOUNDS[bound_key], 3)


def scalar(runtime: Runtime, sql: str, **params: Any) -> Any:
    from sqlalchemy import text

    with runtime.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


# --- servers -------------------------------------------------------------------------------------


class Servers:
    """The database and Redis servers of the run, and fresh provisioned databases on them."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.database = os.environ.get("OZZY_BENCH_DATABASE_URL") or servers.database_server_url(stack)
        self.redis = os.environ.get("OZZY_BENCH_REDIS_URL") or servers.redis_server_url(stack)

    @contextmanager
    def provisioned(self, private_redis: bool = False) -> Iterator[tuple[Config, servers.PrivateRedis | None]]:
        """A migrated database with the test tables and a Redis namespace (on a private Redis, which
        the measurement may break, when asked); both removed afterwards."""
        with ExitStack() as stack:
            private = stack.enter_context(servers.private_redis()) if private_redis else None
            settings = stack.enter_context(servers.provisioned(self.database, private.url if private else self.redis))
            yield settings, private


# --- commits while Redis is unreachable -----------------------------------------------------------


@contextmanager
def redis_url_of(kind: str, up_url: str) -> Iterator[str]:
    """``up``: the real Redis; ``refused``: a closed port; ``silent``: accepts, never answers."""
    if kind == "up":
        yield up_url
    elif kind == "refused":
        yield f"redis://127.0.0.1:{servers.free_port()}/0"
    else:
        with socket.socket() as black_hole:
            black_hole.bind(("127.0.0.1", 0))
            black_hole.listen(512)
            yield f"redis://127.0.0.1:{black_hole.getsockname()[1]}/0"


def measure_commits(srv: Servers, samples: int) -> dict[str, Any]:
    """Per-commit seconds (one account, one event each) with Redis up, refused and silent, default
    notify_timeout; the three take turns commit by commit so machine drift hits all alike."""
    say(f"== commits: {samples} commits each with Redis up, refusing and silent")
    kinds = ("up", "refused", "silent")
    with srv.provisioned() as (settings, _), ExitStack() as stack:
        runtimes: dict[str, Runtime] = {}
        for kind in kinds:
            url = stack.enter_context(redis_url_of(kind, settings.redis_url))
            config = settings.model_copy(update={"redis_url": url})
            runtimes[kind] = Runtime(config, make_engine(config), {})
            stack.callback(runtimes[kind].close)

        def commit(rt: Runtime, owner: str) -> float:
            started = time.perf_counter()
            with rt.unit_of_work() as uow:
                uow.add(Account.open(owner))
                uow.commit()
            return time.perf_counter() - started

        for kind in kinds:  # warm-up: connections, statement caches, the wake-up thread
            for i in range(20):
                commit(runtimes[kind], f"warm-{kind}-{i}")
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for i in range(samples):
            for kind in kinds[i % 3:] + kinds[:i % 3]:
                times[kind].append(commit(runtimes[kind], f"{kind}-{i}"))
        notify_timeout = settings.notify_timeout
    result: dict[str, Any] = {"commits_each": samples, "notify_timeout_s": notify_timeout}
    up_median = statistics.median(times["up"])
    for kind in kinds:
        ms = [t * 1000 for t in times[kind]]
        twenty = statistics.median(times[kind]) * 20
        slowest = max(times[kind])
        result[kind] = {
            "commit_ms": summary(ms, 3),
            "twenty_commits_s_at_median": round(twenty, 4),
            "slowest_write_s": round(slowest, 4),
            "median_ratio_to_up": round(statistics.median(times[kind]) / up_median, 3),
        }
        if kind != "up":
            result[kind]["ratio_to_old_bound"] = {
                "twenty_commits_s": ratio(twenty, "twenty_commits_s"),
                "twenty_writes_redis_down_s": ratio(twenty, "twenty_writes_redis_down_s"),
                "slowest_write_redis_down_s": ratio(slowest, "slowest_write_redis_down_s"),
            }
        say(f"   {kind:8s} median {statistics.median(ms):.2f} ms, p90 {percentile(ms, 90):.2f} ms,"
            f" max {max(ms):.2f} ms ({result[kind]['median_ratio_to_up']}x up)")
    return result


# --- flag propagation ------------------------------------------------------------------------------


def measure_flags(srv: Servers, samples: int, cut_samples: int) -> dict[str, Any]:
    """Per process, ms from a flag's change event (its time in the log) to the process seeing the new
    value: ``samples`` flips with the fast channel, ``cut_samples`` with every pub/sub connection
    killed as soon as it is made (the relay and each process find the change by polling)."""
    from tests.e2e.test_cluster import PubSubCutter, _flag_sightings, _latencies, _listeners_connected, _put_flag

    say(f"== flags: {samples} flips with the fast channel, {cut_samples} with pub/sub cut")
    with srv.provisioned(private_redis=True) as (settings, private):
        assert private is not None
        w = writer(settings)
        try:
            with w.session_factory() as session:
                user = create_user(session, "ops", "correct horse battery")
                _, token = create_token(session, user, "latency-bench")
                session.commit()
            port = servers.free_port()
            base = f"http://127.0.0.1:{port}"

            def env(name: str, **extra: str) -> dict[str, str]:
                return fault_env(settings, OZZY_HANDLER_MODULES=CLUSTER_MODULES, OZZY_NODE_NAME=name, **extra)

            procs = [OzzyProcess(["web", "--host", "127.0.0.1"], env("web-1", PORT=str(port))),
                     OzzyProcess(["relay"], env("relay-1")), OzzyProcess(["worker"], env("worker-1"))]
            try:
                wait_until(lambda: _listeners_connected(w) == 3, timeout=60, what="three processes listening")

                def flip(enabled: bool, name: str) -> dict[str, float]:
                    status, _ = _put_flag(base, token, enabled, name)
                    if status != 200:
                        raise BenchError(f"PUT flag answered {status}")
                    expected = f"{name}={enabled}"
                    wait_until(lambda: _flag_sightings(w, expected) == 3, timeout=30, interval=0.005,
                               what=f"every process to see {expected}")
                    return _latencies(w, expected, name)

                flip(True, "warm-up")
                fast: list[float] = []
                for i in range(samples):
                    fast.extend(v * 1000 for v in flip(i % 2 == 0, f"bench.fast-{i}").values())
                    time.sleep(0.2)
                slow: list[float] = []
                with PubSubCutter(private.url) as cut:
                    time.sleep(0.3)
                    for i in range(cut_samples):
                        slow.extend(v * 1000 for v in flip(i % 2 == 0, f"bench.cut-{i}").values())
            finally:
                for p in procs:
                    p.terminate(timeout=30)
                    Path(p.log.name).unlink(missing_ok=True)
        finally:
            w.close()
    result = {
        "processes": 3,
        "fast_channel_ms": summary(fast, 1),
        "without_pubsub_ms": summary(slow, 1),
        "pubsub_connections_killed": cut.killed,
        "poll_interval_s": 1.0,
        "ratio_to_old_bound": {"fast_channel_max": ratio(max(fast), "flag_fast_channel_ms"),
                               "without_pubsub_max": ratio(max(slow), "flag_without_pubsub_ms")},
    }
    say(f"   fast channel: p50 {result['fast_channel_ms']['p50']} ms, max {result['fast_channel_ms']['max']} ms;"
        f" pub/sub cut: p50 {result['without_pubsub_ms']['p50']} ms, max {result['without_pubsub_ms']['max']} ms")
    return result


# --- fast channel recovery -------------------------------------------------------------------------


def measure_fast_channel(srv: Servers, samples: int) -> dict[str, Any]:
    """Seconds from killing every pub/sub connection to 20 events written just after it being handled
    (welcome and audit), with the relay's poll an hour away: the subscriptions heal by themselves."""
    say(f"== fast_channel: {samples} kills of every pub/sub connection, 20 events after each")
    seconds: list[float] = []
    with srv.provisioned(private_redis=True) as (settings, private):
        assert private is not None
        w = writer(settings)
        client = redis.Redis.from_url(private.url)
        try:
            with ozzy_processes(fault_env(settings, OZZY_POLL_INTERVAL="3600"), ["relay"], ["worker"]):
                wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_nodes WHERE kind = 'relay'"
                                             " AND (info->>'paused')::boolean = false"
                                             " AND info->'fast_channel'->>'state' = 'connected'") == 1,
                           timeout=60, what="the relay listening")
                total = open_accounts(w, 20, "warm")
                wait_until(lambda: all_handled(w, total), timeout=60, what="warm-up events handled")
                for i in range(samples):
                    killed = client.client_kill_filter(_type="pubsub")
                    started = time.monotonic()
                    total += open_accounts(w, 20, f"after-{i}")
                    wait_until(lambda: all_handled(w, total), timeout=120, interval=0.01,
                               what=f"20 events handled after kill {i + 1}")
                    seconds.append(time.monotonic() - started)
                    say(f"   kill {i + 1}: {killed} connections; 20 events handled after {seconds[-1]:.2f}s")
                    time.sleep(2)  # let the heartbeats settle before the next kill
        finally:
            client.close()
            w.close()
    return {"samples_s": [round(s, 3) for s in seconds], **{f"{k}_s": v for k, v in summary(seconds, 3).items()},
            "ratio_to_old_bound": ratio(max(seconds), "fast_channel_recovery_s")}


# --- housekeeping lease takeover -------------------------------------------------------------------


def measure_lease(srv: Servers, samples: int) -> dict[str, Any]:
    """Seconds from SIGKILL of the relay holding the housekeeping lease to another relay holding it
    (as seen in ``ozzy_nodes``, heartbeat 1 s, sweep interval 1 s); a new relay replaces the killed
    one before the next sample."""
    say(f"== lease: {samples} SIGKILLs of the relay holding the housekeeping lease")
    seconds: list[float] = []
    with srv.provisioned() as (settings, _):
        w = writer(settings)
        relays: list[OzzyProcess] = []
        try:
            def leaders() -> list[int]:
                with w.engine.connect() as conn:
                    return [r[0] for r in conn.exec_driver_sql(
                        "SELECT pid FROM ozzy_nodes WHERE kind = 'relay' AND stopped_at IS NULL"
                        " AND (info->>'leader')::boolean")]

            def start_relay(name: str) -> OzzyProcess:
                relay = OzzyProcess(["relay"], fault_env(settings, OZZY_NODE_NAME=name))
                relays.append(relay)
                return relay

            alive = [start_relay("relay-a"), start_relay("relay-b")]
            live_sql = ("SELECT count(*) FROM ozzy_nodes WHERE kind = 'relay' AND stopped_at IS NULL"
                        " AND heartbeat_at > now() - interval '3 seconds'")
            for i in range(samples):
                wait_until(lambda: len(leaders()) == 1 and scalar(w, live_sql) == 2,
                           timeout=60, what="one leader among two live relays")
                (leader_pid,) = leaders()
                leader = next(p for p in alive if p.proc.pid == leader_pid)
                leader.kill()
                killed = time.monotonic()
                wait_until(lambda: any(pid != leader_pid for pid in leaders()), timeout=60, interval=0.05,
                           what="another relay to take the lease")
                seconds.append(time.monotonic() - killed)
                say(f"   sample {i + 1}: lease taken over after {seconds[-1]:.2f}s")
                with w.engine.begin() as conn:  # the killed relay's row no longer counts
                    conn.exec_driver_sql("UPDATE ozzy_nodes SET stopped_at = now() WHERE pid = %s", (leader_pid,))
                alive.remove(leader)
                alive.append(start_relay(f"relay-spare-{i}"))
        finally:
            for p in relays:
                p.terminate(timeout=30)
                Path(p.log.name).unlink(missing_ok=True)
            w.close()
    return {"sweep_interval_s": 1.0, "samples_s": [round(s, 3) for s in seconds],
            **{f"{k}_s": v for k, v in summary(seconds, 3).items()},
            "ratio_to_old_bound": ratio(max(seconds), "lease_takeover_s")}


# --- loan applications over HTTP -------------------------------------------------------------------


def measure_loans_http(srv: Servers, n: int) -> dict[str, Any]:
    """Seconds for ``n`` loan applications, posted by 8 clients to a real ``ozzy web``, to reach their
    final state with one notification (real relay and worker, the example's handlers)."""
    from tests.e2e.test_loans_http import call

    say(f"== loans_http: {n} applications through web, relay and worker processes")
    with srv.provisioned() as (settings, _):
        port = servers.free_port()
        base = f"http://127.0.0.1:{port}"
        env = process_env(settings, OZZY_HANDLER_MODULES='["workers.handlers"]', PORT=str(port),
                          OZZY_LOG_LEVEL="WARNING")

        def healthy() -> bool:
            try:
                return call("GET", f"{base}/healthz")[0] == 200
            except OSError:
                return False

        with ozzy_processes(env, ["web", "--host", "127.0.0.1"], ["relay"], ["worker"]):
            wait_until(healthy, timeout=60, interval=0.2, what="web healthy")
            bodies = [{"applicant_name": f"Applicant {i}", "email": f"person{i}@example.com",
                       "amount": float(Decimal(1000 + 397 * i))} for i in range(n)]
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(lambda body: call("POST", f"{base}/loan-applications", body), bodies))
            posted = time.monotonic() - started
            if any(status != 201 for status, _ in responses):
                raise BenchError("an application was not accepted")
            ids = [body["id"] for _, body in responses]

            def final() -> bool:
                views = [call("GET", f"{base}/loan-applications/{i}")[1] for i in ids]
                return all(v["status"] in ("approved", "rejected") and v["notifications"] for v in views)

            wait_until(final, timeout=600, interval=0.2, what=f"{n} applications final")
            elapsed = time.monotonic() - started
    say(f"   {n} posted in {posted:.2f}s, all final after {elapsed:.2f}s")
    return {"applications": n, "posted_s": round(posted, 3), "all_final_s": round(elapsed, 3),
            "ratio_to_old_bound": ratio(elapsed * 200 / n, "loans_http_200_s")}


# --- main ------------------------------------------------------------------------------------------


MEASUREMENTS = ("commits", "flags", "fast_channel", "lease", "loans_http")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(MEASUREMENTS), help="comma-separated measurements (default all)")
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args(argv)
    chosen = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = set(chosen) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurements {sorted(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on SIGTERM too
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # The unreachable-Redis writers log one expected warning each; keep it quiet.
    logging.getLogger("shared.channel.pubsub").setLevel(logging.ERROR)

    q = args.quick
    result: dict[str, Any] = {
        "benchmark": "ozzy-latency",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": q,
        "cpus": os.cpu_count(),
        "old_bounds": OLD_BOUNDS,
    }
    ok = False
    try:
        with ExitStack() as stack:
            srv = Servers(stack)
            runs: dict[str, Callable[[], dict[str, Any]]] = {
                "commits": lambda: measure_commits(srv, 100 if q else 500),
                "flags": lambda: measure_flags(srv, 5 if q else 20, 2 if q else 5),
                "fast_channel": lambda: measure_fast_channel(srv, 2 if q else 5),
                "lease": lambda: measure_lease(srv, 1 if q else 3),
                "loans_http": lambda: measure_loans_http(srv, 50 if q else 200),
            }
            for name in chosen:
                result[name] = runs[name]()
        ok = True
    except BaseException as exc:  # noqa: BLE001 - reported in the JSON line
        record_failure(result, exc, say)
    finally:
        print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
