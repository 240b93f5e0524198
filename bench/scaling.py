#!/usr/bin/env python
"""More processes: 2 workers against 1, 2 relays against 1, and what each event costs each part of
the system, as inputs for the model in ``docs/scaling.md`` (issue #16).

    .venv/bin/python bench/scaling.py             # the full run (a few minutes on 2 cores)
    .venv/bin/python bench/scaling.py --quick     # a smoke test (small counts, one round)
    .venv/bin/python bench/scaling.py --servers given   # the servers of OZZY_BENCH_DATABASE_URL / _REDIS_URL

By default the script starts a PostgreSQL (the same binaries as the local server, default settings)
and a ``redis-server`` of its own on free ports, and removes them at the end: write-ahead-log bytes,
Redis command counts and the servers' CPU are server-wide figures, and only private servers keep
them to this bench's events. With ``--servers given`` they include whatever else the servers did.

In each round, in alternating order (several rounds, medians):

1. **drain, 1 vs 2 workers**: a backlog of events is committed and relayed into a staging Redis
   namespace; ``ozzy worker`` processes (``--threads 8`` each) start on an empty queue; then the
   backlog is moved under their namespace (``RENAME``, O(1)) and they are woken. handled/s is
   (n - 1) over the spread of the handlers' start times; the CPU, WAL and Redis figures are taken
   from the move to the last handler;
2. **relay, 1 vs 2 relays**: events are committed with no wake-up; ``ozzy relay`` processes (poll
   every hour) are woken at once through their channel; events/s is n over wake-up to the last row
   dispatched. Meanwhile a sampler reads ``pg_locks`` (the dispatch lock: held, waited for) and
   ``pg_stat_activity`` (what the relays' backends are doing) every 2 ms.

Once per run: 3. the relay's batch taken apart in-process (claim, Redis send, mark with the lock,
COMMIT), which gives the lock hold time per batch without contention; 4. the write side's WAL per
event; 5. ``redis-benchmark`` and an fdatasync loop on this disk: the ceilings the model divides by.

The last line of stdout is one JSON object with every figure; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

import bench.pipeline as pl  # noqa: E402
import shared.delivery.relay as relay_module  # noqa: E402
from bench.common import BenchError, record_failure, percentile, wait_until  # noqa: E402
from shared.channel.pubsub import queue_channel, relay_channel  # noqa: E402
from shared.db.sql.outbox import DISPATCH_LOCK_KEY  # noqa: E402
from shared.delivery.relay import Relay  # noqa: E402

say = pl.say
r = pl.r

WORKER_THREADS = 8  # ``ozzy worker``'s default
SAMPLE_INTERVAL = 0.002  # seconds between two samples of pg_locks / pg_stat_activity
BENCH_APP_NAME = "ozzy-scaling-bench"  # the bench's own connections, left out of the samples


# --- private servers ---------------------------------------------------------------------------


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PrivateServers:
    """A PostgreSQL cluster (``initdb`` defaults, fsync and synchronous_commit on) and a Redis with
    no persistence, on free local ports, in a temporary folder; ``close`` stops and removes both."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ozzy-scaling-"))
        self.data = self.dir / "pg"
        self.pg_port = pl.closed_port()
        self.redis_port = pl.closed_port()
        self.bindir = Path(os.path.realpath(shutil.which("pg_ctl") or "pg_ctl")).parent
        self.redis: subprocess.Popen[bytes] | None = None
        self.pg_started = False

    def start(self) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        subprocess.run(_as_postgres_user([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                          "--auth=trust", "-E", "UTF8"]), check=True, capture_output=True)
        options = f"-p {self.pg_port} -c listen_addresses=127.0.0.1 -k {self.dir}"
        subprocess.run(_as_postgres_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                                          "-l", str(self.dir / "pg.log"), "-w", "start"]),
                       check=True, capture_output=True)
        self.pg_started = True
        self.redis = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.redis_port)
        wait_until(lambda: _pings(client), 10, what="the private redis-server")
        client.close()
        say(f"private PostgreSQL on port {self.pg_port} and Redis on port {self.redis_port} in {self.dir}")

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def close(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(10)
        if self.pg_started:
            subprocess.run(_as_postgres_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                              "-w", "stop"]), capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# --- resource counters -------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    data = Path(f"/proc/{pid}/stat").read_text()
    return data[data.rindex(")") + 2 :].split()  # fields from #3 (state) on


def postgres_cpu_seconds(postmaster: int) -> float:
    """The cluster's CPU: the postmaster, its exited children (cutime/cstime) and its live ones."""
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(int(f) for f in _stat_fields(postmaster)[11:15]) / tick
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat_fields(int(entry.name))
            except (OSError, ValueError):
                continue
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat: other users' load included."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def known(value: float) -> float | None:
    return None if math.isnan(value) else value


class Counters:
    """Server-wide counters read before and after a phase: WAL position, Redis commands (per
    command, from INFO commandstats), the servers' and the given processes' CPU."""

    def __init__(self, env: pl.Environment, postmaster: int | None) -> None:
        self.env = env
        self.postmaster = postmaster
        self.redis = redis.Redis.from_url(pl.REDIS_URL)
        self.redis_pid = int(self.redis.info("server")["process_id"])
        self.redis_local = Path(f"/proc/{self.redis_pid}").exists()

    def read(self, pids: list[int]) -> dict[str, Any]:
        with self.env.admin.connect() as conn:
            lsn = conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one()
        stats = self.redis.info("commandstats")
        return {
            "t": time.perf_counter(),
            "lsn": lsn,
            "redis_calls": {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()},
            "redis_usec": sum(int(v["usec"]) for v in stats.values()),
            "redis_cpu": pl.cpu_seconds(self.redis_pid) if self.redis_local else float("nan"),
            "pg_cpu": postgres_cpu_seconds(self.postmaster) if self.postmaster else float("nan"),
            "procs_cpu": sum(pl.cpu_seconds(p) for p in pids),
            "machine": machine_busy(),
        }

    def per_event(self, before: dict[str, Any], after: dict[str, Any], events: int, label: str) -> dict[str, Any]:
        with self.env.admin.connect() as conn:
            wal = conn.execute(text("SELECT pg_wal_lsn_diff(:a, :b)"), {"a": after["lsn"], "b": before["lsn"]}).scalar_one()
        calls = Counter(after["redis_calls"])
        calls.subtract(before["redis_calls"])
        calls["info"] -= 1  # the read itself
        busy = (after["machine"][0] - before["machine"][0]) / max(1, after["machine"][1] - before["machine"][1])
        return {
            "wal_bytes_per_event": r(float(wal) / events),
            "redis_commands_per_event": r(sum(calls.values()) / events, 2),
            "redis_commands": {k: v for k, v in sorted(calls.items()) if v > 0},
            "redis_server_us_per_event": r((after["redis_usec"] - before["redis_usec"]) / events, 2),
            # None where the server's processes are not readable here (--servers given, remote)
            "redis_cpu_ms_per_event": known(r((after["redis_cpu"] - before["redis_cpu"]) * 1000 / events, 4)),
            "postgres_cpu_ms_per_event": known(r((after["pg_cpu"] - before["pg_cpu"]) * 1000 / events, 4)),
            f"{label}_cpu_ms_per_event": r((after["procs_cpu"] - before["procs_cpu"]) * 1000 / events, 4),
            "machine_busy_pct": r(busy * 100),
        }

    def close(self) -> None:
        self.redis.close()


# --- the dispatch lock sampler -----------------------------------------------------------------


SAMPLE = """
SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %(hi)s::oid
           AND objid = %(lo)s::oid AND objsubid = 1 AND granted) AS held,
       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %(hi)s::oid
           AND objid = %(lo)s::oid AND objsubid = 1 AND NOT granted) AS waiting,
       ARRAY(SELECT state || '/' || coalesce(wait_event_type, 'cpu') || '/' || coalesce(wait_event, '-')
               FROM pg_stat_activity
              WHERE datname = current_database() AND backend_type = 'client backend'
                AND pid <> pg_backend_pid() AND application_name <> %(me)s AND state <> 'idle') AS busy
"""


def conninfo(sqlalchemy_url: str) -> str:
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class LockSampler:
    """Samples the dispatch lock and the relays' backends every :data:`SAMPLE_INTERVAL` seconds."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(conninfo(url), autocommit=True, application_name=BENCH_APP_NAME)
        self.backend_pid = int(self.conn.info.backend_pid)
        self.params = {"hi": DISPATCH_LOCK_KEY >> 32, "lo": DISPATCH_LOCK_KEY & 0xFFFFFFFF, "me": BENCH_APP_NAME}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = self.held = self.contended = 0
        self.states: Counter[str] = Counter()

    def start(self) -> None:
        self.samples = self.held = self.contended = 0
        self.states = Counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self.conn.cursor() as cur:
            while not self._stop.is_set():
                cur.execute(SAMPLE, self.params)
                held, waiting, busy = cur.fetchone()  # type: ignore[misc]
                self.samples += 1
                self.held += held > 0
                self.contended += waiting > 0
                self.states.update(busy)
                time.sleep(SAMPLE_INTERVAL)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        n = max(1, self.samples)
        slots = max(1, sum(self.states.values()))
        return {
            "samples": self.samples,
            "lock_held_share": r(self.held / n, 3),
            "lock_waited_for_share": r(self.contended / n, 3),
            # Of the relays' backends' busy time (not idle between batches): what they were doing.
            "backend_states_share": {k: r(v / slots, 3) for k, v in self.states.most_common(8)},
        }

    def close(self) -> None:
        self.conn.close()


# --- the bench ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, env: pl.Environment, counters: Counters, sampler: LockSampler) -> None:
        self.env = env
        self.counters = counters
        self.sampler = sampler
        self.settings = env.section_settings("scaling", worker_threads=WORKER_THREADS)
        self.observer = env.runtime(self.settings)
        # The writer's after-commit wake-ups go to a closed port: events wait until we wake the relays.
        self.writer = env.runtime(self.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{pl.closed_port()}/0"}))
        self.stage = env.runtime(env.section_settings("stage"))

    def scalar(self, query: str) -> Any:
        with self.observer.engine.connect() as conn:
            return conn.execute(text(query)).scalar()

    def clear_redis(self, namespace: str) -> None:
        client = self.observer.redis
        keys = list(client.scan_iter(f"{namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])

    # 1. drain with k workers

    def drain(self, workers: int, n: int) -> dict[str, Any]:
        self.env.reset()
        self.clear_redis(self.settings.redis_namespace)
        self.clear_redis(self.stage.config.redis_namespace)
        pl.publish_events(self.writer, n, 500)
        staged = Relay(self.stage).drain()
        if staged != n:
            raise BenchError(f"staging relay sent {staged} events, expected {n}")
        penv = pl.process_env(self.settings)
        commands = [["worker", "--threads", str(WORKER_THREADS)] for _ in range(workers)]
        with pl.ozzy_processes(penv, *commands) as procs:
            for proc in procs:
                proc.wait_for_line("worker started", 60)
            time.sleep(0.5)
            pids = [p.pid for p in procs]
            before = self.counters.read(pids)
            self.move_backlog()
            wait_until(lambda: self.scalar("SELECT count(*) FROM bench_effects") >= n, timeout=max(120.0, n / 20),
                       interval=0.05, what=f"{n} handled by {workers} worker(s)")
            after = self.counters.read(pids)
        with self.observer.engine.connect() as conn:
            starts = sorted(conn.execute(text("SELECT started_at FROM bench_effects")).scalars())
            done = conn.execute(text("SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'")).scalar_one()
        if len(starts) != n or done != n:
            raise BenchError(f"{workers} worker(s): {len(starts)} effects, {done} deliveries done, expected {n}")
        rate = (n - 1) / (starts[-1] - starts[0])
        figures = {"workers": workers, "events": n, "handled_per_s": r(rate),
                   **self.counters.per_event(before, after, n, "worker")}
        say(f"   {workers} worker(s): {rate:,.0f} handled/s; worker CPU {figures['worker_cpu_ms_per_event']} ms/event, "
            f"PostgreSQL {figures['postgres_cpu_ms_per_event']} ms/event, WAL {figures['wal_bytes_per_event']:,.0f} B/event, "
            f"Redis {figures['redis_commands_per_event']} commands/event; machine {figures['machine_busy_pct']}% busy")
        return figures

    def move_backlog(self) -> None:
        """The staged messages become the workers' queue in one step (a RENAME per key)."""
        client = self.observer.redis
        stage, target = self.stage.config.redis_namespace, self.settings.redis_namespace
        queues = set()
        pipe = client.pipeline(transaction=True)
        for key in client.scan_iter(f"{stage}:*", count=1000):
            name = key.decode()[len(stage) + 1 :]
            pipe.rename(key, f"{target}:{name}")
            if not name.endswith(".msgs"):
                queues.add(name)
        pipe.execute()
        for queue in queues:
            client.publish(queue_channel(target, queue), b"1")

    # 2. dispatch with k relays

    def relay(self, relays: int, n: int) -> dict[str, Any]:
        """A relay's start-up drains (on connect, first poll) may come late on a loaded machine
        and take events before the wake-up: such a run is not counted and made again."""
        for attempt in range(1, 4):
            figures = self.relay_once(relays, n)
            if figures is not None:
                return figures
            say(f"   a relay dispatched before it was woken (attempt {attempt}); measuring again")
        raise BenchError("relays kept dispatching before they were woken; the measurement would be wrong")

    def relay_once(self, relays: int, n: int) -> dict[str, Any] | None:
        self.env.reset()
        self.clear_redis(self.settings.redis_namespace)
        penv = pl.process_env(self.settings, OZZY_POLL_INTERVAL="3600")
        with pl.ozzy_processes(penv, *[["relay"] for _ in range(relays)]) as procs:
            for proc in procs:
                proc.wait_for_line("relay started", 60)
                proc.wait_for_line("fast channel connected", 60)
            time.sleep(1.0)  # the relays' start-up drains (on connect, first poll) are over by now
            pl.publish_events(self.writer, n, 500)
            self.env.vacuum_outbox()
            time.sleep(0.5)
            if self.scalar("SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL"):
                return None
            pids = [p.pid for p in procs]
            before = self.counters.read(pids)
            self.sampler.start()
            sampler_cpu = pl.cpu_seconds(self.sampler.backend_pid) if self.counters.postmaster else 0.0
            started = time.perf_counter()
            self.observer.redis.publish(relay_channel(self.settings.redis_namespace), b"1")
            with psycopg.connect(conninfo(self.settings.sqlalchemy_url), autocommit=True,
                                 application_name=BENCH_APP_NAME) as poll:
                left = lambda: poll.execute(  # noqa: E731
                    "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL").fetchone()[0]  # type: ignore[index]
                wait_until(lambda: left() == 0, timeout=max(120.0, n / 500), interval=0.01,
                           what=f"{n} dispatched by {relays} relay(s)")
            elapsed = time.perf_counter() - started
            locks = self.sampler.stop()
            after = self.counters.read(pids)
            if self.counters.postmaster:  # the sampler's own backend is not the relays' cost
                after["pg_cpu"] -= pl.cpu_seconds(self.sampler.backend_pid) - sampler_cpu
        batches = self.scalar("SELECT count(DISTINCT dispatched_at) FROM ozzy_outbox")
        rate = n / elapsed
        hold_ms = locks["lock_held_share"] * elapsed * 1000 / max(1, batches)
        figures = {"relays": relays, "events": n, "events_per_s": r(rate), "seconds": r(elapsed, 3), "batches": batches,
                   "lock_hold_ms_per_batch_sampled": r(hold_ms, 2), **locks,
                   **self.counters.per_event(before, after, n, "relay")}
        say(f"   {relays} relay(s): {rate:,.0f} events/s in {batches} batches; lock held {locks['lock_held_share']:.0%} "
            f"of the time ({hold_ms:.1f} ms/batch), waited for {locks['lock_waited_for_share']:.0%}; relay CPU "
            f"{figures['relay_cpu_ms_per_event']} ms/event, PostgreSQL {figures['postgres_cpu_ms_per_event']} ms/event, "
            f"WAL {figures['wal_bytes_per_event']:,.0f} B/event, Redis {figures['redis_commands_per_event']} commands/event")
        return figures

    # 3. one batch taken apart

    def batch_phases(self, n: int, batch_size: int) -> dict[str, Any]:
        self.env.reset()
        rt = self.env.runtime(self.settings.model_copy(
            update={"redis_namespace": f"{self.env.ns_root}-phases", "batch_size": batch_size}))
        def publish_and_vacuum(k: int) -> None:
            pl.publish_events(self.writer, k, 500)
            self.env.vacuum_outbox()

        publish_and_vacuum(1000)
        Relay(rt).drain()  # warm-up
        publish_and_vacuum(n)
        batches = timed_drain(Relay(rt))
        self.clear_redis(rt.config.redis_namespace)
        full = [b for b in batches if b["rows"] == rt.config.batch_size] or batches
        phases = ("claim", "send", "mark", "commit", "announce", "total")
        out: dict[str, Any] = {"batches": len(batches), "batch_size": rt.config.batch_size}
        for phase in phases:
            out[f"{phase}_ms_median"] = r(statistics.median(b[phase] for b in full) * 1000, 3)
        hold = [b["hold"] * 1000 for b in full]
        out["send_overlaps_mark"] = any(b["overlapped"] for b in full)
        out["lock_hold_ms_median"] = r(statistics.median(hold), 3)
        out["lock_hold_ms_p90"] = r(percentile(hold, 90), 3)
        out["lock_hold_share_of_batch"] = r(statistics.median(hold) / out["total_ms_median"], 3)
        out["one_relay_events_per_s"] = r(batch_size / out["total_ms_median"] * 1000)
        out["lock_bound_events_per_s"] = r(batch_size / out["lock_hold_ms_median"] * 1000)
        say(f"   one relay in-process, per batch of {out['batch_size']} (medians): claim {out['claim_ms_median']} ms, "
            f"send {out['send_ms_median']} ms, mark {out['mark_ms_median']} ms, commit {out['commit_ms_median']} ms, "
            f"announce {out['announce_ms_median']} ms; lock held {out['lock_hold_ms_median']} ms "
            f"({out['lock_hold_share_of_batch']:.0%} of the batch)")
        return out

    # 4. the write side

    def writes(self, n: int) -> dict[str, Any]:
        self.env.reset()
        out = {}
        for label, per_commit in (("one_event_per_commit", 1), ("500_events_per_commit", 500)):
            before = self.counters.read([])
            pl.publish_events(self.writer, n, per_commit)
            after = self.counters.read([])
            figures = self.counters.per_event(before, after, n, "writer")
            out[label] = {"events": n, "events_per_s": r(n / (after["t"] - before["t"])),
                          "wal_bytes_per_event": figures["wal_bytes_per_event"],
                          "postgres_cpu_ms_per_event": figures["postgres_cpu_ms_per_event"]}
            say(f"   writer, {per_commit} event(s) per commit: WAL {figures['wal_bytes_per_event']:,.0f} B/event, "
                f"PostgreSQL CPU {figures['postgres_cpu_ms_per_event']} ms/event")
        return out


def timed_drain(relay: Relay) -> list[dict[str, Any]]:
    """``relay.drain()`` with each batch's phases timed, through the relay module's own names
    (wrapped for the drain, restored after): the claim, the Redis send, the mark (the dispatch lock
    is taken in it), the COMMIT (ends where the after-commit announcement starts), the announcement.
    The send may run before the mark or inside it (overlapped with the mark's round trip): the lock
    is held from the mark's start to the COMMIT's end either way."""
    batches: list[dict[str, Any]] = []
    marks: dict[str, float] = {}
    original_send, original_mark = relay_module.send, relay_module.mark_dispatched
    original_announce, original_batch = relay._announce, relay.dispatch_batch

    def send(*args: Any, **kwargs: Any) -> None:
        if "publish" in kwargs:
            return original_send(*args, **kwargs)
        marks["send"] = time.perf_counter()
        original_send(*args, **kwargs)
        marks["sent"] = time.perf_counter()

    def mark(*args: Any, **kwargs: Any) -> dict[int, int]:
        marks["mark"] = time.perf_counter()
        try:
            return original_mark(*args, **kwargs)
        finally:
            marks["marked"] = time.perf_counter()

    def announce(*args: Any, **kwargs: Any) -> None:
        marks["committed"] = time.perf_counter()
        original_announce(*args, **kwargs)

    def batch(**kwargs: Any) -> int:
        marks.clear()
        start = time.perf_counter()
        rows = original_batch(**kwargs)
        end = time.perf_counter()
        if rows and {"send", "sent", "mark", "marked", "committed"} <= set(marks):
            m = marks
            batches.append({"rows": rows, "claim": min(m["send"], m["mark"]) - start, "send": m["sent"] - m["send"],
                            "mark": m["marked"] - m["mark"], "commit": m["committed"] - max(m["marked"], m["sent"]),
                            "announce": end - m["committed"], "total": end - start,
                            "hold": m["committed"] - m["mark"], "overlapped": m["send"] > m["mark"]})
        return rows

    relay_module.send, relay_module.mark_dispatched = send, mark  # type: ignore[assignment]
    relay._announce, relay.dispatch_batch = announce, batch  # type: ignore[method-assign]
    try:
        relay.drain()
    finally:
        relay_module.send, relay_module.mark_dispatched = original_send, original_mark
    return batches


# --- ceilings of this machine ------------------------------------------------------------------


def redis_benchmark(port: int, quick: bool) -> dict[str, Any]:
    """Redis's own ceiling on this machine: ``redis-benchmark`` (which shares the 2 cores with it)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "redis-benchmark not installed"}
    n = 20_000 if quick else 200_000
    out: dict[str, Any] = {"requests": n, "clients": 8}
    for pipeline in (1, 16):
        proc = subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(n), "-c", "8", "-P", str(pipeline),
                               "-t", "rpush,hset", "--csv"], capture_output=True, text=True, timeout=300)
        for line in proc.stdout.splitlines():
            m = re.match(r'"([A-Z_]+)[^"]*","([\d.]+)"', line)
            if m:
                out[f"{m.group(1).lower()}_per_s_pipeline_{pipeline}"] = r(float(m.group(2)))
    say(f"   redis-benchmark: {out}")
    return out


def fsync_rate(folder: Path, seconds: float) -> dict[str, Any]:
    """8 kB write + fdatasync in a loop, as a WAL flush does, on the disk the private cluster uses."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    block = os.urandom(8192)
    times: list[float] = []
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    out = {"fdatasyncs_per_s": r(len(times) / sum(times)), "median_ms": r(statistics.median(times) * 1000, 3)}
    say(f"   fdatasync of 8 kB: {out['fdatasyncs_per_s']:,.0f}/s, median {out['median_ms']} ms")
    return out


# --- main --------------------------------------------------------------------------------------


def alternate(rounds: int, a: int, b: int) -> Iterator[tuple[int, int]]:
    for k in range(rounds):
        yield (a, b) if k % 2 == 0 else (b, a)


def summary(runs: list[dict[str, Any]], key: str, count_key: str) -> dict[str, Any]:
    """Medians per process count of every numeric figure, and the 2-against-1 ratio of ``key``."""
    by_count: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        by_count.setdefault(run[count_key], []).append(run)
    medians = {
        str(count): {k: r(statistics.median(run[k] for run in rs), 4) for k, v in rs[0].items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for count, rs in sorted(by_count.items())
    }
    ratio = medians["2"][key] / medians["1"][key] if "1" in medians and "2" in medians else float("nan")
    return {"median": medians, f"ratio_{key}_2_to_1": r(ratio, 3), "runs": runs}


@contextmanager
def servers(kind: str) -> Iterator[PrivateServers | None]:
    if kind == "given":
        yield None
        return
    private = PrivateServers()
    try:
        private.start()
        saved = pl.ADMIN_URL, pl.REDIS_URL
        pl.ADMIN_URL, pl.REDIS_URL = private.admin_url, private.redis_url
        try:
            yield private
        finally:
            pl.ADMIN_URL, pl.REDIS_URL = saved
    finally:
        private.close()


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    sizes = result["sizes"]
    with servers(args.servers) as private:
        env = pl.Environment()
        counters: Counters | None = None
        sampler: LockSampler | None = None
        try:
            env.setup()
            result["servers"] = pl.server_versions(env) | {"private": private is not None}
            assert env.settings is not None
            counters = Counters(env, private.postmaster_pid() if private else None)
            sampler = LockSampler(env.settings.sqlalchemy_url)
            bench = Bench(env, counters, sampler)
            drains: list[dict[str, Any]] = []
            relays: list[dict[str, Any]] = []
            if not args.quick:
                say("== warm-up (not counted): WAL segments, caches, the processes' imports")
                bench.drain(1, 300)
                bench.relay(1, 2_000)
            for k, (first, second) in enumerate(alternate(sizes["rounds"], 1, 2)):
                say(f"== round {k + 1} of {sizes['rounds']}: load {pl.loadavg()}")
                for workers in (first, second):
                    drains.append(bench.drain(workers, sizes["drain_events"]))
                for count in (first, second):
                    relays.append(bench.relay(count, sizes["relay_events"]))
            result["drain"] = summary(drains, "handled_per_s", "workers")
            result["relay"] = summary(relays, "events_per_s", "relays")
            say("== one relay batch taken apart (in-process)")
            result["batch_phases"] = {str(b): bench.batch_phases(sizes["relay_events"], b) for b in sizes["batch_sizes"]}
            say("== the write side")
            result["writes"] = bench.writes(sizes["write_events"])
            say("== ceilings of this machine")
            if private is not None:
                result["redis_benchmark"] = redis_benchmark(private.redis_port, args.quick)
                result["fsync"] = fsync_rate(private.dir, 1.0 if args.quick else 3.0)
        finally:
            if sampler is not None:
                sampler.close()
            if counters is not None:
                counters.close()
            env.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke-test version (small counts, one round)")
    parser.add_argument("--servers", choices=("private", "given"), default="private",
                        help="start a private PostgreSQL and Redis (default), or use OZZY_BENCH_DATABASE_URL/_REDIS_URL")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of 1-vs-2 (default 4, quick 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("shared.fastchannel").setLevel(logging.ERROR)
    logging.getLogger("shared.channel").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    q = args.quick
    result: dict[str, Any] = {
        "benchmark": "ozzy-scaling",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": q,
        "machine": pl.machine(),
        "code": pl.code_version(),
        "sizes": {"rounds": args.rounds or (1 if q else 4), "drain_events": 300 if q else 3_000,
                  "relay_events": 2_000 if q else 20_000, "write_events": 200 if q else 2_000,
                  "batch_sizes": [500] if q else [100, 500, 2_000],
                  "worker_threads": WORKER_THREADS},
        "loadavg_1m_before": pl.loadavg(),
    }
    ok = False
    try:
        run(args, result)
        ok = True
    except BaseException as exc:
        record_failure(result, exc, say)
    finally:
        result["loadavg_1m_after"] = pl.loadavg()
        print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
