#!/usr/bin/env python
"""Ozzy side by side with what a user would pick instead, in one run (issue #16).

    .venv/bin/python bench/peers.py              # the full run (several minutes on 2 cores)
    .venv/bin/python bench/peers.py --quick      # a smoke test (small counts; draws no chart)
    .venv/bin/python bench/peers.py --profile    # also py-spy our worker's drain and the relay

Needs the ``bench`` extra (``pip install -e '.[bench]'``: procrastinate, matplotlib, py-spy).

Three systems do the same work: a writer commits a ``bench_items`` row per event, and a handler or
task writes one ``bench_effects`` row holding ``time.time()`` taken as it starts
(``bench/bench_app.py``, ``bench/peer_tasks.py``):

* **ozzy**: the unit of work records ``ItemCreated`` in the outbox; real ``ozzy relay`` and
  ``ozzy worker`` processes (inbox + the handler's row in one transaction);
* **procrastinate** 3.x: the job is deferred on the writer's connection, inside its transaction;
  ``procrastinate worker -c 8`` (LISTEN/NOTIFY on);
* **dramatiq**: plain Dramatiq 2.x, commit then ``send``; ``dramatiq --processes 1 --threads 8``.

Figures, each system in turn at the same moment of the machine:

1. backlog drain: the events are queued first (ours: committed and relayed; no worker running),
   then one worker process starts; handled/s is (n - 1) over the spread of the handlers' start
   times, so process start-up is not counted;
2. end to end: writer, relay and worker at once; the writer commits n events one per transaction
   as fast as it can; handled/s is n over first commit to the last handler start;
3. commit -> handler start latency at 50 events/s (ours and procrastinate: the commit; Dramatiq:
   the commit, its send after it counted in); ours also split in three segments from the
   timestamps the system records (see :func:`latency_split`);
4. idle worker CPU (the worker's process tree);
5. relay events/s (``bench/pipeline.py`` section 1) next to a hand-written claim-and-push loop on a
   copy of the outbox that has only the claim index;
6. outbox cost on commit throughput (``bench/pipeline.py`` section 4).

The script creates ``ozzy_bench_<hex>`` (ours) and ``ozzy_bench_<hex>_peers`` (procrastinate's
schema and the peers' tables) and Redis keys under ``ozzybench-<hex>-*``, and removes all of them at
the end, even on error. Progress goes to stderr, the ratios as a table at the end; the last line of
stdout is one JSON object with every figure. The chart goes to ``docs/img/peers.png`` (``--chart``).
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

import bench.pipeline as pl  # noqa: E402
from bench.bench_app import HANDLER_NAME, TABLES, BenchItem  # noqa: E402
from bench.common import BenchError, record_failure, percentile, wait_until  # noqa: E402
from shared.delivery.relay import Relay  # noqa: E402
from shared.runtime import Runtime  # noqa: E402

say = pl.say
r = pl.r

#: Issue #16's targets.
TARGETS = {
    "drain_handled_per_s_min": 1200.0,
    "drain_ratio_to_dramatiq_min": 1.0,
    "e2e_handled_to_writer_min": 0.9,
    "e2e_ratio_to_procrastinate_min": 3.0,
    "latency_p50_ms_max": 2.0,
    "latency_p99_ms_max": 5.0,
    "latency_p50_ratio_to_procrastinate_max": 1.0,
    "idle_worker_cpu_pct_max": 1.0,
    "relay_events_per_s_min": 20_000.0,
    "outbox_cost_pct_max": 15.0,
}

WORKER_THREADS = 8  # ``ozzy worker``'s default; both peers get the same


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every process below it (Dramatiq forks its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += pl.cpu_seconds(p)
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return total


class PeerProcess(pl.OzzyProcess):
    """A peer's worker: any command line, with ``OzzyProcess``'s log file and stopping."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:  # noqa: D107
        self.args = [name]
        self.log = tempfile.NamedTemporaryFile(prefix=f"ozzy-bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.log.close()


@contextmanager
def peer_process(name: str, argv: list[str], env: dict[str, str]) -> Iterator[PeerProcess]:
    proc = PeerProcess(name, argv, env)
    try:
        yield proc
    except BaseException:
        sys.stderr.write(f"\n----- {name} (last output) -----\n{proc.output()[-4000:]}\n")
        raise
    finally:
        code = proc.stop()
        if code not in (0, None, -signal.SIGTERM, 143):
            say(f"{name} exited with {code}")
        proc.discard_log()


# --- the peers' database -----------------------------------------------------------------------


class PeersDatabase:
    """``ozzy_bench_<hex>_peers``: the bench tables and procrastinate's schema; ``close`` drops it."""

    def __init__(self, env: pl.Environment) -> None:
        self.env = env
        self.name = f"{env.db_name}_peers"
        url = make_url(pl.ADMIN_URL).set(database=self.name)
        self.sqlalchemy_url = url.render_as_string(hide_password=False)
        self.conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.created = False
        self.engine: Engine | None = None

    def setup(self) -> None:
        with self.env.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.created = True
        self.engine = create_engine(self.sqlalchemy_url, pool_size=5)
        from bench.bench_app import Base

        Base.metadata.create_all(self.engine, tables=TABLES)
        from procrastinate.schema import SchemaManager

        with self.engine.begin() as conn:  # procrastinate's own schema file, as `procrastinate schema --apply`
            conn.exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))
        say(f"database {self.name} created: bench tables and procrastinate's schema")

    def process_env_extra(self) -> dict[str, str]:
        return {
            "OZZY_PEER_DATABASE_URL": self.sqlalchemy_url,
            "OZZY_PEER_PROCRASTINATE_CONNINFO": self.conninfo,
            "OZZY_PEER_REDIS_URL": pl.REDIS_URL,
            "OZZY_PEER_REDIS_NAMESPACE": f"{self.env.ns_root}-dramatiq",
        }

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        if self.created:
            try:
                with self.env.admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
                say(f"database {self.name} dropped")
            except Exception as exc:  # noqa: BLE001
                say(f"could not drop database {self.name}: {exc}")


# --- the three systems -------------------------------------------------------------------------


class System(ABC):
    """One of the three: how its writer commits, how its backlog is made, how its worker runs."""

    name = ""
    engine: Engine  # where its bench_effects rows are

    @abstractmethod
    def reset(self) -> None:
        ...

    def close(self) -> None:
        """Release what the bench process holds for this system (a broker's connections)."""

    @abstractmethod
    def commit_one(self, seq: int) -> None:
        """One writer transaction: a bench_items row and the event/job/message for it."""
        ...

    @abstractmethod
    def fill_backlog(self, n: int) -> None:
        """``n`` units of work queued for a worker that is not running (500 per transaction)."""
        ...

    @abstractmethod
    def worker(self) -> AbstractContextManager[Any]:
        """The worker process alone, running until the context ends; yields its pid."""
        ...

    @abstractmethod
    def running(self) -> AbstractContextManager[dict[str, int]]:
        """Everything that turns commits into handler runs (ours: relay and worker); yields pids."""
        ...

    def count(self, lo: int, hi: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM bench_effects WHERE seq >= :lo AND seq < :hi"),
                                    {"lo": lo, "hi": hi}).scalar_one())

    def starts(self, lo: int, hi: int) -> dict[int, float]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT seq, started_at FROM bench_effects WHERE seq >= :lo AND seq < :hi"),
                                {"lo": lo, "hi": hi}).all()
        return {row.seq: row.started_at for row in rows}


class Ours(System):
    name = "ozzy"

    def __init__(self, env: pl.Environment) -> None:
        self.env = env
        self.settings = env.section_settings("peers", worker_threads=WORKER_THREADS)
        self.rt: Runtime = env.runtime(self.settings)
        self.engine = self.rt.engine

    def reset(self) -> None:
        self.env.reset()

    def commit_one(self, seq: int) -> None:
        with self.rt.unit_of_work() as uow:
            uow.add(BenchItem.create(f"item-{seq}", seq))
            uow.commit()

    def fill_backlog(self, n: int) -> None:
        done = 0
        while done < n:
            with self.rt.unit_of_work() as uow:
                for seq in range(done, min(done + 500, n)):
                    uow.add(BenchItem.create(f"item-{seq}", seq))
                uow.commit()
            done = min(done + 500, n)
        relayed = Relay(self.rt).drain()
        if relayed != n:
            raise BenchError(f"the relay sent {relayed} events, expected {n}")

    def stamps(self, lo: int, hi: int) -> dict[int, tuple[float, float]]:
        """Per event of ``seq`` in [lo, hi): when the relay's transaction that dispatched it began
        (``dispatched_at``) and when the handler's transaction began (the delivery's
        ``completed_at``), both the server's ``now()``, in epoch seconds."""
        with self.engine.connect() as conn:
            rows = conn.execute(text(
                """
                SELECT (o.payload->>'seq')::int AS seq, extract(epoch FROM o.dispatched_at) AS relay,
                       extract(epoch FROM d.completed_at) AS handler
                  FROM ozzy_outbox o JOIN ozzy_deliveries d ON d.event_id = o.event_id AND d.handler = :handler
                 WHERE (o.payload->>'seq')::int >= :lo AND (o.payload->>'seq')::int < :hi
                """), {"lo": lo, "hi": hi, "handler": HANDLER_NAME}).all()
        return {row.seq: (float(row.relay), float(row.handler)) for row in rows}

    @contextmanager
    def worker(self) -> Iterator[int]:
        with pl.ozzy_processes(pl.process_env(self.settings), ["worker", "--threads", str(WORKER_THREADS)]) as procs:
            yield procs[0].pid

    @contextmanager
    def running(self) -> Iterator[dict[str, int]]:
        with pl.start_pipeline(pl.process_env(self.settings), WORKER_THREADS) as (relay, worker):
            pl.wait_ready(relay, worker)
            yield {"worker": worker.pid, "relay": relay.pid}


class PeerSystem(System):
    def __init__(self, db: PeersDatabase) -> None:
        self.db = db
        assert db.engine is not None
        self.engine = db.engine

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OZZY_")}
        env.update(self.db.process_env_extra(), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        return env

    def add_items(self, session: Session, seqs: range) -> None:
        for seq in seqs:
            session.add(BenchItem.create(f"item-{seq}", seq, record=False))

    @contextmanager
    def running(self) -> Iterator[dict[str, int]]:
        with self.worker() as pid:
            yield {"worker": pid}


class Procrastinate(PeerSystem):
    name = "procrastinate"

    def __init__(self, db: PeersDatabase) -> None:
        super().__init__(db)
        import procrastinate

        from bench.peer_tasks import record_effect

        # The writer's side of bench/peer_procrastinate.py's app: the same task name, deferred on the
        # writer's connection (the connector's pool is never opened).
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=db.conninfo))
        self.task = app.task(name="bench.peer_record", retry=3)(record_effect)

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("TRUNCATE bench_effects, bench_items, procrastinate_jobs CASCADE"))

    def _commit(self, seqs: range) -> None:
        with Session(self.engine) as session:
            items = [BenchItem.create(f"item-{seq}", seq, record=False) for seq in seqs]
            session.add_all(items)
            session.flush()
            # The job goes in on the writer's own connection, inside its transaction.
            deferrer = self.task.configure(connection=session.connection().connection.driver_connection)
            for item in items:
                deferrer.defer(item_id=str(item.id), seq=item.seq)
            session.commit()

    def commit_one(self, seq: int) -> None:
        self._commit(range(seq, seq + 1))

    def fill_backlog(self, n: int) -> None:
        for start in range(0, n, 500):
            self._commit(range(start, min(start + 500, n)))

    @contextmanager
    def worker(self) -> Iterator[int]:
        argv = [sys.executable, "-m", "procrastinate", "--app=bench.peer_procrastinate.app",
                "worker", "-c", str(WORKER_THREADS)]
        with peer_process("procrastinate", argv, self.env()) as proc:
            yield proc.pid


class Dramatiq(PeerSystem):
    name = "dramatiq"

    def __init__(self, db: PeersDatabase) -> None:
        super().__init__(db)
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        from bench.peer_tasks import record_effect

        # The sender's side of bench/peer_dramatiq.py: the same actor on a broker of its own (not
        # Dramatiq's global one, which our runtimes set).
        extra = db.process_env_extra()
        self.broker = RedisBroker(url=extra["OZZY_PEER_REDIS_URL"], namespace=extra["OZZY_PEER_REDIS_NAMESPACE"])
        self.actor = dramatiq.Actor(record_effect, broker=self.broker, actor_name="bench.peer_record",
                                    queue_name="default", priority=0, options={})

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("TRUNCATE bench_effects, bench_items"))
        self.broker.flush_all()

    def close(self) -> None:
        self.broker.close()

    def _commit(self, seqs: range) -> None:
        with Session(self.engine) as session:
            items = [BenchItem.create(f"item-{seq}", seq, record=False) for seq in seqs]
            session.add_all(items)
            sends = [(str(item.id), item.seq) for item in items]
            session.commit()
        for item_id, seq in sends:  # commit, then send
            self.actor.send(item_id, seq)

    def commit_one(self, seq: int) -> None:
        self._commit(range(seq, seq + 1))

    def fill_backlog(self, n: int) -> None:
        for start in range(0, n, 500):
            self._commit(range(start, min(start + 500, n)))

    @contextmanager
    def worker(self) -> Iterator[int]:
        argv = [sys.executable, "-m", "dramatiq", "bench.peer_dramatiq", "--processes", "1",
                "--threads", str(WORKER_THREADS)]
        with peer_process("dramatiq", argv, self.env()) as proc:
            yield proc.pid


# --- measurements ------------------------------------------------------------------------------


def drain(system: System, n: int, profile: Path | None = None, gil: bool = False) -> dict[str, Any]:
    """``profile``: py-spy the worker into that file (``gil``: only the GIL holder)."""
    system.reset()
    system.fill_backlog(n)
    started = time.perf_counter()
    with system.worker() as pid:
        spy = PySpy(pid, profile, gil=gil) if profile else None
        wait_until(lambda: system.count(0, n) >= n, timeout=max(120.0, n / 10), interval=0.1,
                   what=f"{system.name}: {n} handled")
        wall = time.perf_counter() - started
        if spy is not None:
            spy.stop()
    starts = sorted(system.starts(0, n).values())
    if len(starts) != n:
        raise BenchError(f"{system.name}: {len(starts)} effects for {n} events")
    rate = (n - 1) / (starts[-1] - starts[0])
    say(f"   {system.name}: {n} drained at {rate:,.0f} handled/s ({wall:.1f}s with worker start-up)")
    result = {"events": n, "handled_per_s": r(rate), "seconds_with_startup": r(wall, 2)}
    if spy is not None:
        result["profile"] = spy.summary(events=n)
    return result


def warm_up(system: System) -> None:
    for i in range(20):
        system.commit_one(-1000 - i)
    wait_until(lambda: system.count(-1020, -999) >= 20, timeout=60, interval=0.05, what=f"{system.name}: warm-up")


def end_to_end(system: System, n: int) -> dict[str, Any]:
    started = time.time()
    for seq in range(n):
        system.commit_one(seq)
    written = time.time()
    wait_until(lambda: system.count(0, n) >= n, timeout=max(120.0, n / 10), interval=0.1,
               what=f"{system.name}: {n} handled end to end")
    last = max(system.starts(0, n).values())
    writer_rate = n / (written - started)
    handled_rate = n / (last - started)
    say(f"   {system.name}: writer {writer_rate:,.0f} commits/s, handled {handled_rate:,.0f}/s "
        f"({handled_rate / writer_rate:.2f} of the writer's)")
    return {"events": n, "writer_commits_per_s": r(writer_rate), "handled_per_s": r(handled_rate),
            "ratio_handled_to_writer": r(handled_rate / writer_rate, 3)}


LATENCY_BASE = 1_000_000


def latency(system: System, rate: float, duration: float) -> dict[str, Any]:
    n = max(2, int(rate * duration))
    committed: dict[int, float] = {}
    t0 = time.perf_counter()
    late = 0
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            late += 1
        seq = LATENCY_BASE + i
        # Dramatiq's send comes after its commit: the clock starts at the commit for all three.
        if isinstance(system, Dramatiq):
            with Session(system.engine) as session:
                item = BenchItem.create(f"lat-{i}", seq, record=False)
                session.add(item)
                session.commit()
                item_id = str(item.id)
            committed[seq] = time.time()
            system.actor.send(item_id, seq)
        else:
            system.commit_one(seq)
            committed[seq] = time.time()
    hi = LATENCY_BASE + n
    wait_until(lambda: system.count(LATENCY_BASE, hi) >= n, timeout=60, interval=0.1, what=f"{system.name}: latency events")
    lat = [(start - committed[seq]) * 1000 for seq, start in system.starts(LATENCY_BASE, hi).items()]
    result = {"events": n, "rate_per_s": rate, "p50_ms": r(percentile(lat, 50), 2), "p90_ms": r(percentile(lat, 90), 2),
              "p99_ms": r(percentile(lat, 99), 2), "max_ms": r(max(lat), 2), "late_sends": late}
    say(f"   {system.name}: p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, p99 {result['p99_ms']} ms")
    if isinstance(system, Ours):
        result["split_ms"] = latency_split(committed, system.starts(LATENCY_BASE, hi), system.stamps(LATENCY_BASE, hi))
        say("   ozzy, p50 per segment: " + ", ".join(f"{k} {v['p50']} ms" for k, v in result["split_ms"].items()))
    return result


#: The segments of commit -> handler start, in order, and what each holds.
SEGMENTS = {
    # the writer's wake-up (pub/sub), the relay's subscriber and drain threads, its BEGIN
    "commit_to_relay_begin": "commit returned -> the relay transaction's start (dispatched_at)",
    # the claim, the Redis send with the mark, the worker's wake-up, fetch and thread hand-over
    "relay_begin_to_handler_begin": "-> the handler transaction's start (the delivery's completed_at)",
    # the inbox claim (an unordered one waits there for the relay's COMMIT) and the call
    "handler_begin_to_start": "-> the handler's first line",
}


def latency_split(committed: dict[int, float], starts: dict[int, float],
                  stamps: dict[int, tuple[float, float]]) -> dict[str, dict[str, float]]:
    """p50 and p90 (ms) of each of :data:`SEGMENTS` over the events present in all three maps:
    the writer's clock after its commit, then the server's ``now()`` of the relay's and the
    handler's transactions, then the handler's clock (one machine, one clock)."""
    parts: dict[str, list[float]] = {name: [] for name in SEGMENTS}
    for seq, start in starts.items():
        if seq not in committed or seq not in stamps:
            continue
        relay, handler = stamps[seq]
        points = (committed[seq], relay, handler, start)
        for name, a, b in zip(SEGMENTS, points, points[1:]):
            parts[name].append((b - a) * 1000)
    return {name: {"p50": r(percentile(v, 50), 2), "p90": r(percentile(v, 90), 2)} for name, v in parts.items()}


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    time.sleep(2.0)  # the last acks and polls settle
    before = {k: tree_cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {f"idle_{k}_cpu_pct_of_core": r((tree_cpu_seconds(p) - before[k]) / elapsed * 100, 2) for k, p in pids.items()}


def running_measures(system: System, e2e_n: int, rate: float, duration: float, idle_s: float) -> dict[str, Any]:
    """End to end, latency and idle CPU against one start of the system's processes."""
    system.reset()
    with system.running() as pids:
        warm_up(system)
        e2e = end_to_end(system, e2e_n)
        time.sleep(1.0)
        lat = latency(system, rate, duration)
        idle = idle_cpu(pids, idle_s)
    say(f"   {system.name}: idle CPU " + ", ".join(f"{k.split('_')[1]} {v} % of a core" for k, v in idle.items()))
    return {"end_to_end": e2e, "latency": lat, **idle}


# --- relay next to a claim-and-push loop on a lean table ---------------------------------------

LEAN_CLAIM = pl.baseline_claim("bench_lean_outbox")


def lean_loop(rt: Runtime, batch: int, key: str) -> int:
    """Claim a batch, one RPUSH per row in one pipeline, mark the batch, commit; until empty."""
    total = 0
    while True:
        with rt.engine.connect() as conn, conn.begin():
            rows = conn.execute(LEAN_CLAIM, {"limit": batch}).all()
            if rows:
                pl.push_rows(rt.redis, key, rows)
                conn.execute(text("UPDATE bench_lean_outbox SET dispatched_at = now() WHERE id = ANY(:ids)"),
                             {"ids": [row.id for row in rows]})
        total += len(rows)
        if len(rows) < batch:
            return total


def relay_vs_lean(env: pl.Environment, n: int, repeats: int) -> dict[str, Any]:
    relay = pl.section_relay(env, n, False, repeats)
    say(f"   hand-written loop on a lean copy of the outbox (primary key and claim index only), {repeats} samples")
    env.reset()
    settings = env.section_settings("lean")
    rt = env.runtime(settings)
    pl.publish_events(rt, n, 2000)
    admin = create_engine(settings.sqlalchemy_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_lean_outbox"))
        conn.execute(text("CREATE TABLE bench_lean_outbox (LIKE ozzy_outbox INCLUDING DEFAULTS)"))
        conn.execute(text("INSERT INTO bench_lean_outbox SELECT * FROM ozzy_outbox"))
        conn.execute(text("ALTER TABLE bench_lean_outbox ADD PRIMARY KEY (id)"))
        conn.execute(text("CREATE INDEX bench_lean_claim ON bench_lean_outbox (id) "
                          "WHERE dispatched_at IS NULL AND parked_at IS NULL"))
        conn.execute(text("TRUNCATE ozzy_outbox"))
    key = f"{settings.redis_namespace}:lean-list"
    times = []
    for _ in range(repeats):
        with admin.connect() as conn:
            conn.execute(text("UPDATE bench_lean_outbox SET dispatched_at = NULL"))
            conn.execute(text("VACUUM ANALYZE bench_lean_outbox"))
        t0 = time.perf_counter()
        sent = lean_loop(rt, settings.batch_size, key)
        times.append(time.perf_counter() - t0)
        if sent != n:
            raise BenchError(f"the lean loop sent {sent}, expected {n}")
        rt.redis.delete(key)
        say(f"   lean loop: {n / times[-1]:,.0f} events/s")
    with admin.connect() as conn:
        conn.execute(text("DROP TABLE bench_lean_outbox"))
    admin.dispose()
    lean_rate = n / statistics.median(times)
    relay["lean_loop_events_per_s"] = r(lean_rate)
    relay["lean_loop_events_per_s_samples"] = [r(n / t) for t in times]
    relay["ratio_relay_to_lean_loop"] = r(relay["relay_events_per_s"] / lean_rate, 3)
    return relay


# --- profiling ---------------------------------------------------------------------------------

#: Leaf frames of a thread that waits for work (Dramatiq's queues, pub/sub listeners, pools).
IDLE_LEAVES = ("Condition.wait (threading.py", "_worker (concurrent/futures/thread.py", "EpollSelector.select",
               "Event.wait (threading.py", "sleep", "select (selectors.py")
IDLE_FRAMES = ("WakeListener._listen", "Subscriber._listen", "ClusterListener._run", "PubSub.get_message")


def classify(frames: list[str]) -> str:
    """Where one sampled stack's time goes (py-spy's ``function (file:line)`` frames, outermost first)."""
    leaf = frames[-1]
    if any("importlib" in f or "<frozen runpy>" in f and len(frames) < 3 for f in frames):
        return "start-up (imports)"
    if leaf.startswith(IDLE_LEAVES) or any(f.startswith(IDLE_FRAMES) for f in frames):
        return "idle (waiting for work)"
    if leaf.startswith("Connection.wait (psycopg/"):
        return "PostgreSQL round trip (waiting on the socket)"
    if "redis/" in leaf and any(k in leaf for k in ("read_from_socket", "_socket_can_read", "read_response", "send_packed_command")):
        return "Redis round trip (socket send/read)"
    for frame in reversed(frames):
        for needle, label in (("psycopg", "psycopg client side"), ("sqlalchemy/", "SQLAlchemy"), ("redis/", "redis-py client side"),
                              ("dramatiq/", "Dramatiq"), ("pydantic", "pydantic (events)"), ("shared/", "ours (shared/)")):
            if needle in frame:
                return label
    return "other Python (stdlib, bench)"


class PySpy:
    """``py-spy record`` of one process until ``stop``, as raw stacks: every thread, idle ones too,
    or (``gil``) only the thread holding the GIL, which is where the process's Python CPU goes."""

    def __init__(self, pid: int, out: Path, *, gil: bool = False) -> None:
        self.out = out
        self.gil = gil
        mode = ["--gil"] if gil else ["--idle"]
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--rate", "200", *mode, "--threads", "--nonblocking",
             "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, executable=str(Path(sys.executable).parent / "py-spy"),
        )
        time.sleep(0.5)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def summary(self, events: int, thread: str = "", within: str = "") -> dict[str, Any]:
        """Samples per bucket (busy ones: idle and start-up left out), as shares and as thread-ms per
        event (200 samples a second), and the lines of ours and Dramatiq's that the busy time is under."""
        buckets: Counter[str] = Counter()
        lines: Counter[str] = Counter()
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():  # py-spy sometimes reads a frame name with a line break in it
                continue
            frames = stack.split(";")
            if thread not in frames[0] or within and not any(within in f for f in frames):
                continue
            label = classify(frames[1:] or frames)
            buckets[label] += int(count)
            if not label.startswith(("idle", "start-up")):
                ours = [f.split(" (")[-1].rstrip(")") for f in frames if "shared/" in f or "dramatiq/" in f]
                lines[" > ".join(ours[-2:]) + f"  [{label}]"] += int(count)
        busy = sum(v for k, v in buckets.items() if not k.startswith(("idle", "start-up")))
        view = "GIL holder" if self.gil else "all threads, idle included"
        say(f"   profile ({view}; {self.out}): {busy} busy samples of {sum(buckets.values())}, {events} events")
        shares = {}
        for name, count in buckets.most_common():
            if name.startswith(("idle", "start-up")):
                continue
            shares[name] = {"pct": r(count / busy * 100, 1), "thread_ms_per_event": r(count / 200 / events * 1000, 3)}
            say(f"      {count / busy * 100:5.1f} %  {count / 200 / events * 1000:6.3f} ms/event  {name}")
        top = [(k, r(v / busy * 100, 1)) for k, v in lines.most_common(12)]
        for k, v in top:
            say(f"      {v:5.1f} %  {k}")
        return {"file": str(self.out), "view": view, "busy_samples": busy, "events": events, "buckets": shares, "top_lines": top}


def profile_relay(env: pl.Environment, n: int, profile_dir: Path) -> dict[str, Any]:
    """One in-process ``Relay.drain()`` of ``n`` events under py-spy (this process)."""
    say(f"== profile: the relay draining {n} events, under py-spy")
    env.reset()
    settings = env.section_settings("profile")
    rt = env.runtime(settings)
    relay = Relay(rt)
    _ = rt.broker
    pl.publish_events(rt, 500, 500)
    relay.drain()
    pl.publish_events(rt, n, 2000, start_seq=1000)
    env.vacuum_outbox()
    spy = PySpy(os.getpid(), profile_dir / "relay-drain.txt")
    t0 = time.perf_counter()
    sent = relay.drain()
    elapsed = time.perf_counter() - t0
    spy.stop()
    say(f"   relay under py-spy: {sent} in {elapsed:.2f}s = {sent / elapsed:,.0f}/s")
    # This process's other threads (notifier, listeners) are not the relay's: the main thread only.
    return {"events": sent, "events_per_s_under_profiler": r(sent / elapsed),
            **spy.summary(events=sent, thread="MainThread", within="Relay.drain")}


# --- report ------------------------------------------------------------------------------------


def ratios(res: dict[str, Any]) -> list[tuple[str, float | None, str, bool | None]]:
    """(what, figure, target, met) for every figure issue #16 sets a target on."""
    out: list[tuple[str, float | None, str, bool | None]] = []
    t = TARGETS

    def add(what: str, value: float | None, target: str, ok: bool | None) -> None:
        out.append((what, value, target, ok))

    d = res.get("drain", {})
    if d:
        ours = d["ozzy"]["handled_per_s"]
        add("drain handled/s, ozzy (inbox + row)", ours, f">= {t['drain_handled_per_s_min']:,.0f}", ours >= t["drain_handled_per_s_min"])
        for peer in ("dramatiq", "procrastinate"):
            if peer in d:
                v = ours / d[peer]["handled_per_s"]
                target = f">= {t['drain_ratio_to_dramatiq_min']}" if peer == "dramatiq" else "(info)"
                add(f"drain ozzy / {peer}", v, target, v >= t["drain_ratio_to_dramatiq_min"] if peer == "dramatiq" else None)
    run = res.get("running", {})
    if "ozzy" in run:
        o = run["ozzy"]
        v = o["end_to_end"]["ratio_handled_to_writer"]
        add("end to end: ozzy handled / its writer's commits", v, f">= {t['e2e_handled_to_writer_min']}", v >= t["e2e_handled_to_writer_min"])
        for peer in ("procrastinate", "dramatiq"):
            if peer in run:
                v = o["end_to_end"]["handled_per_s"] / run[peer]["end_to_end"]["handled_per_s"]
                ok = v >= t["e2e_ratio_to_procrastinate_min"] if peer == "procrastinate" else None
                add(f"end to end ozzy / {peer}", v, f">= {t['e2e_ratio_to_procrastinate_min']}" if ok is not None else "(info)", ok)
        p50, p99 = o["latency"]["p50_ms"], o["latency"]["p99_ms"]
        add("latency p50 ms, ozzy", p50, f"<= {t['latency_p50_ms_max']}", p50 <= t["latency_p50_ms_max"])
        add("latency p99 ms, ozzy", p99, f"<= {t['latency_p99_ms_max']}", p99 <= t["latency_p99_ms_max"])
        for peer in ("procrastinate", "dramatiq"):
            if peer in run:
                v = p50 / run[peer]["latency"]["p50_ms"]
                ok = v <= t["latency_p50_ratio_to_procrastinate_max"] if peer == "procrastinate" else None
                add(f"latency p50 ozzy / {peer}", v, f"<= {t['latency_p50_ratio_to_procrastinate_max']}" if ok is not None else "(info)", ok)
        idle = o["idle_worker_cpu_pct_of_core"]
        add("idle worker, % of a core", idle, f"<= {t['idle_worker_cpu_pct_max']}", idle <= t["idle_worker_cpu_pct_max"])
    rel = res.get("relay")
    if rel:
        v = rel["relay_events_per_s"]
        add("relay events/s", v, f">= {t['relay_events_per_s_min']:,.0f}", v >= t["relay_events_per_s_min"])
        add("relay / hand-written loop, same table", rel["ratio_relay_to_baseline"], "(info)", None)
        add("relay / hand-written loop, lean table", rel["ratio_relay_to_lean_loop"], "(info)", None)
    com = res.get("commits")
    if com:
        v = com["outbox_cost_pct"]
        add("outbox cost, % of commit throughput", v, f"<= {t['outbox_cost_pct_max']}", v <= t["outbox_cost_pct_max"])
    return out


def print_table(rows: list[tuple[str, float | None, str, bool | None]], load: str) -> None:
    sys.stderr.write(f"\nissue #16, one run ({load}):\n")
    for what, value, target, ok in rows:
        mark = "" if ok is None else ("met" if ok else "NOT met")
        shown = "-" if value is None else f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        sys.stderr.write(f"  {what:<48} {shown:>10}  {target:<12} {mark}\n")
    sys.stderr.flush()


def draw_chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("ozzy", "procrastinate", "dramatiq") if n in res.get("drain", {}) or n in res.get("running", {})]
    colors = {"ozzy": "#2b6cb0", "procrastinate": "#c05621", "dramatiq": "#2f855a"}
    fig, axes = plt.subplots(1, 4, figsize=(15, 4.2))

    def bars(ax: Any, values: list[float], title: str, unit: str) -> None:
        ax.bar(names, values, color=[colors[n] for n in names])
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,.0f}" if v >= 100 else f"{v:.2g}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelsize=8)

    if res.get("drain"):
        bars(axes[0], [res["drain"][n]["handled_per_s"] for n in names], "backlog drain, one worker process", "handled/s")
    run = res.get("running", {})
    if run:
        bars(axes[1], [run[n]["end_to_end"]["handled_per_s"] for n in names], "end to end (writer + relay + worker)", "handled/s")
        ax = axes[2]
        x = range(len(names))
        p50 = [run[n]["latency"]["p50_ms"] for n in names]
        p99 = [run[n]["latency"]["p99_ms"] for n in names]
        ax.bar([i - 0.2 for i in x], p50, 0.4, label="p50", color=[colors[n] for n in names])
        ax.bar([i + 0.2 for i in x], p99, 0.4, label="p99", color=[colors[n] for n in names], alpha=0.45)
        ax.set_yscale("log")
        ax.set_xticks(list(x), names, fontsize=8)
        ax.set_title("commit -> handler start at 50 ev/s\n(solid p50, light p99)", fontsize=10)
        ax.set_ylabel("ms (log)")
        bars(axes[3], [run[n]["idle_worker_cpu_pct_of_core"] for n in names], "idle worker", "% of a core")
    fig.suptitle(f"bench/peers.py, {res['date']} - {res['machine']['cpus']} CPUs, load {res['load']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    say(f"chart written to {path}")


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke-test version (small counts, no chart)")
    parser.add_argument("--events", type=int, help="events for the drain and end-to-end runs (default 5,000; 300 quick)")
    parser.add_argument("--sections", default="drain,running,relay,commits",
                        help="comma-separated: drain, running (end to end, latency, idle), relay, commits")
    parser.add_argument("--peers", default="procrastinate,dramatiq", help="the peers to run (default both)")
    parser.add_argument("--chart", help="PNG to draw (default docs/img/peers.png; none with --quick)")
    parser.add_argument("--profile", action="store_true", help="py-spy our worker's drain and the relay (raw stacks kept)")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # "App is instantiated in the main Python module": the writer's side of the app, on purpose.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    q = args.quick
    sizes = {
        "events": args.events or (300 if q else 5_000),
        "latency_rate": 50.0,
        "latency_seconds": 2.0 if q else 10.0,
        "idle_seconds": 2.0 if q else 10.0,
        "relay_events": 2_000 if q else 20_000,
        "relay_samples": 1 if q else 3,
        "commits": 200 if q else 3_000,
    }
    chart = Path(args.chart) if args.chart else (None if q else ROOT / "docs/img/peers.png")
    profile_dir = Path(tempfile.mkdtemp(prefix="ozzy-peers-profile-")) if args.profile else None
    result: dict[str, Any] = {
        "benchmark": "ozzy-peers",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": q,
        "machine": pl.machine(),
        "code": pl.code_version(),
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "sizes": sizes,
        "targets": TARGETS,
    }
    env = pl.Environment()
    db = PeersDatabase(env)
    systems: list[System] = []
    ok = False
    try:
        env.setup()
        db.setup()
        result["servers"] = pl.server_versions(env)
        import dramatiq as dramatiq_module
        import procrastinate as procrastinate_module

        result["versions"] = {"procrastinate": procrastinate_module.__version__, "dramatiq": dramatiq_module.__version__}
        systems.append(Ours(env))
        if "procrastinate" in peers:
            systems.append(Procrastinate(db))
        if "dramatiq" in peers:
            systems.append(Dramatiq(db))
        n = sizes["events"]
        if "drain" in sections:
            say(f"== backlog drain: {n} events queued, then one worker process")
            result["drain"] = {s.name: drain(s, n) for s in systems}
            if profile_dir is not None:
                say("== profile: our worker draining the same backlog twice more, under py-spy (all threads, then the GIL holder)")
                result["profile_worker_drain"] = drain(systems[0], n, profile_dir / "worker-drain-idle.txt")
                result["profile_worker_drain_gil"] = drain(systems[0], n, profile_dir / "worker-drain-gil.txt", gil=True)
        if "running" in sections:
            say(f"== running: end to end on {n} events, latency at {sizes['latency_rate']:g}/s, idle CPU")
            result["running"] = {
                s.name: running_measures(s, n, sizes["latency_rate"], sizes["latency_seconds"], sizes["idle_seconds"])
                for s in systems
            }
        if "relay" in sections:
            result["relay"] = relay_vs_lean(env, sizes["relay_events"], sizes["relay_samples"])
        if profile_dir is not None:
            result["profile_relay"] = profile_relay(env, sizes["relay_events"], profile_dir)
        if "commits" in sections:
            result["commits"] = pl.section_commits(env, sizes["commits"])
        result["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        rows = ratios(result)
        result["ratios"] = [{"what": w, "value": None if v is None else r(v, 3), "target": t, "met": m} for w, v, t, m in rows]
        print_table(rows, f"load {result['load']} before, {result['load_after']} after")
        if chart is not None:
            draw_chart(result, chart)
            result["chart"] = str(chart)
        ok = True
    except BaseException as exc:
        record_failure(result, exc, say)
    finally:
        for system in systems:
            system.close()
        db.close()
        env.close()
        print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
