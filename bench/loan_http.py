#!/usr/bin/env python
"""The loan example through HTTP, the product as a user runs it (issue #16, target 5).

    .venv/bin/python bench/loan_http.py            # 20 s of throughput, 200 calm samples
    .venv/bin/python bench/loan_http.py --quick    # a smoke test (a few seconds, 20 samples)

Real ``ozzy web``, ``ozzy relay`` and ``ozzy worker`` processes serve the example
(``services/loans``, ``workers/handlers``): ``POST /loan-applications`` commits the application and
its ``LoanApplicationSubmitted``; three handler hops follow, each through the outbox, the relay and
a worker: ``loans.credit_check`` → ``CreditChecked`` → ``loans.decide`` → ``LoanApproved`` or
``LoanRejected`` → ``loans.notify_approved`` / ``loans.notify_rejected``, whose notification row is
the final state the API shows (``GET /loan-applications/<id>``: a decided status and a notification).

1. **throughput**: 8 client threads, each on its own keep-alive HTTP connection, post applications
   for ``--seconds``; submissions/s is the 201s over that window; completions/s is the
   notifications committed in the window over its length, and ``drain_s`` how long the backlog
   left at its end took to finish;
2. **calm latency**: one application at a time (the next is posted ``--gap`` ms after the previous
   one is final): submit → final, from the client's send to the moment the notification's commit is
   seen. The end is observed, not polled: the bench adds, in its private database only, an
   ``AFTER INSERT`` trigger on ``loan_notifications`` that runs ``pg_notify`` (delivered at the
   commit) and LISTENs for it.

The split per hop comes from the timestamps the system itself records, one timeline per
application (all on this machine's clock):

=====================  ==================================================================
``web``                client send → ``LoanApplicationSubmitted.occurred_at`` (the request
                       up to the event, in the web process)
``hopN.to_relay``      the hop's event ``occurred_at`` → its ``ozzy_outbox.dispatched_at``:
                       the rest of the transaction and its COMMIT, the relay's wake-up, the
                       relay's claim (``dispatched_at`` is the relay transaction's ``now()``)
``hopN.to_handler``    ``dispatched_at`` → the delivery's ``completed_at``: the relay's
                       batch (Redis, mark, COMMIT, then the ordered handler's message), Redis,
                       the worker's fetch, up to the handler transaction's start
                       (``completed_at`` is that transaction's ``now()``)
``hopN.handler``       the handler's transaction start → the next event's ``occurred_at``
                       (for hop 3: the notification's ``sent_at``)
``final_commit``       ``sent_at`` → the notification's commit seen by the LISTEN
=====================  ==================================================================

The script creates ``ozzy_test_<hex>`` (migrated) and a Redis namespace, and removes both at the end,
even on error. Servers: ``OZZY_BENCH_DATABASE_URL`` (admin URL) and ``OZZY_BENCH_REDIS_URL``, else the
tests' choice. Progress goes to stderr, a table to stdout; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from bench.common import BenchError, record_failure, percentile, wait_until  # noqa: E402
from shared.config import Config  # noqa: E402
from tests import servers  # noqa: E402
from tests.e2e.procs import ozzy_processes, process_env  # noqa: E402

_T0 = time.monotonic()

#: Issue #16's target for this bench.
TARGETS = {"calm_submit_to_final_p50_ms_max": 15.0}

CLIENTS = 8
CHANNEL = "bench_loan_final"
#: The hops in order: the event that starts it and the handlers that take it.
HOPS = (
    ("loans.application_submitted", ("loans.credit_check",)),
    ("loans.credit_checked", ("loans.decide",)),
    ("loans.approved|loans.rejected", ("loans.notify_approved", "loans.notify_rejected")),
)
SEGMENTS = ("web", *(f"hop{k}.{part}" for k in (1, 2, 3) for part in ("to_relay", "to_handler", "handler")),
            "final_commit")

#: The bench's own observer, in its private database only: the notification's commit, as it happens.
OBSERVER = f"""
CREATE FUNCTION bench_loan_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.application_id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_loan_final AFTER INSERT ON loan_notifications
    FOR EACH ROW EXECUTE FUNCTION bench_loan_final();
"""


def say(message: str) -> None:
    sys.stderr.write(f"[loan_http {time.monotonic() - _T0:7.1f}s] {message}\n")
    sys.stderr.flush()


def summary(values: list[float], digits: int = 2) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(percentile(values, 50), digits), "p90": round(percentile(values, 90), digits),
            "p99": round(percentile(values, 99), digits), "max": round(max(values), digits)}


def body(i: int) -> bytes:
    return json.dumps({"applicant_name": f"Applicant {i}", "email": f"person{i}@example.com",
                       "amount": 1000 + 397 * (i % 2000)}).encode()


class Client:
    """One keep-alive HTTP/1.1 connection to ``ozzy web``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, payload: bytes | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, payload, headers)
                response = self.conn.getresponse()
                return response.status, json.loads(response.read() or b"null")
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                self.conn.close()  # the server closed an idle connection: open a new one, once
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def submit(self, i: int) -> str:
        status, answer = self.request("POST", "/loan-applications", body(i))
        if status != 201:
            raise BenchError(f"POST /loan-applications answered {status}: {answer}")
        return str(answer["id"])

    def close(self) -> None:
        self.conn.close()


# --- the system under test ------------------------------------------------------------------------


class System:
    """The running processes: the web's port, and each process's pid by command."""

    def __init__(self, port: int, pids: dict[str, int]) -> None:
        self.port, self.pids = port, pids

    def cpu_seconds(self) -> dict[str, float]:
        """utime + stime of each process (all its threads) so far, from /proc/<pid>/stat."""
        out = {}
        for name, pid in self.pids.items():
            data = Path(f"/proc/{pid}/stat").read_text()
            fields = data[data.rindex(")") + 2 :].split()  # fields from #3 (state) on
            out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return out

    def cpu_ms_per(self, before: dict[str, float], n: int) -> dict[str, float]:
        """CPU ms each process spent per application since ``before``."""
        now = self.cpu_seconds()
        return {name: round((now[name] - before[name]) * 1000 / max(n, 1), 2) for name in now}


@contextmanager
def running_system(settings: Config, web_threads: int | None, **extra_env: str) -> Iterator[System]:
    """Web, relay and worker processes on ``settings``, once the web is healthy.
    ``extra_env``: more environment for the three (a variant's settings, for an A/B)."""
    port = servers.free_port()
    env = process_env(settings, **{"OZZY_HANDLER_MODULES": '["workers.handlers"]', "PORT": str(port),
                                   "OZZY_MIGRATION_PACKAGES": '["services.migrations"]', "OZZY_LOG_LEVEL": "WARNING",
                                   **extra_env})
    web = ["web", "--host", "127.0.0.1"] + (["--threads", str(web_threads)] if web_threads else [])
    with ozzy_processes(env, web, ["relay"], ["worker"]) as procs:
        client = Client(port)

        def healthy() -> bool:
            for p in procs:
                if p.proc.poll() is not None:
                    raise BenchError(f"ozzy {p.args[0]} exited with {p.proc.returncode}: {p.output()[-2000:]}")
            try:
                return client.request("GET", "/healthz")[0] == 200
            except OSError:
                return False

        wait_until(healthy, timeout=60, interval=0.2, what="web healthy")
        client.close()
        yield System(port, {p.args[0]: p.proc.pid for p in procs})


def install_observer(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(OBSERVER)


def driver_url(settings: Config) -> str:
    return make_url(settings.sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


def notified_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM loan_notifications")).scalar_one())


# --- 1. throughput --------------------------------------------------------------------------------


def throughput(system: System, engine: Engine, seconds: float) -> dict[str, Any]:
    """``CLIENTS`` threads post for ``seconds``; then wait until every application is final."""
    say(f"== throughput: {CLIENTS} clients post for {seconds:.0f} s")
    before = notified_count(engine)
    stop = threading.Event()
    counts = [0] * CLIENTS
    errors: list[BaseException] = []

    def client_loop(k: int) -> None:
        client = Client(system.port)
        try:
            i = k
            while not stop.is_set():
                client.submit(1_000_000 + i)
                counts[k] += 1
                i += CLIENTS
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(CLIENTS)]
    load_before = os.getloadavg()[0]
    cpu_before = system.cpu_seconds()
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    window = time.monotonic() - started
    ended_wall = time.time()
    if errors:
        raise BenchError(f"a client failed: {errors[0]!r}")
    submitted = sum(counts)
    with engine.connect() as conn:
        in_window = int(conn.execute(text("SELECT count(*) FROM loan_notifications WHERE sent_at <= :end"),
                                     {"end": datetime.fromtimestamp(ended_wall, timezone.utc)}).scalar_one()) - before
    backlog = submitted - in_window
    wait_until(lambda: notified_count(engine) - before >= submitted, timeout=max(120.0, submitted / 20),
               interval=0.1, what=f"{submitted} applications final")
    drain = time.time() - ended_wall
    cpu = system.cpu_ms_per(cpu_before, submitted)
    load = os.getloadavg()[0]
    say(f"   {submitted} submitted in {window:.1f}s ({submitted / window:.0f}/s), {in_window} final in the window, "
        f"the rest {drain:.1f}s later")
    return {
        "clients": CLIENTS, "window_s": round(window, 2), "submitted": submitted,
        "submissions_per_s": round(submitted / window, 1),
        "completed_in_window": in_window, "completions_per_s": round(in_window / window, 1),
        "backlog_at_end": backlog, "drain_s": round(drain, 2),
        "overall_completions_per_s": round(submitted / (window + drain), 1),
        "cpu_ms_per_application": cpu,
        "loadavg_1m_before_after": [round(load_before, 2), round(load, 2)],
    }


# --- 2. calm latency ------------------------------------------------------------------------------


class CalmProbe:
    """Posts one application and waits for its notification's commit, seen by a LISTEN."""

    def __init__(self, port: int, settings: Config) -> None:
        self.client = Client(port)
        self.listener = psycopg.connect(driver_url(settings), autocommit=True)
        self.listener.execute(f"LISTEN {CHANNEL}")
        #: Per application: the client's send, its 201, the commit seen (epoch seconds).
        self.timeline: dict[str, dict[str, float]] = {}

    def sample(self, i: int) -> None:
        sent = time.time()
        app_id = self.client.submit(i)
        answered = time.time()
        final = wait_notification(self.listener, app_id, timeout=30)
        self.timeline[app_id] = {"sent": sent, "answered": answered, "final": final}

    def close(self) -> None:
        self.client.close()
        self.listener.close()


def calm_latency(system: System, settings: Config, engine: Engine, samples: int, gap_s: float) -> dict[str, Any]:
    say(f"== calm latency: {samples} applications one at a time, {gap_s * 1000:.0f} ms apart")
    probe = CalmProbe(system.port, settings)
    cpu_before = system.cpu_seconds()
    try:
        for i in range(samples):
            probe.sample(i)
            time.sleep(gap_s)
    finally:
        probe.close()
    cpu = system.cpu_ms_per(cpu_before, samples)
    return {**latency_figures(probe.timeline, recorded_times(engine, list(probe.timeline))),
            "cpu_ms_per_application": cpu}


def wait_notification(conn: psycopg.Connection[Any], app_id: str, timeout: float) -> float:
    """The wall time at which the notification of ``app_id`` reached this LISTEN connection."""
    deadline = time.monotonic() + timeout
    while True:
        for note in conn.notifies(timeout=0, stop_after=None):  # what has arrived already
            if note.payload == app_id:
                return time.time()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"application {app_id} not final after {timeout:.0f}s")
        select.select([conn.fileno()], [], [], remaining)


def recorded_times(engine: Engine, ids: list[str]) -> dict[str, dict[str, float]]:
    """Per application, the system's own timestamps (epoch seconds) along its three hops."""
    query = text(
        """
        SELECT o.aggregate_id AS app, o.event_type, extract(epoch FROM o.occurred_at) AS occurred,
               extract(epoch FROM o.dispatched_at) AS dispatched,
               extract(epoch FROM d.completed_at) AS started, d.handler
          FROM ozzy_outbox o
          LEFT JOIN ozzy_deliveries d ON d.event_id = o.event_id
               AND d.handler IN ('loans.credit_check', 'loans.decide', 'loans.notify_approved',
                                 'loans.notify_rejected')
         WHERE o.aggregate_id = ANY(:ids)
           AND o.event_type IN ('loans.application_submitted', 'loans.credit_checked', 'loans.approved',
                                'loans.rejected')
        """
    )
    sent = text("SELECT application_id::text AS app, extract(epoch FROM sent_at) AS sent_at "
                "FROM loan_notifications WHERE application_id::text = ANY(:ids)")
    out: dict[str, dict[str, float]] = {i: {} for i in ids}
    with engine.connect() as conn:
        for row in conn.execute(query, {"ids": ids}):
            k = next(n for n, (types, _) in enumerate(HOPS, 1) if row.event_type in types.split("|"))
            times = out[row.app]
            times[f"e{k}.occurred"], times[f"e{k}.dispatched"] = float(row.occurred), float(row.dispatched)
            if row.started is not None:
                times[f"e{k}.started"] = float(row.started)
        for row in conn.execute(sent, {"ids": ids}):
            out[row.app]["sent_at"] = float(row.sent_at)
    return out


def latency_figures(timeline: dict[str, dict[str, float]], hops: dict[str, dict[str, float]]) -> dict[str, Any]:
    ms = 1000.0
    total, http_rt = [], []
    segments: dict[str, list[float]] = {name: [] for name in SEGMENTS}
    for app, t in timeline.items():
        h = hops[app]
        total.append((t["final"] - t["sent"]) * ms)
        http_rt.append((t["answered"] - t["sent"]) * ms)
        points = [t["sent"]]
        for k in (1, 2, 3):
            points += [h[f"e{k}.occurred"], h[f"e{k}.dispatched"], h[f"e{k}.started"]]
        points += [h["sent_at"], t["final"]]
        for name, a, b in zip(SEGMENTS, points, points[1:]):
            segments[name].append((b - a) * ms)
    split = {name: summary(values) for name, values in segments.items()}
    per_hop = {f"hop{k}": round(sum(split[f"hop{k}.{p}"]["p50"] for p in ("to_relay", "to_handler", "handler")), 2)
               for k in (1, 2, 3)}
    return {
        "samples": len(total),
        "submit_to_final_ms": summary(total),
        "http_round_trip_ms": summary(http_rt),
        "split_ms": split,
        "hop_p50_sum_ms": per_hop,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# --- report ---------------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    lines = []
    tp = result.get("throughput")
    if tp:
        lines += [f"throughput ({tp['clients']} clients, {tp['window_s']} s): {tp['submissions_per_s']} submissions/s, "
                  f"{tp['completions_per_s']} completions/s in the window, backlog {tp['backlog_at_end']} "
                  f"drained in {tp['drain_s']} s; CPU ms per application {tp['cpu_ms_per_application']}", ""]
    lat = result.get("calm")
    if lat:
        tot, rt = lat["submit_to_final_ms"], lat["http_round_trip_ms"]
        lines.append(f"calm submit -> final ({lat['samples']} samples): p50 {tot['p50']} ms, p90 {tot['p90']} ms, "
                     f"p99 {tot['p99']} ms (target p50 <= {TARGETS['calm_submit_to_final_p50_ms_max']} ms); "
                     f"HTTP round trip p50 {rt['p50']} ms")
        lines.append(f"{'segment':<20}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
        for name in SEGMENTS:
            s = lat["split_ms"][name]
            lines.append(f"{name:<20}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}")
        lines.append(f"{'sum of p50s':<20}{sum(lat['split_ms'][n]['p50'] for n in SEGMENTS):>9.2f}")
        lines.append(f"CPU ms per application (calm): {lat['cpu_ms_per_application']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke test: 3 s of throughput, 20 samples")
    parser.add_argument("--seconds", type=float, default=None, help="throughput window (default 20, quick 3)")
    parser.add_argument("--samples", type=int, default=None, help="calm samples (default 200, quick 20)")
    parser.add_argument("--gap", type=float, default=50.0, help="ms between a final state and the next post")
    parser.add_argument("--web-threads", type=int, default=None, help="ozzy web --threads (default its own)")
    parser.add_argument("--only", default="calm,throughput", help="calm, throughput or both (default both)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 20.0)
    samples = args.samples or (20 if args.quick else 200)
    chosen = {p.strip() for p in args.only.split(",")}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on SIGTERM too
    result: dict[str, Any] = {
        "benchmark": "ozzy-loan-http", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "cpus": os.cpu_count(), "targets": TARGETS,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    ok = False
    try:
        with ExitStack() as stack:
            database = os.environ.get("OZZY_BENCH_DATABASE_URL") or servers.database_server_url(stack)
            redis_url = os.environ.get("OZZY_BENCH_REDIS_URL") or servers.redis_server_url(stack)
            settings = stack.enter_context(servers.provisioned(database, redis_url))
            result["database"] = make_url(settings.sqlalchemy_url).database
            engine = create_engine(settings.sqlalchemy_url, poolclass=NullPool)
            stack.callback(engine.dispose)
            install_observer(engine)
            system = stack.enter_context(running_system(settings, args.web_threads))
            warm = Client(system.port)
            for i in range(5):  # warm the processes' pools and caches
                warm.submit(-1 - i)
            warm.close()
            if "calm" in chosen:  # first, while nothing else is queued
                wait_until(lambda: notified_count(engine) >= 5, timeout=60, what="warm-up final")
                time.sleep(0.5)
                result["calm"] = calm_latency(system, settings, engine, samples, args.gap / 1000)
            if "throughput" in chosen:
                result["throughput"] = throughput(system, engine, seconds)
        ok = True
    except BaseException as exc:  # noqa: BLE001 - reported in the JSON line
        record_failure(result, exc, say)
    finally:
        if ok:
            print(table(result), flush=True)
            calm = result.get("calm")
            if calm:
                result["meets_target"] = (calm["submit_to_final_ms"]["p50"]
                                          <= TARGETS["calm_submit_to_final_p50_ms_max"])
        print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
