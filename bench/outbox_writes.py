#!/usr/bin/env python
"""What the outbox costs a business commit, split into its parts, old and new side by side (#16).

    .venv/bin/python bench/outbox_writes.py                    # 3,000 commits per variant, 3 schemas
    .venv/bin/python bench/outbox_writes.py --commits 500 --prefill 0 --schemas head   # quick

One fresh database per schema (``ozzy_bench_writes_<schema>_<hex>``, dropped at the end, also on an
error), migrated to head, with ``--prefill`` rows already in ``ozzy_outbox`` (one server-side
``INSERT ... SELECT``, so the indexes are not toy-sized), then ``VACUUM ANALYZE``:

* ``head``: the schema as migrated;
* ``lean``: without the five back-office indexes (aggregate, correlation, causation, type, BRIN on
  time): what they cost, the most any folding of them could give back;
* ``json``: ``payload`` and ``metadata`` as ``json`` instead of ``jsonb``.

On each database, four variants of one commit (a ``BenchItem`` row, as ``bench/pipeline.py``
section 4):

* ``plain``: a plain SQLAlchemy session inserting the row, no event (the baseline);
* ``event``: a unit of work recording one ``ItemCreated`` (the product as it is);
* ``event_pipeline``: the same, with the outbox INSERT and the COMMIT sent in a psycopg pipeline
  (the code before this change, kept as the fallback path in ``shared/outbox/write.py``);
* ``plain_row``: the plain session with one outbox row riding on its COMMIT through
  ``write_at_commit``, without the unit of work: the row's own cost, without the machinery.

Every variant of every database takes its turn commit by commit, the order rotating, so drift on
this shared machine falls on all alike. The outbox cost of a variant is ``1 - rate / plain rate``
on the same database. Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.bench_app import HANDLER_NAME, TABLES, BenchItem, ItemCreated  # noqa: E402
from bench.pipeline import ADMIN_URL, cpu_seconds, loadavg, say  # noqa: E402
from shared.config import Config  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.db.engine import make_engine  # noqa: E402
from shared.db.migrate import migrate  # noqa: E402
from shared.delivery.handlers import HandlerRegistry  # noqa: E402
from shared.model.base import Base  # noqa: E402
from shared.model.stored import to_stored  # noqa: E402
from shared.outbox import write  # noqa: E402
from shared.runtime import Runtime  # noqa: E402

SCHEMAS: dict[str, list[str]] = {
    "head": [],
    "lean": [f"DROP INDEX {name}" for name in (
        "ix_ozzy_outbox_aggregate", "ix_ozzy_outbox_correlation", "ix_ozzy_outbox_causation",
        "ix_ozzy_outbox_type_id", "ix_ozzy_outbox_occurred_at")],
    "json": ["ALTER TABLE ozzy_outbox ALTER payload TYPE json, ALTER metadata TYPE json"],
}

PREFILL = """
    INSERT INTO ozzy_outbox (event_id, event_type, event_version, aggregate_type, aggregate_id, payload,
                             metadata, correlation_id, occurred_at, dispatched_at, dispatch_seq)
    SELECT gen_random_uuid(), 'bench.item_created', 1, 'bench_items', gen_random_uuid()::text,
           jsonb_build_object('item_id', gen_random_uuid(), 'name', 'prefill-' || i, 'seq', i),
           jsonb_build_object('correlation_id', gen_random_uuid(), 'causation_id', NULL, 'actor', NULL),
           gen_random_uuid(), now() - make_interval(secs => :n - i), now(), i
      FROM generate_series(1, :n) AS i
"""


def create_database(schema: str, tag: str, prefill: int) -> tuple[str, Config]:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"ozzy_bench_writes_{schema}_{tag}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    settings = load_config(database_url=url, redis_url="redis://127.0.0.1:6379/0",
                           redis_namespace=f"ozzybench-writes-{tag}", handler_modules=("bench.bench_app",),
                           migration_packages=())
    migrate(settings)
    engine = create_engine(settings.sqlalchemy_url, isolation_level="AUTOCOMMIT")
    Base.metadata.create_all(engine, tables=TABLES)
    with engine.connect() as conn:
        for statement in SCHEMAS[schema]:
            conn.execute(text(statement))
        if prefill:
            conn.execute(text(PREFILL), {"n": prefill})
            conn.execute(text("SELECT setval(pg_get_serial_sequence('ozzy_outbox', 'id'), :n)"), {"n": prefill})
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return name, settings


def variant_runtime(settings: Config, variant: str) -> Runtime:
    """A runtime of its own per variant: one pooled connection, one server process to measure."""
    spec = HandlerRegistry.from_modules(["bench.bench_app"])[HANDLER_NAME]
    engine = make_engine(settings, connect_args={"connect_timeout": 5, "application_name": f"writes-{variant}"})
    return Runtime(settings, engine, [spec])


def backend_cpu(rt: Runtime) -> float:
    """CPU seconds of the server processes serving ``rt``'s connections (the server is local)."""
    with rt.engine.connect() as conn:
        name = conn.exec_driver_sql("SHOW application_name").scalar()
        pids = conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %(n)s", {"n": name}
        ).scalars().all()
    return sum(cpu_seconds(pid) for pid in pids)


def variants(rt: Runtime) -> dict[str, Callable[[int], None]]:
    def plain(i: int) -> None:
        session = rt.session_factory()
        try:
            session.add(BenchItem.create(f"plain-{i}", i, record=False))
            session.commit()
        finally:
            session.close()

    def event(i: int) -> None:
        with rt.unit_of_work() as uow:
            uow.add(BenchItem.create(f"ev-{i}", i))
            uow.commit()

    def event_pipeline(i: int) -> None:
        write._quotable = lambda params: False  # the pipeline path
        try:
            event(i)
        finally:
            write._quotable = quotable

    def plain_row(i: int) -> None:
        session = rt.session_factory()
        try:
            item = BenchItem.create(f"row-{i}", i, record=False)
            session.add(item)
            session.flush()
            stored = to_stored(ItemCreated(item_id=item.id, name=item.name, seq=i),
                               aggregate_type="bench_items", aggregate_id=str(item.id))
            write.write_at_commit(session.connection(), [stored])
            session.commit()
        finally:
            session.close()

    quotable = write._quotable
    return {"plain": plain, "event": event, "event_pipeline": event_pipeline, "plain_row": plain_row}


def run(schemas: list[str], commits: int, prefill: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    databases: dict[str, str] = {}
    runtimes: list[Runtime] = []
    try:
        calls: dict[str, Callable[[int], None]] = {}
        measured: dict[str, Runtime] = {}
        for schema in schemas:
            say(f"creating {schema} (prefill {prefill:,} rows)")
            databases[schema], settings = create_database(schema, tag, prefill)
            for name in ("plain", "event", "event_pipeline", "plain_row"):
                rt = variant_runtime(settings, f"{schema}-{name}")
                runtimes.append(rt)
                calls[f"{schema}/{name}"] = variants(rt)[name]
                measured[f"{schema}/{name}"] = rt
        for fn in calls.values():
            for i in range(100):
                fn(-1 - i)
        times: dict[str, list[float]] = {name: [] for name in calls}
        client: dict[str, float] = dict.fromkeys(calls, 0.0)
        server = {name: -backend_cpu(rt) for name, rt in measured.items()}
        order = list(calls)
        load_before = loadavg()
        say(f"{commits} commits per variant, {len(order)} variants taking turns; load {load_before}")
        for i in range(commits):
            k = i % len(order)
            for name in order[k:] + order[:k]:
                cpu, started = time.process_time(), time.perf_counter()
                calls[name](i)
                times[name].append(time.perf_counter() - started)
                client[name] += time.process_time() - cpu
        for name, rt in measured.items():
            server[name] += backend_cpu(rt)
        cpu_ms = {name: (client[name] + server[name]) / commits * 1000 for name in calls}
        say("CPU per commit (client + server ms): " + ", ".join(
            f"{n} {client[n] / commits * 1000:.3f} + {server[n] / commits * 1000:.3f}" for n in calls))
        return report(schemas, commits, prefill, times, cpu_ms, load_before)
    finally:
        for rt in runtimes:
            rt.close()
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in databases.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def report(schemas: list[str], commits: int, prefill: int, times: dict[str, list[float]],
           cpu_ms: dict[str, float], load_before: float) -> dict[str, Any]:
    rates = {name: commits / sum(t) for name, t in times.items()}
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    out: dict[str, Any] = {"commits_each": commits, "prefill_rows": prefill, "load_before": load_before,
                           "load_after": loadavg(), "schemas": {}}
    for schema in schemas:
        plain = f"{schema}/plain"
        figures = {}
        for name in ("event", "event_pipeline", "plain_row"):
            key = f"{schema}/{name}"
            figures[name] = {"commits_per_s": round(rates[key], 1), "median_ms": round(medians[key], 3),
                             "cost_pct": round((1 - rates[key] / rates[plain]) * 100, 2),
                             "cost_pct_by_median": round((1 - medians[plain] / medians[key]) * 100, 2),
                             "cpu_ms": round(cpu_ms[key], 3),
                             "cost_pct_by_cpu": round((1 - cpu_ms[plain] / cpu_ms[key]) * 100, 2)}
        figures["plain"] = {"commits_per_s": round(rates[plain], 1), "median_ms": round(medians[plain], 3),
                            "cpu_ms": round(cpu_ms[plain], 3)}
        out["schemas"][schema] = figures
        for name, f in figures.items():
            cost = (f" cost {f['cost_pct']:5.1f} % (by median {f['cost_pct_by_median']:5.1f} %,"
                    f" by CPU {f['cost_pct_by_cpu']:5.1f} %)") if "cost_pct" in f else ""
            say(f"   {schema:5s} {name:15s} {f['commits_per_s']:7.0f}/s median {f['median_ms']:.3f} ms"
                f" CPU {f['cpu_ms']:.3f} ms{cost}")
    say(f"load average {out['load_before']} -> {out['load_after']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=3000, help="commits per variant (default 3000)")
    parser.add_argument("--prefill", type=int, default=200_000, help="rows already in the outbox (default 200,000)")
    parser.add_argument("--schemas", default="head,lean,json", help="comma-separated, of: " + ", ".join(SCHEMAS))
    args = parser.parse_args(argv)
    schemas = [s.strip() for s in args.schemas.split(",") if s.strip()]
    unknown = set(schemas) - set(SCHEMAS)
    if unknown:
        parser.error(f"unknown schema(s): {', '.join(sorted(unknown))}")
    print(json.dumps(run(schemas, args.commits, args.prefill)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
