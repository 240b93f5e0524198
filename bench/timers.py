#!/usr/bin/env python
"""Ozzy scheduled-events benchmark: how late a relay fires timers, and how many it fires per second.

    .venv/bin/python bench/timers.py            # the full run (about 5–6 minutes on 2 cores)
    .venv/bin/python bench/timers.py --quick    # a smoke test (about 80 s)
    .venv/bin/python bench/timers.py --sections throughput --explain   # one section, with the plans

Options: ``--relay thread`` runs ``Relay(runtime).start()`` in this process instead of an ``ozzy relay``
child; ``--no-worker`` runs section 1 without the ``ozzy worker`` (the relay alone on the machine);
``--spread S`` sets the spread run's length; ``--shapes`` picks section 1's runs; ``--poll S`` sets
section 1's relay poll interval (default the relay's own, 1 s); ``--history N`` keeps N fired rows in
``ozzy_scheduled`` while ``fire_due`` alone is timed (fired rows are kept as history in production).

Sections (each figure is printed next to a baseline measured in the same run, see
docs/benchmarks.md, "Timers"):

1. ``lateness``: 1,000 timers scheduled in one commit, due 3 s ahead, in three shapes: all at one
   instant, spread over one second, spread evenly over 60 s (15 s with ``--quick``). A real relay
   (``ozzy relay``) fires them, a real ``ozzy worker`` handles them. Per timer, in ms after its
   ``due_at``: ``fired`` (``ozzy_scheduled.fired_at``), ``logged`` (the outbox row's ``occurred_at``
   against its ``metadata->>'due_at'``), ``claimed`` (``dispatched_at``: the start of the drain
   transaction that sent it) and ``handled`` (the handler body's first line). Baseline: an *ideal
   timer*, a thread of this script that sleeps until each due time and then copies what is due with
   one bare ``DELETE … RETURNING`` / ``INSERT`` statement into scratch tables shaped like
   ``ozzy_scheduled`` and ``ozzy_outbox``: the lateness of the machine itself (timer wake-up, one
   statement), with the same relay and worker running idle beside it. Target: fired p99 <= 100 ms.
2. ``throughput``: N timers already due (20,000; 5,000 with ``--quick``), as ``uow.schedule`` writes
   them. (a) ``timers.fire_due`` alone, at several batch sizes, against a bare ``INSERT … SELECT`` of
   the same rows into the outbox in one statement (what firing costs at best), and the same copy in
   batches of the same size. (b) The relay loop end to end: a running relay woken by the fast
   channel fires and dispatches them; against the same relay draining the same N rows committed as
   ordinary events. Target: >= 5,000 timers fired per second.

The script creates its own database (``ozzy_bench_<hex>``) and Redis namespace (``ozzybench-<hex>-*``)
and removes both at the end, even on error. Progress goes to stderr; stdout gets the tables, and its
last line is one JSON object with every figure. Servers: ``OZZY_BENCH_DATABASE_URL`` (admin URL) and
``OZZY_BENCH_REDIS_URL``, as for bench/pipeline.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# As in bench/pipeline.py: the bench domain must be imported as ``bench.bench_app``.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from bench.bench_app import HANDLER_NAME, ItemCreated  # noqa: E402
from bench.common import BenchError, record_failure, percentile, wait_until  # noqa: E402
from bench.pipeline import (  # noqa: E402
    Environment,
    OzzyProcess,
    code_version,
    cpu_seconds,
    loadavg,
    machine,
    process_env,
    r,
    say,
    server_versions,
)
from shared.config import Config  # noqa: E402
from shared.db import sql  # noqa: E402
from shared.delivery import timers  # noqa: E402
from shared.delivery.relay import Relay  # noqa: E402
from shared.runtime import Runtime  # noqa: E402

TARGETS = {"lateness_p99_ms_max": 100.0, "fired_per_s_min": 5_000.0}

#: The outbox columns a fired timer fills, and the values FIRE_DUE gives them (shared.db.sql):
#: the baselines write exactly the rows firing writes, so the outbox's indexes cost them the same.
OUTBOX_COLUMNS = ("event_id, event_type, event_version, aggregate_type, aggregate_id, payload, metadata,"
                  " correlation_id, causation_id, occurred_at")
OUTBOX_VALUES = ("event_id, event_type, event_version, aggregate_type, aggregate_id, payload,"
                 " metadata || jsonb_build_object('due_at', due_at),"
                 " (metadata->>'correlation_id')::uuid, (metadata->>'causation_id')::uuid, clock_timestamp()")
SCHEDULED_COLUMNS = "event_id, event_type, event_version, aggregate_type, aggregate_id, payload, metadata, due_at, key"

#: The baseline of section 2: every waiting row copied into the outbox by one plain statement (no
#: claim, no lock, no status change, no conflict check, no batches).
BARE_COPY = text(f"INSERT INTO ozzy_outbox ({OUTBOX_COLUMNS}) SELECT {OUTBOX_VALUES} FROM ozzy_scheduled")

#: The same copy a batch at a time (keyset by id), one transaction per batch, as fire_due commits.
BARE_COPY_BATCH = text(
    f"""
    WITH src AS (SELECT * FROM ozzy_scheduled WHERE id > :after ORDER BY id LIMIT :limit),
         ins AS (INSERT INTO ozzy_outbox ({OUTBOX_COLUMNS}) SELECT {OUTBOX_VALUES} FROM src RETURNING 1)
    SELECT (SELECT max(id) FROM src) AS last, (SELECT count(*) FROM ins) AS n
    """
)

#: The ideal timer of section 1: whatever is due leaves the scratch queue and enters the scratch log.
IDEAL_FIRE = text(
    f"""
    WITH due AS (DELETE FROM bench_timer_src WHERE due_at <= clock_timestamp() RETURNING *)
    INSERT INTO bench_timer_dst ({OUTBOX_COLUMNS}) SELECT {OUTBOX_VALUES} FROM due
    """
)

LATENESS_SQL = text(
    """
    SELECT extract(epoch FROM s.fired_at - s.due_at) * 1000 AS fired,
           extract(epoch FROM o.occurred_at - (o.metadata->>'due_at')::timestamptz) * 1000 AS logged,
           extract(epoch FROM o.dispatched_at - s.due_at) * 1000 AS claimed,
           (e.started_at - extract(epoch FROM s.due_at)) * 1000 AS handled
      FROM ozzy_scheduled s
      JOIN ozzy_outbox o ON o.event_id = s.event_id
      LEFT JOIN bench_effects e ON e.item_id = (o.payload->>'item_id')::uuid
     WHERE s.status = 'fired'
    """
)
IDEAL_LATENESS_SQL = text(
    "SELECT extract(epoch FROM occurred_at - (metadata->>'due_at')::timestamptz) * 1000 FROM bench_timer_dst"
)

PROGRESS_SQL = text(
    """
    SELECT (SELECT count(*) FROM ozzy_scheduled WHERE status = 'scheduled') AS waiting,
           (SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL AND parked_at IS NULL) AS undispatched,
           (SELECT count(*) FROM ozzy_outbox) AS logged
    """
)

KEY_FILES = ("shared/delivery/timers.py", "shared/delivery/relay.py", "shared/db/sql.py", "shared/db/sql/scheduling.py",
             "shared/db/sql/outbox.py", "shared/runtime/roles.py")


def summary(values: list[float], digits: int = 1) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "min": r(min(values), digits),
        "p50": r(percentile(values, 50), digits),
        "p90": r(percentile(values, 90), digits),
        "p99": r(percentile(values, 99), digits),
        "max": r(max(values), digits),
    }


def file_hashes() -> dict[str, str]:
    """The measured code, for a tree that changes between commits (first 12 hex of sha256)."""
    out = {}
    for name in KEY_FILES:
        path = ROOT / name
        if path.exists():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return out


# --- the database --------------------------------------------------------------------------------


class Bench:
    """The private database (bench/pipeline.py's Environment), with the reset and load steps of this
    benchmark and a template of ``uow.schedule``'s rows to load from."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        assert env.settings is not None
        self.url = env.settings.sqlalchemy_url
        self.auto = create_engine(self.url, isolation_level="AUTOCOMMIT")
        self.template_rows = 0

    def settings(self, section: str, **update: Any) -> Config:
        return self.env.section_settings(section, **update)

    def execute(self, statement: str | Any, **params: Any) -> Any:
        with self.auto.connect() as conn:
            return conn.execute(text(statement) if isinstance(statement, str) else statement, params)

    def scalar(self, statement: str, **params: Any) -> Any:
        with self.auto.connect() as conn:
            return conn.execute(text(statement), params).scalar()

    def reset(self) -> None:
        """Empty every table a section writes, then vacuum, so each sample starts alike."""
        self.execute("TRUNCATE bench_effects, bench_items, ozzy_deliveries, ozzy_outbox, ozzy_scheduled")
        self.vacuum("ozzy_outbox", "ozzy_scheduled", "ozzy_deliveries", "bench_effects")

    def vacuum(self, *tables: str) -> None:
        with self.auto.connect() as conn:
            for table in tables:
                conn.execute(text(f"VACUUM ANALYZE {table}"))

    def make_template(self, rt: Runtime, n: int) -> None:
        """Schedule ``n`` events through the framework (due an hour ago, a microsecond apart), keep
        the rows ``uow.schedule`` wrote as ``bench_timer_template``, and empty ``ozzy_scheduled``.
        No relay may run yet. Scratch tables for the ideal timer are made here too."""
        started = time.perf_counter()
        past = datetime.now(timezone.utc) - timedelta(hours=1)
        done = 0
        while done < n:
            k = min(5_000, n - done)
            with rt.unit_of_work() as uow:
                for i in range(done, done + k):
                    event = ItemCreated(item_id=uuid.uuid4(), name=f"timer-{i}", seq=i)
                    uow.schedule(event, at=past + timedelta(microseconds=i))
                uow.commit()
            done += k
        self.execute("CREATE TABLE bench_timer_template AS SELECT * FROM ozzy_scheduled ORDER BY id")
        self.execute("CREATE TABLE bench_timer_src (LIKE ozzy_scheduled INCLUDING DEFAULTS INCLUDING IDENTITY"
                     " INCLUDING INDEXES)")
        self.execute("CREATE TABLE bench_timer_dst (LIKE ozzy_outbox INCLUDING DEFAULTS INCLUDING IDENTITY"
                     " INCLUDING INDEXES)")
        self.template_rows = n
        self.reset()
        say(f"   template: {n} scheduled events written by uow.schedule in {time.perf_counter() - started:.1f}s")

    def load_scheduled(self, n: int, history: int = 0) -> None:
        """``n`` waiting rows, already due, copied from the template; with ``history``, that many
        fired rows first (a table that has been in use: fired rows are kept)."""
        if n > self.template_rows:
            raise BenchError(f"the template has {self.template_rows} rows, {n} asked for")
        if history:
            self.execute(
                f"""INSERT INTO ozzy_scheduled ({SCHEDULED_COLUMNS}, status, fired_at)
                    SELECT gen_random_uuid(), event_type, event_version, aggregate_type, aggregate_id, payload,
                           metadata, due_at - interval '1 day', key, 'fired', due_at - interval '1 day'
                      FROM bench_timer_template t, generate_series(1, :rounds) g
                     WHERE t.id <= :per_round""",
                rounds=max(1, history // min(n, history)), per_round=min(n, history),
            )
        self.execute(f"INSERT INTO ozzy_scheduled ({SCHEDULED_COLUMNS}) SELECT {SCHEDULED_COLUMNS}"
                     " FROM bench_timer_template ORDER BY id LIMIT :n", n=n)

    def load_plain_events(self, n: int) -> None:
        """The same ``n`` rows as ordinary events, written straight into the outbox."""
        self.execute(f"INSERT INTO ozzy_outbox ({OUTBOX_COLUMNS}) SELECT {OUTBOX_VALUES}"
                     " FROM (SELECT * FROM bench_timer_template ORDER BY id LIMIT :n) t", n=n)

    def clear_queues(self, settings: Config) -> None:
        """The relay's Dramatiq messages for the bench handler (no worker reads them in section 2)."""
        client = self.env.runtimes[0].redis if self.env.runtimes else None
        if client is None:
            return
        keys = list(client.scan_iter(f"{settings.redis_namespace}:*{HANDLER_NAME}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start: start + 500])

    def close(self) -> None:
        self.auto.dispose()


# --- the relay under test ------------------------------------------------------------------------


class RelayUnderTest:
    """A real ``ozzy relay`` child (``mode="process"``, the default) or ``Relay(runtime).start()`` in
    this process (``mode="thread"``)."""

    def __init__(self, bench: Bench, settings: Config, mode: str, **env_extra: str) -> None:
        self.mode = mode
        self.proc: OzzyProcess | None = None
        self.relay: Relay | None = None
        if mode == "process":
            self.proc = OzzyProcess(["relay"], process_env(settings, **env_extra))
        else:
            update: dict[str, Any] = {}
            if "OZZY_BATCH_SIZE" in env_extra:
                update["batch_size"] = int(env_extra["OZZY_BATCH_SIZE"])
            if "OZZY_POLL_INTERVAL" in env_extra:
                update["poll_interval"] = float(env_extra["OZZY_POLL_INTERVAL"])
            rt = bench.env.runtime(settings.model_copy(update=update))
            self.relay = Relay(rt)
            self.relay.start()

    def wait_ready(self) -> None:
        if self.proc is not None:
            self.proc.wait_for_line("relay started", 60)
            self.proc.wait_for_line("fast channel connected", 60)
        else:
            assert self.relay is not None
            relay = self.relay
            wait_until(lambda: relay.subscriber.state == "connected", 60, what="the relay's fast channel")
        time.sleep(1.0)  # the start-up drains are over

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def cpu(self) -> float | None:
        return cpu_seconds(self.proc.pid) if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None:
            code = self.proc.stop()
            if code not in (0, None):
                say(f"ozzy relay exited with {code}:\n{self.proc.output()[-3000:]}")
            self.proc.discard_log()
        if self.relay is not None:
            self.relay.stop()


@contextmanager
def running(bench: Bench, settings: Config, mode: str, *, worker: bool = False,
            **env_extra: str) -> Iterator[RelayUnderTest]:
    relay = RelayUnderTest(bench, settings, mode, **env_extra)
    work = OzzyProcess(["worker"], process_env(settings)) if worker else None
    try:
        relay.wait_ready()
        if work is not None:
            work.wait_for_line("worker started", 60)
        yield relay
    except BaseException:
        for p in (relay.proc, work):
            if p is not None:
                sys.stderr.write(f"\n----- ozzy {p.args[0]} (last output) -----\n{p.output()[-4000:]}\n")
        raise
    finally:
        relay.stop()
        if work is not None:
            work.stop()
            work.discard_log()


# --- 1. lateness ---------------------------------------------------------------------------------


def due_times(n: int, span: float, base: float) -> list[float]:
    """``n`` due times (epoch seconds) evenly over ``span`` seconds from ``base``."""
    return [base + (i * span / n if span else 0.0) for i in range(n)]


def relay_lateness_sample(bench: Bench, rt: Runtime, n: int, span: float, lead: float,
                          worker: bool) -> dict[str, list[float]]:
    """Schedule ``n`` timers in one commit, ``lead`` s ahead over ``span`` s; wait until each was
    handled (or, without a worker, dispatched); per timer, ms from due_at to fired / logged /
    claimed / handled."""
    bench.reset()
    time.sleep(0.5)
    dues = due_times(n, span, time.time() + lead)
    with rt.unit_of_work() as uow:
        for i, due in enumerate(dues):
            uow.schedule(ItemCreated(item_id=uuid.uuid4(), name=f"late-{i}", seq=i),
                         at=datetime.fromtimestamp(due, timezone.utc))
        uow.commit()
    if worker:
        wait_until(lambda: bench.scalar("SELECT count(*) FROM bench_effects") >= n, timeout=lead + span + 120,
                   interval=0.2, what=f"{n} timers handled")
    else:
        wait_until(lambda: bench.scalar("SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL") >= n,
                   timeout=lead + span + 120, interval=0.2, what=f"{n} timers dispatched")
    time.sleep(0.2)
    with bench.auto.connect() as conn:
        rows = conn.execute(LATENESS_SQL).all()
        statuses = dict(conn.execute(text("SELECT status, count(*) FROM ozzy_scheduled GROUP BY status")).all())
        logged = conn.execute(text("SELECT count(*) FROM ozzy_outbox")).scalar()
    if len(rows) != n or statuses != {"fired": n} or logged != n:
        raise BenchError(f"expected {n} timers fired once each: {len(rows)} joined rows, {statuses}, {logged} logged")
    if worker and any(row.handled is None for row in rows):
        raise BenchError("a fired timer has no handler effect")
    kinds = ("fired", "logged", "claimed", "handled") if worker else ("fired", "logged", "claimed")
    return {k: [float(getattr(row, k)) for row in rows] for k in kinds}


def ideal_lateness_sample(bench: Bench, n: int, span: float, lead: float) -> list[float]:
    """The ideal timer: sleep until each distinct due time, then one bare statement moves what is due
    from the scratch queue to the scratch log; ms from due_at to the row's occurred_at."""
    bench.execute("TRUNCATE bench_timer_src, bench_timer_dst")
    base = time.time() + lead
    bench.execute(
        f"""INSERT INTO bench_timer_src ({SCHEDULED_COLUMNS})
            SELECT event_id, event_type, event_version, aggregate_type, aggregate_id, payload, metadata,
                   to_timestamp(:base) + make_interval(secs => :step * (row_number() OVER (ORDER BY id) - 1)),
                   key
              FROM (SELECT * FROM bench_timer_template ORDER BY id LIMIT :n) t""",
        base=base, step=span / n if span else 0.0, n=n,
    )
    bench.vacuum("bench_timer_src", "bench_timer_dst")
    with bench.auto.connect() as conn:
        due_epochs = [float(v) for v in conn.execute(text(
            "SELECT DISTINCT extract(epoch FROM due_at) FROM bench_timer_src ORDER BY 1")).scalars()]
        for due in due_epochs:
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            conn.execute(IDEAL_FIRE)
        left = conn.execute(text("SELECT count(*) FROM bench_timer_src")).scalar()
        if left:
            conn.execute(IDEAL_FIRE)
        values = [float(v) for v in conn.execute(IDEAL_LATENESS_SQL).scalars()]
    if len(values) != n:
        raise BenchError(f"the ideal timer moved {len(values)} of {n} rows")
    return values


def section_lateness(bench: Bench, mode: str, n: int, spread_s: float, repeats: int, lead: float,
                     worker: bool, chosen: set[str], poll: float | None) -> dict[str, Any]:
    say(f"== 1. lateness: {n} timers per run, relay ({mode}){' + ozzy worker' if worker else ', no worker'};"
        f" ideal timer alongside{f'; relay poll every {poll:g} s' if poll else ''}")
    settings = bench.settings("lateness")
    rt = bench.env.runtime(settings)
    shapes = [shape for shape in (("instant", "all due at one instant", 0.0, repeats),
                                  ("one_second", "due 1 ms apart over 1 s", 1.0, repeats),
                                  ("spread", f"spread evenly over {spread_s:g} s", spread_s, 1))
              if shape[0] in chosen]
    result: dict[str, Any] = {"timers": n, "lead_s": lead, "relay": mode,
                              "worker": "ozzy worker (default threads)" if worker else None,
                              "relay_poll_interval_s": poll if poll else settings.poll_interval}
    extra = {"OZZY_POLL_INTERVAL": str(poll)} if poll else {}
    with running(bench, settings, mode, worker=worker, **extra):
        # Warm-up: connections, prepared statements, the handler's imports.
        bench.reset()
        with rt.unit_of_work() as uow:
            for i in range(20):
                uow.schedule(ItemCreated(item_id=uuid.uuid4(), name=f"warm-{i}", seq=i), after=0.3)
            uow.commit()
        warm = ("SELECT count(*) FROM bench_effects" if worker
                else "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL")
        wait_until(lambda: bench.scalar(warm) >= 20, 60, what="warm-up done")
        for key, label, span, reps in shapes:
            pooled: dict[str, list[float]] = {"fired": [], "logged": [], "claimed": [], "handled": []}
            ideal: list[float] = []
            per_run_p99: list[float] = []
            ideal_p99: list[float] = []
            load = loadavg()
            for rep in range(reps):
                order = ("relay", "ideal") if rep % 2 == 0 else ("ideal", "relay")
                for which in order:
                    if which == "relay":
                        sample = relay_lateness_sample(bench, rt, n, span, lead, worker)
                        for k, v in sample.items():
                            pooled[k].extend(v)
                        per_run_p99.append(r(percentile(sample["fired"], 99), 1))
                        last = "handled" if worker else "claimed"
                        say(f"   {key} run {rep + 1}: fired p50 {percentile(sample['fired'], 50):.1f} ms,"
                            f" p99 {percentile(sample['fired'], 99):.1f} ms, max {max(sample['fired']):.1f} ms;"
                            f" {last} p99 {percentile(sample[last], 99):.1f} ms")
                    else:
                        values = ideal_lateness_sample(bench, n, span, lead)
                        ideal.extend(values)
                        ideal_p99.append(r(percentile(values, 99), 1))
                        say(f"   {key} ideal {rep + 1}: p50 {percentile(values, 50):.1f} ms,"
                            f" p99 {percentile(values, 99):.1f} ms, max {max(values):.1f} ms")
            fired = summary(pooled["fired"])
            base = summary(ideal)
            result[key] = {
                "label": label,
                "span_s": span,
                "runs": reps,
                "fired_ms": fired,
                "logged_ms": summary(pooled["logged"]),
                "claimed_ms": summary(pooled["claimed"]),
                "handled_ms": summary(pooled["handled"]),
                "fired_p99_per_run_ms": per_run_p99,
                "ideal_ms": base,
                "ideal_p99_per_run_ms": ideal_p99,
                "p99_ratio_to_ideal": r(fired["p99"] / base["p99"], 2) if base["p99"] > 0 else None,
                "p99_over_ideal_ms": r(fired["p99"] - base["p99"], 1),
                "p99_ratio_to_target": r(fired["p99"] / TARGETS["lateness_p99_ms_max"], 3),
                "fired_early": sum(1 for v in pooled["fired"] if v < 0),
                "fired_over_target": sum(1 for v in pooled["fired"] if v > TARGETS["lateness_p99_ms_max"]),
                "target_met": fired["p99"] <= TARGETS["lateness_p99_ms_max"],
                "loadavg_1m_before_after": [load, loadavg()],
            }
    return result


# --- 2. throughput -------------------------------------------------------------------------------


def timed_fire_due(bench: Bench, rt: Runtime, n: int, limit: int, history: int) -> float:
    bench.reset()
    bench.load_scheduled(n, history)
    bench.vacuum("ozzy_scheduled")
    started = time.perf_counter()
    fired = timers.fire_due(rt.engine, limit)
    elapsed = time.perf_counter() - started
    logged = bench.scalar("SELECT count(*) FROM ozzy_outbox")
    if fired != n or logged != n:
        raise BenchError(f"fire_due(limit={limit}) fired {fired}, logged {logged}; expected {n}")
    return elapsed


def timed_bare_copy(bench: Bench, rt: Runtime, n: int, limit: int | None) -> float:
    bench.reset()
    bench.load_scheduled(n)
    bench.vacuum("ozzy_scheduled")
    started = time.perf_counter()
    if limit is None:
        with rt.engine.begin() as conn:
            conn.execute(BARE_COPY)
    else:
        after = 0
        while True:
            with rt.engine.begin() as conn:
                last, copied = conn.execute(BARE_COPY_BATCH, {"after": after, "limit": limit}).one()
            if copied < limit:
                break
            after = last
    elapsed = time.perf_counter() - started
    logged = bench.scalar("SELECT count(*) FROM ozzy_outbox")
    if logged != n:
        raise BenchError(f"the bare copy logged {logged} rows, expected {n}")
    return elapsed


def _node(plan: dict[str, Any], pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    if pred(plan):
        return plan
    for child in plan.get("Plans", []):
        found = _node(child, pred)
        if found is not None:
            return found
    return None


def _total(node: dict[str, Any] | None) -> float:
    return 0.0 if node is None else float(node["Actual Total Time"]) * float(node.get("Actual Loops", 1))


def explain_fire(bench: Bench, rt: Runtime, n: int, limit: int, show: bool) -> dict[str, Any]:
    """EXPLAIN ANALYZE of one FIRE_DUE batch half-way through ``n`` due timers, and of the bare copy of
    as many rows; both rolled back. Where a batch's time goes, by plan node."""
    bench.reset()
    bench.load_scheduled(n)
    bench.vacuum("ozzy_scheduled")
    for _ in range(n // 2 // limit):  # as the relay leaves the table mid-way through firing
        with rt.engine.begin() as conn:
            conn.execute(sql.FIRE_DUE, {"limit": limit}).one()
    bare_batch = text(f"INSERT INTO ozzy_outbox ({OUTBOX_COLUMNS}) SELECT {OUTBOX_VALUES} FROM"
                      " (SELECT * FROM ozzy_scheduled WHERE status = 'scheduled' ORDER BY due_at, id LIMIT :limit) s")
    out: dict[str, Any] = {"batch": limit, "after_fired": (n // 2 // limit) * limit}
    for name, statement in (("fire_due_batch", sql.FIRE_DUE), ("bare_copy_batch", bare_batch)):
        with rt.engine.connect() as conn:
            tx = conn.begin()
            (doc,) = conn.execute(text("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + statement.text),
                                  {"limit": limit}).scalar()
            tx.rollback()
            plain: list[str] = []
            if show:  # the same statement again, as text, in a transaction of its own
                tx = conn.begin()
                plain = list(conn.execute(text("EXPLAIN (ANALYZE, BUFFERS, WAL) " + statement.text),
                                          {"limit": limit}).scalars())
                tx.rollback()
        plan = doc["Plan"]
        item: dict[str, Any] = {
            "execution_ms": r(doc["Execution Time"], 2),
            "wal_records": _sum_key(plan, "WAL Records"),
            "wal_bytes": _sum_key(plan, "WAL Bytes"),
        }
        if name == "fire_due_batch":
            due = _node(plan, lambda p: p.get("Subplan Name") == "CTE due")
            update = _node(plan, lambda p: p.get("Node Type") == "ModifyTable" and p.get("Operation") == "Update")
            insert = _node(plan, lambda p: p.get("Node Type") == "ModifyTable" and p.get("Operation") == "Insert")
            update_child = update["Plans"][0] if update and update.get("Plans") else None
            insert_child = insert["Plans"][0] if insert and insert.get("Plans") else None
            item["nodes_ms"] = {
                "claim (index scan, sort, lock rows)": r(_total(due), 2),
                "find the claimed rows to update (join)": r(_total(update_child) - _total(due), 2),
                "update ozzy_scheduled (status, fired_at)": r(_total(update) - _total(update_child), 2),
                "sort fired rows, build outbox values": r(_total(insert_child), 2),
                "insert into ozzy_outbox (ON CONFLICT DO NOTHING)": r(_total(insert) - _total(insert_child), 2),
            }
            item["join"] = update_child.get("Node Type") if update_child else None
        else:
            insert = _node(plan, lambda p: p.get("Node Type") == "ModifyTable")
            insert_child = insert["Plans"][0] if insert and insert.get("Plans") else None
            item["nodes_ms"] = {
                "read rows, build outbox values": r(_total(insert_child), 2),
                "insert into ozzy_outbox": r(_total(insert) - _total(insert_child), 2),
            }
        out[name] = item
        if show:
            say(f"   EXPLAIN ANALYZE {name} (limit {limit}, {out['after_fired']} already fired):\n      "
                + "\n      ".join(plain))
    return out


def _sum_key(plan: dict[str, Any], key: str) -> int:
    """A plan's top-level figure (the WAL of every node below is included in it)."""
    return int(plan.get(key, 0))


def relay_loop_sample(bench: Bench, rt: Runtime, relay: RelayUnderTest, n: int, kind: str) -> dict[str, float]:
    """``kind`` ``timers``: ``n`` due timers loaded, then the relay woken as a commit wakes it; or
    ``plain``: the same rows as ordinary events. Seconds from the wake-up to every row fired (timers)
    and to every row dispatched."""
    bench.reset()
    if kind == "timers":
        bench.load_scheduled(n)
        bench.vacuum("ozzy_scheduled")
    else:  # not vacuumed: the drain reads rows as fresh as those fire_due writes in the other case
        bench.load_plain_events(n)
    cpu0 = relay.cpu()
    t0 = time.time()
    rt.wake_relays()
    fired_seen: float | None = None
    deadline = time.monotonic() + 300
    while True:
        with bench.auto.connect() as conn:
            waiting, undispatched, logged = conn.execute(PROGRESS_SQL).one()
        now = time.time()
        if waiting == 0 and fired_seen is None:
            fired_seen = now
        if waiting == 0 and logged == n and undispatched == 0:
            done = now
            break
        if time.monotonic() > deadline:
            raise BenchError(f"relay loop ({kind}): {waiting} waiting, {undispatched} undispatched of {logged} after 300 s")
        time.sleep(0.02)
    cpu1 = relay.cpu()
    with bench.auto.connect() as conn:
        last_fired = conn.execute(text("SELECT extract(epoch FROM max(fired_at)) FROM ozzy_scheduled")).scalar()
        last_claim = conn.execute(text("SELECT extract(epoch FROM max(dispatched_at)) FROM ozzy_outbox")).scalar()
        pending = conn.execute(text("SELECT count(*) FROM ozzy_deliveries WHERE status = 'pending'")).scalar()
    if pending != n:
        raise BenchError(f"relay loop ({kind}): {pending} pending deliveries, expected {n}")
    out = {"all_dispatched_s": done - t0, "last_batch_claimed_s": float(last_claim) - t0}
    if kind == "timers":
        out["all_fired_s"] = float(last_fired) - t0
    if cpu0 is not None and cpu1 is not None:
        out["relay_cpu_s"] = cpu1 - cpu0
    return out


def section_throughput(bench: Bench, mode: str, n: int, limits: list[int], repeats: int, e2e_batches: list[int],
                       e2e_repeats: int, history: int, show_plans: bool) -> dict[str, Any]:
    say(f"== 2. throughput: {n} due timers; fire_due alone at batches {limits}, then the relay loop ({mode})")
    settings = bench.settings("throughput")
    rt = bench.env.runtime(settings)
    result: dict[str, Any] = {"timers": n, "samples": repeats, "history_fired_rows": history}

    # (a) fire_due alone; no relay runs.
    load = loadavg()
    variants: list[tuple[str, Callable[[], float]]] = [("bare_copy", lambda: timed_bare_copy(bench, rt, n, None))]
    for limit in limits:
        variants.append((f"fire_due_{limit}", lambda limit=limit: timed_fire_due(bench, rt, n, limit, history)))
        variants.append((f"bare_copy_batches_{limit}", lambda limit=limit: timed_bare_copy(bench, rt, n, limit)))
    timed_fire_due(bench, rt, min(n, 2_000), 500, 0)  # warm-up, untimed
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for rep in range(repeats):
        rotated = variants[rep % len(variants):] + variants[:rep % len(variants)]
        for name, run in rotated:
            times[name].append(run())
            say(f"   {name}: {n / times[name][-1]:,.0f}/s ({times[name][-1]:.3f}s)")
    bare_s = statistics.median(times["bare_copy"])
    alone: dict[str, Any] = {}
    for name, _ in variants:
        s = statistics.median(times[name])
        alone[name] = {"seconds": r(s, 3), "per_s": r(n / s, 0), "per_s_samples": [r(n / t, 0) for t in times[name]],
                       "ratio_to_bare_copy": r(bare_s / s, 3)}
        if name.startswith("fire_due_"):
            limit = int(name.rsplit("_", 1)[1])
            alone[name]["ratio_to_bare_copy_same_batches"] = r(statistics.median(times[f"bare_copy_batches_{limit}"]) / s, 3)
            alone[name]["target_met"] = n / s >= TARGETS["fired_per_s_min"]
    alone["loadavg_1m_before_after"] = [load, loadavg()]
    result["fire_due_alone"] = alone
    result["explain"] = explain_fire(bench, rt, n, 1000 if 1000 in limits else limits[-1], show_plans)

    # (b) the relay loop, end to end. No worker: the relay's Dramatiq messages are dropped after each
    # sample, the redelivery sweep is an hour away, and the poll is too (the wake-up starts the clock).
    loop: dict[str, Any] = {}
    for batch in e2e_batches:
        load = loadavg()
        section = bench.settings(f"loop-{batch}")
        samples: dict[str, list[dict[str, float]]] = {"plain": [], "timers": []}
        with running(bench, section, mode, OZZY_BATCH_SIZE=str(batch), OZZY_POLL_INTERVAL="3600",
                     OZZY_REDELIVERY_AFTER="3600") as relay:
            wake_rt = bench.env.runtime(section)
            relay_loop_sample(bench, wake_rt, relay, min(n, 2_000), "timers")  # warm-up, untimed
            bench.clear_queues(section)
            for rep in range(e2e_repeats):
                for kind in (("plain", "timers") if rep % 2 == 0 else ("timers", "plain")):
                    sample = relay_loop_sample(bench, wake_rt, relay, n, kind)
                    samples[kind].append(sample)
                    bench.clear_queues(section)
                    fired = f"fired in {sample['all_fired_s']:.2f}s, " if kind == "timers" else ""
                    say(f"   relay batch {batch}, {kind}: {fired}all dispatched in {sample['all_dispatched_s']:.2f}s"
                        f" = {n / sample['all_dispatched_s']:,.0f}/s")
        plain_s = statistics.median(x["all_dispatched_s"] for x in samples["plain"])
        fired_s = statistics.median(x["all_fired_s"] for x in samples["timers"])
        e2e_s = statistics.median(x["all_dispatched_s"] for x in samples["timers"])
        entry: dict[str, Any] = {
            "plain_dispatched_s": r(plain_s, 3),
            "plain_dispatched_per_s": r(n / plain_s, 0),
            "timers_fired_s": r(fired_s, 3),
            "timers_fired_per_s": r(n / fired_s, 0),
            "timers_fired_and_dispatched_s": r(e2e_s, 3),
            "timers_fired_and_dispatched_per_s": r(n / e2e_s, 0),
            "timers_fired_and_dispatched_per_s_samples": [r(n / x["all_dispatched_s"], 0) for x in samples["timers"]],
            "ratio_e2e_to_plain_drain": r(plain_s / e2e_s, 3),
            "ratio_fired_to_bare_copy": r(bare_s / fired_s, 3),
            "ratio_e2e_to_bare_copy": r(bare_s / e2e_s, 3),
            "fired_target_met": n / fired_s >= TARGETS["fired_per_s_min"],
            "e2e_target_met": n / e2e_s >= TARGETS["fired_per_s_min"],
            "loadavg_1m_before_after": [load, loadavg()],
        }
        if all("relay_cpu_s" in x for x in samples["timers"] + samples["plain"]):
            entry["relay_cpu_s_timers"] = r(statistics.median(x["relay_cpu_s"] for x in samples["timers"]), 2)
            entry["relay_cpu_s_plain"] = r(statistics.median(x["relay_cpu_s"] for x in samples["plain"]), 2)
        loop[f"batch_{batch}"] = entry
    result["relay_loop"] = loop
    return result


# --- report --------------------------------------------------------------------------------------


def print_tables(result: dict[str, Any]) -> None:
    out = sys.stdout
    m = result["machine"]
    out.write(f"\nOzzy timers benchmark: quick={result['quick']}, relay={result['relay_mode']}, {m.get('cpus')} CPUs"
              f" ({m.get('cpu_model', '?')}), code {result['code'].get('commit', '?')}"
              f"{' + uncommitted changes' if result['code'].get('uncommitted_changes') else ''}\n")
    late = result.get("lateness")
    if late:
        out.write(f"\n1. Lateness, ms after due_at ({late['timers']:,} timers per run, scheduled {late['lead_s']:g} s ahead"
                  f" in one commit; target: fired p99 <= {TARGETS['lateness_p99_ms_max']:g} ms)\n")
        head = (f"{'shape':<32} {'runs':>4}  {'fired p50/p99/max':>20}  {'logged p99':>10}  {'claimed p99':>11}"
                f"  {'handled p99':>11}  {'ideal p50/p99/max':>19}  {'p99 x ideal':>11}  target\n")
        out.write(head)
        for key in ("instant", "one_second", "spread"):
            x = late.get(key)
            if not x:
                continue
            f, b = x["fired_ms"], x["ideal_ms"]
            ratio = x["p99_ratio_to_ideal"]
            out.write(f"{x['label']:<32} {x['runs']:>4}  {f['p50']:>6.1f}/{f['p99']:>6.1f}/{f['max']:>6.1f}"
                      f"  {x['logged_ms']['p99']:>10.1f}  {x['claimed_ms']['p99']:>11.1f}"
                      f"  {x['handled_ms']['p99'] if x['handled_ms'] else '-':>11}"
                      f"  {b['p50']:>5.1f}/{b['p99']:>5.1f}/{b['max']:>6.1f}  {ratio if ratio is not None else '-':>11}"
                      f"  {'met' if x['target_met'] else 'MISSED'} ({x['p99_ratio_to_target']:.2f} of it)\n")
    thr = result.get("throughput")
    if thr:
        n = thr["timers"]
        alone = thr["fire_due_alone"]
        out.write(f"\n2a. timers.fire_due alone: {n:,} due timers, median of {thr['samples']}"
                  f" (target >= {TARGETS['fired_per_s_min']:,.0f}/s)\n")
        out.write(f"{'variant':<42} {'seconds':>8} {'per s':>9} {'x bare copy':>12} {'x same batches':>15}  target\n")
        for name, x in alone.items():
            if not isinstance(x, dict):
                continue
            label = {"bare_copy": "baseline: bare INSERT ... SELECT, 1 statement"}.get(name, name)
            if name.startswith("bare_copy_batches_"):
                label = f"bare copy, batches of {name.rsplit('_', 1)[1]}"
            elif name.startswith("fire_due_"):
                label = f"fire_due(limit={name.rsplit('_', 1)[1]})"
            same = x.get("ratio_to_bare_copy_same_batches")
            target = ("met" if x["target_met"] else "MISSED") if "target_met" in x else ""
            out.write(f"{label:<42} {x['seconds']:>8.3f} {x['per_s']:>9,.0f} {x['ratio_to_bare_copy']:>12.3f}"
                      f" {same if same is not None else '':>15}  {target}\n")
        ex = thr.get("explain")
        if ex:
            fd, bc = ex["fire_due_batch"], ex["bare_copy_batch"]
            out.write(f"    EXPLAIN ANALYZE, one batch of {ex['batch']} after {ex['after_fired']:,} fired:"
                      f" FIRE_DUE {fd['execution_ms']:.1f} ms ({fd['wal_records']:,} WAL records),"
                      f" bare copy {bc['execution_ms']:.1f} ms ({bc['wal_records']:,} WAL records)\n")
            for label, ms in fd["nodes_ms"].items():
                out.write(f"      {label:<52} {ms:>7.2f} ms\n")
        out.write(f"\n2b. Relay loop end to end ({result['relay_mode']}): {n:,} due timers, woken as a commit wakes it,"
                  f" median of samples\n")
        out.write(f"{'relay batch':<12} {'plain drain /s':>15} {'timers fired /s':>16} {'fired+dispatched /s':>20}"
                  f" {'x plain drain':>14} {'x bare copy':>12}  target (fired / end to end)\n")
        for key, x in thr["relay_loop"].items():
            out.write(f"{key.split('_')[1]:<12} {x['plain_dispatched_per_s']:>15,.0f} {x['timers_fired_per_s']:>16,.0f}"
                      f" {x['timers_fired_and_dispatched_per_s']:>20,.0f} {x['ratio_e2e_to_plain_drain']:>14.3f}"
                      f" {x['ratio_e2e_to_bare_copy']:>12.3f}  {'met' if x['fired_target_met'] else 'MISSED'}"
                      f" / {'met' if x['e2e_target_met'] else 'MISSED'}\n")
    met = result.get("targets_met")
    if met:
        out.write("\nTargets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke-test version (small counts)")
    parser.add_argument("--sections", default="lateness,throughput", help="comma-separated: lateness, throughput")
    parser.add_argument("--relay", choices=("process", "thread"), default="process",
                        help="a real `ozzy relay` child (default) or Relay(runtime).start() in this process")
    parser.add_argument("--spread", type=float, default=None, help="seconds the spread run covers (60; 15 quick)")
    parser.add_argument("--history", type=int, default=0,
                        help="fired rows already in ozzy_scheduled for fire_due alone (2a), default 0")
    parser.add_argument("--explain", action="store_true", help="print the EXPLAIN ANALYZE plans (stderr)")
    parser.add_argument("--shapes", default="instant,one_second,spread",
                        help="section 1's runs, comma-separated (default all three)")
    parser.add_argument("--poll", type=float, default=None,
                        help="section 1's relay poll interval in s (default: the relay's, 1 s)")
    parser.add_argument("--no-worker", action="store_true",
                        help="section 1 without an `ozzy worker` (the relay alone on the machine)")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - {"lateness", "throughput"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on SIGTERM too

    q = args.quick
    sizes: dict[str, Any] = {
        "lateness_timers": 1_000,
        "lateness_lead_s": 3.0,
        "lateness_spread_s": args.spread if args.spread is not None else (15.0 if q else 60.0),
        "lateness_burst_runs": 1 if q else 3,
        "throughput_timers": 5_000 if q else 20_000,
        "fire_due_batches": [500, 1000] if q else [100, 500, 1000, 5000],
        "fire_due_samples": 1 if q else 3,
        "relay_loop_batches": [500] if q else [500, 1000],
        "relay_loop_samples": 1 if q else 3,
    }
    result: dict[str, Any] = {
        "benchmark": "ozzy-timers",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": q,
        "relay_mode": args.relay,
        "machine": machine(),
        "code": {**code_version(), "files_sha256_12": file_hashes()},
        "sizes": sizes,
        "targets": TARGETS,
    }
    env = Environment()
    bench: Bench | None = None
    ok = False
    try:
        env.setup()
        result["servers"] = server_versions(env)
        bench = Bench(env)
        template_rt = env.runtime(bench.settings("template"))
        bench.make_template(template_rt, max(sizes["throughput_timers"], sizes["lateness_timers"]))
        if "lateness" in sections:
            result["lateness"] = section_lateness(bench, args.relay, sizes["lateness_timers"],
                                                  sizes["lateness_spread_s"], sizes["lateness_burst_runs"],
                                                  sizes["lateness_lead_s"], not args.no_worker,
                                                  {x.strip() for x in args.shapes.split(",")}, args.poll)
        if "throughput" in sections:
            result["throughput"] = section_throughput(
                bench, args.relay, sizes["throughput_timers"], sizes["fire_due_batches"], sizes["fire_due_samples"],
                sizes["relay_loop_batches"], sizes["relay_loop_samples"], args.history, args.explain)
        met: dict[str, bool] = {}
        for key in ("instant", "one_second", "spread"):
            if key in result.get("lateness", {}):
                met[f"lateness_p99_{key}"] = result["lateness"][key]["target_met"]
        if "throughput" in result:
            for name, x in result["throughput"]["fire_due_alone"].items():
                if isinstance(x, dict) and "target_met" in x:
                    met[f"fired_per_s_{name}"] = x["target_met"]
            for key, x in result["throughput"]["relay_loop"].items():
                met[f"relay_loop_fired_per_s_{key}"] = x["fired_target_met"]
                met[f"relay_loop_end_to_end_per_s_{key}"] = x["e2e_target_met"]
        result["targets_met"] = met
        result["all_targets_met"] = all(met.values())
        print_tables(result)
        ok = True
    except BaseException as exc:
        record_failure(result, exc, say)
    finally:
        if bench is not None:
            bench.close()
        env.close()
        print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
