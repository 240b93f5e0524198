#!/usr/bin/env python
"""Ozzy pipeline benchmark: relay dispatch rate, end-to-end handling rate, commit-to-handler
latency (fast channel on and off), idle worker CPU, and the outbox's cost on commit throughput.

    .venv/bin/python bench/pipeline.py            # the full run (a few minutes on 2 cores)
    .venv/bin/python bench/pipeline.py --quick    # a smoke test (well under a minute)

Each figure is measured next to a baseline in the same run (see docs/benchmarks.md). The script
creates its own PostgreSQL database (``ozzy_bench_<hex>``) and Redis key namespace
(``ozzybench-<hex>-*``) and removes both at the end, even on error; it starts real ``ozzy relay`` and
``ozzy worker`` processes and kills them at the end. Progress goes to stderr; the last line of stdout
is one JSON object with every figure.

Servers: ``OZZY_BENCH_DATABASE_URL`` (admin URL, default the local ``postgres`` database) and
``OZZY_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, sys.path[0] is bench/; the bench domain must be imported as ``bench.bench_app``
# (the name the ozzy processes use), never as a top-level ``bench_app``.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.common import BenchError, record_failure, percentile, wait_until  # noqa: E402
from bench.bench_app import HANDLER_NAME, TABLES, BenchItem, ItemCreated, record_item  # noqa: E402
from shared.db.engine import make_engine  # noqa: E402
from shared.db.migrate import migrate  # noqa: E402
from shared.model.base import Base  # noqa: E402
from shared.delivery.handlers import HandlerRegistry  # noqa: E402
from shared.delivery.relay import Relay, mark_dispatched  # noqa: E402
from shared.runtime import Runtime  # noqa: E402
from shared.config import Config, load_config  # noqa: E402
from shared.outbox.unit_of_work import SqlUnitOfWork as UnitOfWork  # noqa: E402

ADMIN_URL = os.environ.get("OZZY_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("OZZY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

TARGETS = {
    "relay_events_per_s_min": 10_000,
    "latency_fast_p50_ms_max": 10.0,
    "latency_fast_p99_ms_max": 50.0,
    "idle_worker_cpu_pct_max": 2.0,
    "outbox_cost_pct_max": 25.0,
}

_T0 = time.monotonic()


def say(msg: str) -> None:
    sys.stderr.write(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}\n")
    sys.stderr.flush()


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat."""
    data = Path(f"/proc/{pid}/stat").read_text()
    fields = data[data.rindex(")") + 2 :].split()  # fields from #3 (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    """The 1-minute load average: other work on the machine skews every figure (2 cores)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def r(value: float, digits: int = 1) -> float:
    return round(value, digits)


# --- database, Redis and processes -------------------------------------------------------------


class Environment:
    """A fresh database and a private Redis namespace root; ``close`` removes both."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:10]
        self.db_name = f"ozzy_bench_{self.tag}"
        self.ns_root = f"ozzybench-{self.tag}"
        self.admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.created = False
        self.runtimes: list[Runtime] = []
        self.settings: Config | None = None

    def setup(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        self.created = True
        url = make_url(ADMIN_URL).set(database=self.db_name).render_as_string(hide_password=False)
        self.settings = load_config(
            database_url=url,
            redis_url=REDIS_URL,
            redis_namespace=f"{self.ns_root}-main",
            handler_modules=("bench.bench_app",),
            migration_packages=(),
        )
        migrate(self.settings)
        engine = create_engine(self.settings.sqlalchemy_url)
        Base.metadata.create_all(engine, tables=TABLES)
        engine.dispose()
        say(f"database {self.db_name} created and migrated; Redis namespace {self.ns_root}-*")

    def section_settings(self, section: str, **update: Any) -> Config:
        assert self.settings is not None
        return self.settings.model_copy(update={"redis_namespace": f"{self.ns_root}-{section}", **update})

    def runtime(self, settings: Config) -> Runtime:
        spec = HandlerRegistry.from_modules(["bench.bench_app"])[HANDLER_NAME]
        rt = Runtime(settings, make_engine(settings), [spec])
        self.runtimes.append(rt)
        return rt

    def reset(self) -> None:
        """Empty every table and vacuum, so each section starts from the same state."""
        assert self.settings is not None
        engine = create_engine(self.settings.sqlalchemy_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("TRUNCATE bench_effects, bench_items, ozzy_deliveries, ozzy_outbox"))
            conn.execute(text("VACUUM ANALYZE"))
        engine.dispose()

    def vacuum_outbox(self) -> None:
        assert self.settings is not None
        engine = create_engine(self.settings.sqlalchemy_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("VACUUM ANALYZE ozzy_outbox"))
            conn.execute(text("VACUUM ANALYZE ozzy_deliveries"))
        engine.dispose()

    def close(self) -> None:
        for rt in self.runtimes:
            try:
                rt.close()
            except Exception as exc:  # noqa: BLE001
                say(f"closing a runtime failed: {exc}")
        try:
            client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
            keys = list(client.scan_iter(f"{self.ns_root}-*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
            client.close()
            say(f"deleted {len(keys)} Redis keys under {self.ns_root}-*")
        except redis.RedisError as exc:
            say(f"could not clean Redis namespace {self.ns_root}-*: {exc}")
        if self.created:
            try:
                with self.admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
                say(f"database {self.db_name} dropped")
            except Exception as exc:  # noqa: BLE001
                say(f"could not drop database {self.db_name}: {exc}")
        self.admin.dispose()


def process_env(settings: Config, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OZZY_")}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        OZZY_REDIS_NAMESPACE=settings.redis_namespace,
        OZZY_HANDLER_MODULES='["bench.bench_app"]',
        OZZY_MIGRATION_PACKAGES="[]",
        OZZY_LOG_LEVEL="INFO",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class OzzyProcess:
    """A real ``python -m shared.cli <command>`` child, its output in a temporary file."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.log = tempfile.NamedTemporaryFile(prefix=f"ozzy-bench-{args[0]}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.log.close()  # the child writes through its own descriptor; the path stays

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for_line(self, needle: str, timeout: float) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(f"ozzy {self.args[0]} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            return needle in self.output()

        wait_until(seen, timeout, interval=0.05, what=f"'{needle}' from ozzy {self.args[0]}")

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, wait, then SIGKILL its process group; the exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"ozzy {self.args[0]} (pid {self.pid}) did not stop on SIGTERM; killing it")
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        return self.proc.returncode

    def discard_log(self) -> None:
        Path(self.log.name).unlink(missing_ok=True)


@contextmanager
def ozzy_processes(env: dict[str, str], *commands: list[str]) -> Iterator[list[OzzyProcess]]:
    procs: list[OzzyProcess] = []
    try:
        for cmd in commands:
            procs.append(OzzyProcess(cmd, env))
        yield procs
    except BaseException:
        for p in procs:
            sys.stderr.write(f"\n----- ozzy {' '.join(p.args)} (last output) -----\n{p.output()[-4000:]}\n")
        raise
    finally:
        for p in procs:
            code = p.stop()
            if code not in (0, None):
                say(f"ozzy {p.args[0]} exited with {code}")
            p.discard_log()


def start_pipeline(env: dict[str, str], threads: int | None = None) -> Any:
    worker_cmd = ["worker"] + (["--threads", str(threads)] if threads else [])
    return ozzy_processes(env, ["relay"], worker_cmd)


def wait_ready(relay: OzzyProcess, worker: OzzyProcess) -> None:
    relay.wait_for_line("relay started", 60)
    relay.wait_for_line("fast channel connected", 60)
    worker.wait_for_line("worker started", 60)
    time.sleep(1.0)  # the relay's start-up drains (on connect and first poll) are over by now


# --- the write side ----------------------------------------------------------------------------


def publish_events(rt: Runtime, n: int, per_commit: int, start_seq: int = 0) -> None:
    """Commit ``n`` events (one handler each) through the framework, ``per_commit`` per unit of work."""
    done = 0
    while done < n:
        k = min(per_commit, n - done)
        with rt.unit_of_work() as uow:
            for i in range(done, done + k):
                seq = start_seq + i
                uow.publish(ItemCreated(item_id=uuid.uuid4(), name=f"item-{seq}", seq=seq))
            uow.commit()
        done += k


def scalar(rt: Runtime, query: str, **params: Any) -> Any:
    with rt.engine.connect() as conn:
        return conn.execute(text(query), params).scalar()


# --- 1. relay dispatch rate --------------------------------------------------------------------


def baseline_claim(table: str) -> Any:
    """The hand-written loops' claim on ``table`` (an outbox or a copy of one): the relay's,
    without the pending deliveries it records."""
    return text(
        f"""
        SELECT id, event_id, event_type, event_version, aggregate_type, aggregate_id,
               payload::text AS payload, metadata::text AS metadata, occurred_at
          FROM {table}
         WHERE dispatched_at IS NULL AND parked_at IS NULL
         ORDER BY id
         LIMIT :limit
           FOR UPDATE SKIP LOCKED
        """
    )


#: The baseline's claim on the outbox itself.
BASELINE_CLAIM = baseline_claim("ozzy_outbox")


def push_rows(client: Any, key: str, rows: Any) -> None:
    """The hand-written loops' send: one RPUSH per claimed row, all in one Redis pipeline."""
    pipe = client.pipeline(transaction=False)
    for row in rows:
        body = {
            "event_id": str(row.event_id),
            "type": row.event_type,
            "version": row.event_version,
            "payload": row.payload,
            "metadata": row.metadata,
            "occurred_at": row.occurred_at.isoformat(),
            "aggregate_type": row.aggregate_type,
            "aggregate_id": row.aggregate_id,
            "position": row.id,
        }
        pipe.rpush(key, json.dumps(body, separators=(",", ":")))
    pipe.execute()


def baseline_dispatch(rt: Runtime, batch_size: int, key: str) -> int:
    """The hand-written relay: same claim, one RPUSH per row in one pipeline per batch, mark, commit."""
    client = rt.redis
    total = 0
    while True:
        with rt.engine.connect() as conn:
            with conn.begin():
                rows = conn.execute(BASELINE_CLAIM, {"limit": batch_size}).all()
                if rows:
                    push_rows(client, key, rows)
                    mark_dispatched(conn, [row.id for row in rows])
        total += len(rows)
        if len(rows) < batch_size:
            return total


def section_relay(env: Environment, n: int, profile: bool, repeats: int) -> dict[str, Any]:
    say(f"== 1. relay dispatch rate: {n} committed events, one handler each")
    env.reset()
    settings = env.section_settings("relay")
    rt = env.runtime(settings)
    relay = Relay(rt)
    _ = rt.broker  # build the broker and actors outside the timed part
    batch = settings.batch_size
    key = f"{settings.redis_namespace}:baseline-list"

    # Warm-up of both paths (connections, script load, caches), untimed.
    publish_events(rt, 1000, 500)
    relay.drain()
    publish_events(rt, 1000, 500)
    baseline_dispatch(rt, batch, key)

    def timed(label: str, fn: Callable[[], int]) -> float:
        t_ins = time.perf_counter()
        publish_events(rt, n, 2000)
        say(f"   {n} events committed in {time.perf_counter() - t_ins:.1f}s; vacuum, then {label}")
        env.vacuum_outbox()
        started = time.perf_counter()
        sent = fn()
        elapsed = time.perf_counter() - started
        if sent != n:
            raise BenchError(f"{label} sent {sent} rows, expected {n}")
        left = scalar(rt, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL")
        if left:
            raise BenchError(f"{label} left {left} rows undispatched")
        say(f"   {label}: {sent} events in {elapsed:.2f}s = {sent / elapsed:,.0f} events/s")
        return elapsed

    queue_keys = [f"{settings.redis_namespace}:{HANDLER_NAME}", f"{settings.redis_namespace}:{HANDLER_NAME}.msgs"]
    base_times: list[float] = []
    relay_times: list[float] = []
    for rep in range(repeats):
        # Alternate the two, so drift on a shared machine hits both alike; report the median.
        say(f"   -- sample {rep + 1} of {repeats}")
        base_times.append(timed("baseline (claim, RPUSH pipeline, mark)", lambda: baseline_dispatch(rt, batch, key)))
        relay_times.append(timed("Relay.drain()", relay.drain))
        queued = rt.redis.hlen(queue_keys[1])
        pending = scalar(rt, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'pending'")
        if queued != n + 1000 * (rep == 0) or pending != n + 1000 + rep * n:
            raise BenchError(f"relay check failed: {queued} Dramatiq messages queued, {pending} pending deliveries")
        rt.redis.delete(key, *queue_keys)  # keep the shared Redis small between samples

    relay_s = statistics.median(relay_times)
    base_s = statistics.median(base_times)
    relay_rate = n / relay_s
    base_rate = n / base_s
    say(f"   median of {repeats}: relay {relay_rate:,.0f}/s, baseline {base_rate:,.0f}/s")
    result: dict[str, Any] = {
        "events": n,
        "batch_size": batch,
        "samples": repeats,
        "relay_seconds": r(relay_s, 3),
        "relay_events_per_s": r(relay_rate),
        "relay_events_per_s_samples": [r(n / t) for t in relay_times],
        "baseline_seconds": r(base_s, 3),
        "baseline_events_per_s": r(base_rate),
        "baseline_events_per_s_samples": [r(n / t) for t in base_times],
        "ratio_relay_to_baseline": r(relay_rate / base_rate, 3),
        "target_events_per_s": TARGETS["relay_events_per_s_min"],
        "target_met": relay_rate >= TARGETS["relay_events_per_s_min"],
    }
    if profile:
        result["profile"] = profile_relay(env, rt, relay, n)
    return result


def profile_relay(env: Environment, rt: Runtime, relay: Relay, n: int) -> dict[str, Any]:
    """An extra, untimed drain under cProfile: where the relay's time goes (printed to stderr)."""
    publish_events(rt, n, 2000, start_seq=10_000_000)
    env.vacuum_outbox()
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    relay.drain()
    prof.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(prof)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(35)
    out.write("\n")
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    say(f"   profile of one drain of {n} events ({wall:.2f}s under cProfile):\n{out.getvalue()}")
    wanted = {
        "pipeline.execute (Redis round trip + server)": ("client.py", "execute"),
        "enqueue_pipelined (messages onto pipeline)": ("broker.py", "enqueue_pipelined"),
        "Relay._send (older layout)": ("relay.py", "_send"),
        "dispatch.send (pipeline built and executed)": ("dispatch.py", "send"),
        "Message.encode": ("message.py", "encode"),
        "Message.copy": ("message.py", "copy"),
        "Script.__call__ (evalsha on pipeline)": ("core.py", "__call__"),
        "broker.emit_before": ("broker.py", "emit_before"),
        "envelope": ("relay.py", "_envelope"),
        "dispatch.envelope": ("dispatch.py", "envelope"),
        "uuid4": ("uuid.py", "uuid4"),
        "Connection.execute (SQL)": ("base.py", "execute"),
    }
    breakdown: dict[str, float] = {}
    for label, (fname, func) in wanted.items():
        cum = 0.0
        for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if file.endswith(fname) and name == func:
                cum = max(cum, ct)
        if cum:
            breakdown[label] = r(cum, 3)
    return {"events": n, "wall_s_under_profiler": r(wall, 3), "cumulative_s": breakdown}


# --- 2. handled per second, end to end ---------------------------------------------------------


def handler_baseline(rt: Runtime, n: int) -> float:
    """The handler body run in-process, one transaction per event; seconds for ``n``."""
    events = [ItemCreated(item_id=uuid.uuid4(), name=f"inproc-{i}", seq=i) for i in range(n)]

    def run(ev: ItemCreated) -> None:
        session = rt.session_factory()
        try:
            uow = UnitOfWork(session, managed=True)
            record_item(ev, uow)
            uow.flush()
            session.commit()
        finally:
            session.close()

    for ev in events[:50]:  # warm-up
        run(ItemCreated(item_id=uuid.uuid4(), name="warm", seq=-1))
    started = time.perf_counter()
    for ev in events:
        run(ev)
    return time.perf_counter() - started


def section_end_to_end(env: Environment, n: int) -> dict[str, Any]:
    say(f"== 2. handled per second, end to end: {n} events, one ozzy relay + one ozzy worker process")
    env.reset()
    settings = env.section_settings("e2e")
    observer = env.runtime(settings)
    # The writer's wake-ups go nowhere (closed port), and the relay's poll is far away: the events
    # wait in the outbox until we wake the relay ourselves, which starts the clock.
    writer = env.runtime(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"}))
    penv = process_env(settings, OZZY_POLL_INTERVAL="3600")
    with start_pipeline(penv) as (relay, worker):
        wait_ready(relay, worker)
        t_ins = time.perf_counter()
        publish_events(writer, n, 500)
        say(f"   {n} events committed in {time.perf_counter() - t_ins:.1f}s (relay not woken yet)")
        if scalar(observer, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL"):
            raise BenchError("the relay dispatched before it was woken; the measurement would be wrong")
        started = time.perf_counter()
        observer.redis.publish(f"{settings.redis_namespace}:relay:wake", b"1")
        dispatched_at: float | None = None
        deadline = started + max(120.0, n / 20)
        while True:
            row = None
            with observer.engine.connect() as conn:
                row = conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'),"
                        "       (SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL)"
                    )
                ).one()
            now = time.perf_counter()
            if dispatched_at is None and row[1] == 0:
                dispatched_at = now
            if row[0] >= n:
                break
            if now > deadline:
                raise BenchError(f"only {row[0]} of {n} deliveries done after {now - started:.0f}s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        effects = scalar(observer, "SELECT count(*) FROM bench_effects")
        not_done = scalar(observer, "SELECT count(*) FROM ozzy_deliveries WHERE status <> 'done'")
    say(f"   pipeline: {n} handled in {elapsed:.2f}s = {n / elapsed:,.0f}/s (relay done after {dispatched_at - started:.2f}s)")
    if effects != n or not_done:
        raise BenchError(f"expected {n} handler rows and no open deliveries, got {effects} and {not_done}")

    base_n = n
    base_s = handler_baseline(observer, base_n)
    say(f"   baseline (handler body in-process, one transaction each): {base_n / base_s:,.0f}/s")
    rate = n / elapsed
    base_rate = base_n / base_s
    return {
        "events": n,
        "worker_processes": 1,
        "worker_threads": settings.worker_threads,
        "seconds": r(elapsed, 3),
        "handled_per_s": r(rate),
        "relay_finished_after_s": r(dispatched_at - started, 3),
        "baseline_events": base_n,
        "baseline_per_s": r(base_rate),
        "ratio_pipeline_to_baseline": r(rate / base_rate, 3),
    }


# --- 3. latency and idle CPU -------------------------------------------------------------------


def latency_run(writer: Runtime, observer: Runtime, rate: float, duration: float, label: str) -> dict[str, Any]:
    n = max(1, int(rate * duration))
    committed: dict[uuid.UUID, float] = {}
    started = time.perf_counter()
    late = 0
    for i in range(n):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            late += 1
        item = BenchItem.create(f"{label}-{i}", i)
        with writer.unit_of_work() as uow:
            uow.add(item)
            uow.commit()
        committed[item.id] = time.time()
    ids = list(committed)

    def handled() -> bool:
        return scalar(observer, "SELECT count(*) FROM bench_effects WHERE item_id = ANY(:ids)", ids=ids) >= n

    wait_until(handled, timeout=60, interval=0.1, what=f"{n} handled events ({label})")
    with observer.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT item_id, started_at FROM bench_effects WHERE item_id = ANY(:ids)"), {"ids": ids}
        ).all()
    lat_ms = [(row.started_at - committed[row.item_id]) * 1000 for row in rows]
    result = {
        "events": n,
        "rate_per_s": rate,
        "p50_ms": r(percentile(lat_ms, 50), 2),
        "p90_ms": r(percentile(lat_ms, 90), 2),
        "p99_ms": r(percentile(lat_ms, 99), 2),
        "max_ms": r(max(lat_ms), 2),
        "min_ms": r(min(lat_ms), 2),
        "mean_ms": r(sum(lat_ms) / len(lat_ms), 2),
        "late_sends": late,
    }
    say(
        f"   {label}: n={n} p50={result['p50_ms']}ms p90={result['p90_ms']}ms p99={result['p99_ms']}ms "
        f"max={result['max_ms']}ms"
    )
    return result


def section_latency(env: Environment, rate: float, duration: float, idle_s: float) -> dict[str, Any]:
    say(f"== 3. commit-to-handler-start latency at {rate:g} events/s for {duration:g}s, fast channel on and off")
    env.reset()
    settings = env.section_settings("latency")
    observer = env.runtime(settings)
    writer_fast = env.runtime(settings)
    # Fast channel off: the writer's after-commit wake-up goes to a closed port and fails; the relay
    # and worker use the real Redis, so the relay finds the events at its poll (every poll_interval).
    writer_slow = env.runtime(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"}))
    penv = process_env(settings)
    with start_pipeline(penv) as (relay, worker):
        wait_ready(relay, worker)
        latency_run(writer_fast, observer, 20, 1, "warm-up")
        fast = latency_run(writer_fast, observer, rate, duration, "fast channel on")
        slow = latency_run(writer_slow, observer, rate, duration, "fast channel off (poll only)")

        time.sleep(2.0)  # let the last messages' acks and the relay's drains settle
        say(f"   idle CPU: measuring the idle worker (pid {worker.pid}) and relay (pid {relay.pid}) for {idle_s:g}s")
        w0, r0, t0 = cpu_seconds(worker.pid), cpu_seconds(relay.pid), time.monotonic()
        time.sleep(idle_s)
        w1, r1, t1 = cpu_seconds(worker.pid), cpu_seconds(relay.pid), time.monotonic()
        worker_pct = (w1 - w0) / (t1 - t0) * 100
        relay_pct = (r1 - r0) / (t1 - t0) * 100
        say(f"   idle worker {worker_pct:.2f}% of a core, idle relay {relay_pct:.2f}% of a core")
        threads = len(os.listdir(f"/proc/{worker.pid}/task"))

    return {
        "poll_interval_s": settings.poll_interval,
        "fast_channel_on": fast,
        "fast_channel_off": slow,
        "idle_seconds": r(t1 - t0, 2),
        "idle_worker_cpu_pct_of_core": r(worker_pct, 2),
        "idle_relay_cpu_pct_of_core": r(relay_pct, 2),
        "worker_os_threads": threads,
        "targets": {
            "fast_p50_ms_max": TARGETS["latency_fast_p50_ms_max"],
            "fast_p99_ms_max": TARGETS["latency_fast_p99_ms_max"],
            "idle_worker_cpu_pct_max": TARGETS["idle_worker_cpu_pct_max"],
        },
        "fast_p50_met": fast["p50_ms"] <= TARGETS["latency_fast_p50_ms_max"],
        "fast_p99_met": fast["p99_ms"] <= TARGETS["latency_fast_p99_ms_max"],
        "idle_worker_cpu_met": worker_pct < TARGETS["idle_worker_cpu_pct_max"],
    }


# --- 4. commit throughput with and without the outbox ------------------------------------------


def section_commits(env: Environment, n: int) -> dict[str, Any]:
    say(f"== 4. commit throughput: {n} sequential commits each way, the three ways taking turns commit by commit")
    env.reset()
    settings = env.section_settings("commits")
    rt = env.runtime(settings)

    def with_event(i: int) -> None:
        with rt.unit_of_work() as uow:
            uow.add(BenchItem.create(f"ev-{i}", i))
            uow.commit()

    def uow_without_event(i: int) -> None:
        with rt.unit_of_work() as uow:
            uow.add(BenchItem.create(f"noev-{i}", i, record=False))
            uow.commit()

    def plain_session(i: int) -> None:
        session = rt.session_factory()
        try:
            session.add(BenchItem.create(f"plain-{i}", i, record=False))
            session.commit()
        finally:
            session.close()

    variants = {"with_event": with_event, "uow_without_event": uow_without_event, "plain_session": plain_session}
    warmup = 100
    for fn in variants.values():
        for i in range(warmup):
            fn(-1 - i)
    # Turn by turn, so the machine's drift (other load, the disk's flush times) falls on all three
    # alike; the order rotates so none always follows the same one.
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for i in range(n):
        k = i % len(order)
        for name in order[k:] + order[:k]:
            started = time.perf_counter()
            variants[name](i)
            times[name].append(time.perf_counter() - started)
    rates = {name: n / sum(t) for name, t in times.items()}
    medians_ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
    cost = (1 - rates["with_event"] / rates["plain_session"]) * 100
    cost_vs_uow = (1 - rates["with_event"] / rates["uow_without_event"]) * 100
    cost_median = (1 - medians_ms["plain_session"] / medians_ms["with_event"]) * 100
    outbox_rows = scalar(rt, "SELECT count(*) FROM ozzy_outbox")
    for name, rate in rates.items():
        say(f"   {name}: {rate:,.0f} commits/s (median commit {medians_ms[name]:.3f} ms)")
    say(f"   outbox cost: {cost:.1f}% of commit throughput (vs plain session), {cost_vs_uow:.1f}% (vs uow, no event);"
        f" {cost_median:.1f}% by median commit time")
    if outbox_rows != n + warmup:
        raise BenchError(f"expected {n + warmup} outbox rows, found {outbox_rows}")
    return {
        "commits_each": n,
        "with_event_commits_per_s": r(rates["with_event"]),
        "plain_session_commits_per_s": r(rates["plain_session"]),
        "uow_without_event_commits_per_s": r(rates["uow_without_event"]),
        "median_commit_ms": {name: r(v, 3) for name, v in medians_ms.items()},
        "outbox_cost_pct": r(cost, 2),
        "outbox_cost_pct_vs_uow_without_event": r(cost_vs_uow, 2),
        "outbox_cost_pct_by_median": r(cost_median, 2),
        "target_cost_pct_max": TARGETS["outbox_cost_pct_max"],
        "target_met": cost <= TARGETS["outbox_cost_pct_max"],
    }


# --- main --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "uncommitted_changes": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def server_versions(env: Environment) -> dict[str, str]:
    out = {}
    with env.admin.connect() as conn:
        out["postgresql"] = conn.execute(text("SHOW server_version")).scalar()
    client = redis.Redis.from_url(REDIS_URL)
    out["redis"] = client.info("server")["redis_version"]
    client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke-test version (small counts)")
    parser.add_argument("--sections", default="1,2,3,4", help="comma-separated sections to run (default all)")
    parser.add_argument("--profile", action="store_true", help="also profile one relay drain (cProfile, stderr)")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # The fast-channel-off writers log one expected warning each; keep it quiet.
    logging.getLogger("shared.fastchannel").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on SIGTERM too

    q = args.quick
    sizes = {
        "relay_events": 2_000 if q else 20_000,
        "relay_samples": 1 if q else 5,
        "e2e_events": 500 if q else 5_000,
        "latency_rate": 50.0,
        "latency_seconds": 2.0 if q else 10.0,
        "idle_seconds": 3.0 if q else 10.0,
        "commits": 300 if q else 3_000,
    }
    result: dict[str, Any] = {
        "benchmark": "ozzy-pipeline",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": q,
        "machine": machine(),
        "code": code_version(),
        "sizes": sizes,
        "targets": TARGETS,
    }
    env = Environment()
    ok = False
    try:
        env.setup()
        result["servers"] = server_versions(env)
        runs: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
            ("1", "relay_dispatch", lambda: section_relay(env, sizes["relay_events"], args.profile, sizes["relay_samples"])),
            ("2", "end_to_end", lambda: section_end_to_end(env, sizes["e2e_events"])),
            (
                "3",
                "latency",
                lambda: section_latency(env, sizes["latency_rate"], sizes["latency_seconds"], sizes["idle_seconds"]),
            ),
            ("4", "commit_throughput", lambda: section_commits(env, sizes["commits"])),
        ]
        for number, key, run in runs:
            if number in sections:
                load_before = loadavg()
                result[key] = run()
                result[key]["loadavg_1m_before_after"] = [load_before, loadavg()]
        met: dict[str, bool] = {}
        if "relay_dispatch" in result:
            met["relay_events_per_s"] = result["relay_dispatch"]["target_met"]
        if "latency" in result:
            met["latency_fast_p50"] = result["latency"]["fast_p50_met"]
            met["latency_fast_p99"] = result["latency"]["fast_p99_met"]
            met["idle_worker_cpu"] = result["latency"]["idle_worker_cpu_met"]
        if "commit_throughput" in result:
            met["outbox_cost"] = result["commit_throughput"]["target_met"]
        result["targets_met"] = met
        result["all_targets_met"] = all(met.values())
        ok = True
    except BaseException as exc:
        record_failure(result, exc, say)
    finally:
        env.close()
        print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
