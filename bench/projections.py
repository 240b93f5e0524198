#!/usr/bin/env python
"""Projection rebuild rate at a large log, next to the relay's dispatch rate in the same run (#14).

    .venv/bin/python bench/projections.py                  # L = 1,000,000 events (several minutes)
    .venv/bin/python bench/projections.py --rows 100000    # a quicker run
    .venv/bin/python bench/projections.py --rows 100000 --naive   # also a statement-per-event projection

1. **Fill**: L undispatched outbox rows in one server-side ``INSERT ... SELECT generate_series``:
   the six loan event types in turn (valid payloads: the projection decodes every event it reads),
   spread over 30 days.
2. **Relay**: one ``Relay.drain()`` dispatches all of them (claim, announce on the fast channel,
   number under the dispatch lock, commit; no handler is registered, so no Dramatiq message is
   sent): events/s.
3. **Rebuild**: ``shared.projections.runner.rebuild`` of ``loans.stats`` (the example: it counts a
   batch in memory and upserts once per day) over the whole log, batches of ``--batch``: events
   of the log per second (positions covered) and events applied per second (the five types it
   reads); the result is checked against a ``GROUP BY`` count from scratch.
4. With ``--naive``: the same counts by a projection with one ``@applies`` method per type and one
   UPSERT per event (what a first projection usually looks like).

Servers as the tests find them (``tests/servers.py``): a fresh database and Redis namespace, removed
at the end. Progress on stderr; the last line of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from services.loans.model import (  # noqa: E402
    LoanApplicationSubmitted,
    LoanApproved,
    LoanRejected,
    OfferAccepted,
    OfferExpired,
)
from services.loans.stats import COLUMNS, KINDS, LoanStats, loan_stats  # noqa: E402
from shared.db.engine import make_engine  # noqa: E402
from shared.delivery.relay import Relay  # noqa: E402
from shared.projections import Applied, Projection, applies  # noqa: E402
from shared.projections.runner import rebuild  # noqa: E402
from shared.runtime import Runtime  # noqa: E402
from tests import servers  # noqa: E402

START = time.monotonic()

#: Six types in turn: the five the projection counts and one it does not read.
FILL = """
INSERT INTO ozzy_outbox (event_id, event_type, event_version, aggregate_type, aggregate_id, payload, metadata,
                         occurred_at)
SELECT gen_random_uuid(), t.event_type, 1, 'loan_application', a.app::text,
       CASE t.event_type
         WHEN 'loans.application_submitted' THEN jsonb_build_object('application_id', a.app,
              'applicant_name', 'Applicant ' || g, 'email', 'person' || g || '@example.com', 'amount', '2500.00')
         WHEN 'loans.credit_checked' THEN jsonb_build_object('application_id', a.app, 'score', 700)
         WHEN 'loans.approved' THEN jsonb_build_object('application_id', a.app, 'amount', '2500.00', 'score', 700)
         WHEN 'loans.rejected' THEN jsonb_build_object('application_id', a.app, 'score', 400, 'reason', 'score')
         ELSE jsonb_build_object('application_id', a.app)
       END,
       jsonb_build_object('correlation_id', a.app, 'causation_id', null),
       timestamptz '2026-11-01 00:00:00+00' + (g::float / :n) * interval '30 days'
  FROM generate_series(1, :n) AS g
 CROSS JOIN LATERAL (SELECT gen_random_uuid() AS app) AS a
 CROSS JOIN LATERAL (SELECT (ARRAY['loans.application_submitted', 'loans.credit_checked', 'loans.approved',
                                   'loans.rejected', 'loans.offer_accepted', 'loans.offer_expired'])[1 + g % 6]
                            AS event_type) AS t
"""

_BUMP = text("""
    INSERT INTO bench_naive_stats (day, kind, n) VALUES (:day, :kind, 1)
    ON CONFLICT (day, kind) DO UPDATE SET n = bench_naive_stats.n + 1
""")


class NaiveStats(Projection, name="bench.naive_stats", tables=("bench_naive_stats",)):
    """The same counts, one statement per event."""

    @applies(LoanApplicationSubmitted, LoanApproved, LoanRejected, OfferAccepted, OfferExpired)
    def count(self, event: Any, at: Applied) -> None:
        at.conn.execute(_BUMP, {"day": at.stored.occurred_at.date(), "kind": KINDS[at.stored.type]})


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


def counted_from_scratch(engine: Any) -> dict[str, Any]:
    days: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for day, kind, n in conn.execute(text(
                "SELECT (occurred_at AT TIME ZONE 'UTC')::date, event_type, count(*) FROM ozzy_outbox"
                " WHERE event_type = ANY(:types) GROUP BY 1, 2"), {"types": list(KINDS)}):
            days.setdefault(day.isoformat(), dict.fromkeys(COLUMNS, 0))[KINDS[kind]] = n
    return {"days": dict(sorted(days.items()))}


def timed_rebuild(engine: Any, projection: Projection, rows: int, batch: int) -> dict[str, Any]:
    last = [0.0]

    def progress(position: int, end: int) -> None:
        if time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            say(f"  {projection.name}: {position:,} / {end:,}")

    started = time.perf_counter()
    applied = rebuild(engine, projection, batch, progress=progress)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "applied": applied, "log_events_per_s": round(rows / seconds),
            "applied_per_s": round(applied / seconds), "batch": batch}


def run(rows: int, batch: int, naive: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"rows": rows, "cpus": os.cpu_count(), "python": platform.python_version()}
    with ExitStack() as stack:
        db_url, redis_url = servers.database_server_url(stack), servers.redis_server_url(stack)
        settings = stack.enter_context(servers.provisioned(db_url, redis_url))
        runtime = Runtime(settings, make_engine(settings), [])
        stack.callback(runtime.close)
        engine = runtime.engine
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE bench_naive_stats (day date, kind text, n int NOT NULL,"
                              " PRIMARY KEY (day, kind))"))
        say(f"filling {rows:,} undispatched events")
        with engine.begin() as conn:
            conn.execute(text(FILL), {"n": rows})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE ozzy_outbox"))
        say("relay: draining")
        started = time.perf_counter()
        dispatched = Relay(runtime).drain()
        seconds = time.perf_counter() - started
        if dispatched != rows:
            raise RuntimeError(f"the relay dispatched {dispatched} of {rows}")
        results["relay"] = {"seconds": round(seconds, 2), "events_per_s": round(rows / seconds),
                            "batch": settings.batch_size}
        say(f"relay: {results['relay']}")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE ozzy_outbox"))
        say("rebuild loans.stats")
        results["rebuild"] = timed_rebuild(engine, LoanStats(), rows, batch)
        with engine.connect() as conn:
            results["rebuild"]["equal_to_count_from_scratch"] = loan_stats(conn) == counted_from_scratch(engine)
        say(f"rebuild: {results['rebuild']}")
        results["rebuild_to_relay"] = round(results["rebuild"]["log_events_per_s"] / results["relay"]["events_per_s"], 2)
        if naive:
            say("rebuild the statement-per-event projection")
            results["naive_rebuild"] = timed_rebuild(engine, NaiveStats(), rows, batch)
            say(f"naive: {results['naive_rebuild']}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=500, help="events per rebuild transaction")
    parser.add_argument("--naive", action="store_true", help="also rebuild a statement-per-event projection")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.rows, args.batch, args.naive)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
