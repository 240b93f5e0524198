#!/usr/bin/env python
"""History does not slow it down (#16 target 6): back-office pages and pipeline rates with a long log.

    PYTHONPATH=. .venv/bin/python bench/history.py                        # 10,000,000 events (~20 min, ~11 GB)
    PYTHONPATH=. .venv/bin/python bench/history.py --events 1000000       # a quicker run
    PYTHONPATH=. .venv/bin/python bench/history.py --events 200000 --no-rates   # pages only

Two databases are made with ``bench.pipeline.Environment`` (migrated, bench tables, dropped at the
end, also on an error, Ctrl-C or SIGTERM): the "small" one gets a history of ``--baseline`` events
(10,000), the "big" one ``--events``. Both are filled by the same server-side statements:

- ``ozzy_outbox``: ``bench.event_log``'s generator (types, aggregates, correlation and causation
  chains, payloads, 30 days of ``occurred_at``, ``dispatched_at`` and ``dispatch_seq`` on all but
  the newest 100), with time-ordered (version 7 style) event ids, correlation ids that default to
  the event id as the framework's do, and 0.05 % ``ozzy.audit`` events;
- ``ozzy_deliveries``: one row per dispatched ``loans.*`` event, a second one for
  ``loans.approved``; 99.8 % done, the rest dead, resolved or retrying.

Secondary indexes are dropped before the fill and rebuilt from their own definitions afterwards,
then ``VACUUM (ANALYZE)``.

Pages: every back-office list page and filter, and the list routes of ``/api``, through the Flask
test client as a logged-in viewer (API: a viewer's token). One warm-up each, then ``--samples``
rounds alternating big and small; medians. Requests whose SQL takes more than ``--explain-ms`` at
the big size are EXPLAINed (stderr).

Rates (skipped by ``--no-rates``), ``--rounds`` rounds, the two databases taking turns:
commit rate (``--commits`` sequential units of work, one event each), relay rate
(``Relay.drain()`` of ``--relay-events`` committed events) and drain rate (an ``ozzy worker``
process handling them, from the first handler start to the last). Ratio big / small per figure.

Progress goes to stderr; the last line of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from bench import event_log as el  # noqa: E402
from bench import pipeline as pl  # noqa: E402
from bench.bench_app import BenchItem  # noqa: E402
from bench.common import BenchError, wait_until  # noqa: E402

START = time.monotonic()

#: The event-log generator, with framework-like ids: version-7 style event ids from the row's time
#: (time-ordered, as ``new_event_id``), the correlation id defaulting to the event id, and a few
#: audit events among the rare ones.
V7 = ("(lpad(to_hex(floor(extract(epoch FROM now() - interval '30 days' + interval '30 days' * ((g - 1)::float8 / :n))"
      " * 1000)::bigint), 12, '0') || substr(md5(random()::text || g::text), 1, 20))::uuid")
FILL = el.FILL.replace(
    "gen_random_uuid() AS event_id,\n           gen_random_uuid() AS own_correlation,",
    f"{V7} AS event_id,",
).replace(
    "FROM generate_series(1, :n) AS g\n), linked AS (",
    "FROM generate_series(1, :n) AS g\n), based AS (SELECT *, event_id AS own_correlation FROM base\n), linked AS (",
).replace("FROM base AS b", "FROM based AS b").replace(
    "ELSE 'ozzy.control_command' END AS event_type",
    "WHEN r_type < 0.9995 THEN 'ozzy.control_command' ELSE 'ozzy.audit' END AS event_type",
)
assert FILL.count(V7) == 1 and "based AS b" in FILL and "'ozzy.audit'" in FILL

AUDIT_PAYLOADS = """
UPDATE ozzy_outbox
   SET payload = jsonb_build_object(
           'action', (ARRAY['login', 'login.failed', 'setting.changed', 'deliveries.retried'])[1 + id % 4],
           'actor', (ARRAY['user:ann', 'user:bob', 'token:deploy-bot', 'cli:root'])[1 + (id / 4) % 4],
           'client', '10.0.0.' || (id % 250), 'target', 'x' || (id % 97), 'details', '{}'::jsonb)
 WHERE event_type = 'ozzy.audit'
"""

DELIVERIES = """
INSERT INTO ozzy_deliveries (event_id, handler, status, attempts, last_error, created_at, enqueued_at,
                             updated_at, completed_at, first_failed_at, last_failed_at, dead_reason)
SELECT o.event_id, h.handler, s.status,
       CASE WHEN s.status = 'done' THEN 1 ELSE 5 END,
       CASE WHEN s.status <> 'done' THEN 'Traceback (most recent call last):\n  ...\nTimeoutError: bureau' END,
       o.dispatched_at, o.dispatched_at, o.dispatched_at + interval '20 milliseconds',
       CASE WHEN s.status IN ('done', 'resolved') THEN o.dispatched_at + interval '20 milliseconds' END,
       CASE WHEN s.status <> 'done' THEN o.dispatched_at + interval '10 milliseconds' END,
       CASE WHEN s.status <> 'done' THEN o.dispatched_at + interval '5 minutes' END,
       CASE WHEN s.status IN ('dead', 'resolved') THEN 'retries_exhausted' END
  FROM ozzy_outbox AS o
 CROSS JOIN LATERAL (VALUES ('loans.notify_applicant'), ('loans.book_payout')) AS h(handler)
 CROSS JOIN LATERAL (SELECT CASE WHEN r < 0.0010 THEN 'dead' WHEN r < 0.0015 THEN 'resolved'
                                 WHEN r < 0.0020 THEN 'retrying' ELSE 'done' END AS status
                       FROM (SELECT random() + 0 * o.id AS r) AS x) AS s
 WHERE o.dispatched_at IS NOT NULL AND o.event_type LIKE 'loans.%'
   AND (h.handler = 'loans.notify_applicant' OR o.event_type = 'loans.approved')
 ORDER BY o.id, h.handler
"""

DELIVERY_INDEXES = """
SELECT i.indexname, i.indexdef FROM pg_indexes AS i
 WHERE i.schemaname = current_schema() AND i.tablename = 'ozzy_deliveries'
   AND i.indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'ozzy_deliveries'::regclass)
 ORDER BY i.indexname
"""


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


# --- fill ---------------------------------------------------------------------------------------


def fill(engine: Engine, n: int) -> dict[str, Any]:
    started = time.monotonic()
    with engine.connect() as conn:
        indexes = conn.execute(text(el.SECONDARY_INDEXES)).all() + conn.execute(text(DELIVERY_INDEXES)).all()
        for setting in ("work_mem = '256MB'", "maintenance_work_mem = '512MB'", "synchronous_commit = off"):
            conn.execute(text(f"SET {setting}"))
        conn.execute(text("SELECT setseed(0.42)"))
        for name, _ in indexes:
            conn.execute(text(f'DROP INDEX "{name}"'))
        inserted = conn.execute(text(FILL), {"n": n, "share": el.SHARE, "undispatched": el.UNDISPATCHED,
                                             "parked": el.PARKED}).rowcount
        conn.execute(text(AUDIT_PAYLOADS))
        conn.commit()
        say(f"  {inserted:,} events in {time.monotonic() - started:.0f} s")
        deliveries = conn.execute(text(DELIVERIES)).rowcount
        conn.commit()
        say(f"  {deliveries:,} deliveries at {time.monotonic() - started:.0f} s")
        for _, definition in indexes:
            conn.execute(text(definition))
        conn.commit()
        say(f"  indexes rebuilt at {time.monotonic() - started:.0f} s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) ozzy_outbox"))
        conn.execute(text("VACUUM (ANALYZE) ozzy_deliveries"))
        sizes = conn.execute(text(
            "SELECT pg_size_pretty(pg_total_relation_size('ozzy_outbox')),"
            "       pg_size_pretty(pg_total_relation_size('ozzy_deliveries'))")).one()
    if inserted != n:
        raise BenchError(f"expected {n} events, inserted {inserted}")
    return {"events": inserted, "deliveries": deliveries, "seconds": round(time.monotonic() - started, 1),
            "outbox_size": sizes[0], "deliveries_size": sizes[1]}


# --- the back office ----------------------------------------------------------------------------


@dataclass
class Office:
    label: str
    rows: int
    env: Any
    runtime: Any
    client: Any
    api: Any
    recorder: el.Recorder
    token: str
    probes: dict[str, Any] = field(default_factory=dict)
    filter_args: dict[str, str] = field(default_factory=dict)


def build_office(env: pl.Environment, label: str, rows: int) -> Office:
    from services.app import create_app
    from shared.ops.accounts import create_token, create_user
    from tests.integration.test_back_office import csrf_token, https_client

    settings = env.section_settings("office", secret_key="bench-secret-key-not-for-production-0123456789")
    runtime = env.runtime(settings)
    app = create_app(runtime)
    with runtime.session_factory() as session:
        user = create_user(session, "viewer", "correct horse battery", role="viewer")
        _, secret = create_token(session, user, "bench")
        session.commit()
    client = https_client(app)
    response = client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": "viewer",
                                                 "password": "correct horse battery"})
    if response.status_code != 302:
        raise BenchError(f"{label}: login failed with {response.status_code}")
    office = Office(label, rows, env, runtime, client, https_client(app), el.Recorder(runtime.engine), secret)
    office.probes = el.probes(runtime.engine, rows)
    office.probes.update(delivery_probes(runtime.engine))
    office.filter_args = filter_args(client)
    return office


def delivery_probes(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        lo, hi = conn.execute(text("SELECT min(id), max(id) FROM ozzy_deliveries")).one()
        middle = lo + (hi - lo) // 2
        event_id = conn.execute(text("SELECT event_id FROM ozzy_deliveries WHERE id <= :m ORDER BY id DESC LIMIT 1"),
                                {"m": middle}).scalar()
        audit = conn.execute(text("SELECT occurred_at FROM ozzy_outbox WHERE event_type = 'ozzy.audit'"
                                  " ORDER BY id LIMIT 1 OFFSET (SELECT count(*) / 2 FROM ozzy_outbox"
                                  " WHERE event_type = 'ozzy.audit')")).scalar()
        seq = conn.execute(text("SELECT max(dispatch_seq) FROM ozzy_outbox")).scalar()
    return {"delivery_middle_id": middle, "delivery_event_id": str(event_id), "delivery_deep_cursor": lo + (hi - lo) // 10,
            "audit_day": audit.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0),
            "feed_middle": seq // 2}


def filter_args(client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Each list page's filter URL names, ``{"events Type equals": "type_equals", ...}``."""
    return {f"{view} {name}": arg for view in ("events", "deliveries", "deadletters")
            for name, arg in el.list_filters(client, view).items()}


@dataclass
class Check:
    name: str
    url: Callable[[Office], str]
    api: bool = False


def flt(view: str, label: str, op: str, value: Callable[[Office], str]) -> Callable[[Office], str]:
    return lambda o: f"/admin/{view}/?" + urlencode({"flt0_" + o.filter_args[f"{view} {label} {op}"]: value(o)})


def day_range(key: str, days: int = 1) -> Callable[[Office], str]:
    def value(o: Office) -> str:
        day: datetime = o.probes[key]
        return f"{day:%Y-%m-%d %H:%M:%S} to {day + timedelta(days=days):%Y-%m-%d %H:%M:%S}"
    return value


def since_until(key: str, days: int = 1, back: int = 0) -> Callable[[Office], str]:
    def value(o: Office) -> str:
        day: datetime = o.probes[key] - timedelta(days=back)
        return urlencode({"since": day.isoformat(), "until": (day + timedelta(days=days)).isoformat()})
    return value


def oldest_day(o: Office) -> str:
    day = o.probes["occurred_day"] - timedelta(days=14)
    return f"{day:%Y-%m-%d %H:%M:%S} to {day + timedelta(days=1):%Y-%m-%d %H:%M:%S}"


CHECKS = [
    # event log
    Check("events", lambda o: "/admin/events/"),
    Check("events page 50", lambda o: "/admin/events/?page=50"),
    Check("events by type (common)", flt("events", "Type", "equals", lambda o: el.COMMON_TYPE)),
    Check("events by type (rare)", flt("events", "Type", "equals", lambda o: el.RARE_TYPE)),
    Check("events by aggregate", flt("events", "Aggregate id", "equals", lambda o: o.probes["aggregate_id"])),
    Check("events by correlation", flt("events", "Correlation id", "equals", lambda o: o.probes["correlation_id"])),
    Check("events occurred: 1 day, 15 days back", flt("events", "Occurred", "between", day_range("occurred_day"))),
    Check("events occurred: 1 day, 29 days back", flt("events", "Occurred", "between", oldest_day)),
    Check("events occurred: 7 days", flt("events", "Occurred", "between", day_range("occurred_day", 7))),
    Check("events not dispatched", flt("events", "Dispatched", "is", lambda o: "0")),
    Check("events dispatched", flt("events", "Dispatched", "is", lambda o: "1")),
    Check("events search event id", lambda o: "/admin/events/?" + urlencode({"search": o.probes["search_event_id"]})),
    Check("events search setting key", lambda o: "/admin/events/?" + urlencode({"search": o.probes["setting_key"]})),
    Check("event details", lambda o: f"/admin/events/details/?id={o.probes['details_id']}"),
    Check("dashboard", lambda o: "/admin/"),
    # deliveries and dead letters
    Check("deliveries", lambda o: "/admin/deliveries/"),
    Check("deliveries by status dead", flt("deliveries", "Status", "equals", lambda o: "dead")),
    Check("deliveries by status resolved", flt("deliveries", "Status", "equals", lambda o: "resolved")),
    Check("deliveries by status done", flt("deliveries", "Status", "equals", lambda o: "done")),
    Check("deliveries by handler", flt("deliveries", "Handler", "equals", lambda o: "loans.book_payout")),
    Check("deliveries by event type (rare)", flt("deliveries", "Event type", "equals", lambda o: "loans.rejected")),
    Check("deliveries by event id", flt("deliveries", "Event id", "equals", lambda o: o.probes["delivery_event_id"])),
    Check("deliveries by dead reason", flt("deliveries", "Dead reason", "equals", lambda o: "retries_exhausted")),
    Check("delivery details", lambda o: f"/admin/deliveries/details/?id={o.probes['delivery_middle_id']}"),
    Check("dead letters", lambda o: "/admin/deadletters/"),
    Check("dead letters by handler", flt("deadletters", "Handler", "equals", lambda o: "loans.book_payout")),
    # other back-office pages
    Check("audit", lambda o: "/admin/audit/"),
    Check("audit by actor", lambda o: "/admin/audit/?actor=cli:root"),
    Check("audit: 1 day", lambda o: "/admin/audit/?" + since_until("audit_day")(o)),
    Check("replays", lambda o: "/admin/replays/"),
    Check("listeners", lambda o: "/admin/listeners/"),
    Check("scheduled", lambda o: "/admin/scheduled/"),
    Check("sagas", lambda o: "/admin/sagas/"),
    Check("nodes", lambda o: "/admin/nodes/"),
    # the API's lists
    Check("api events", lambda o: "/api/events?limit=50", api=True),
    Check("api events by type", lambda o: f"/api/events?limit=50&type={el.COMMON_TYPE}", api=True),
    Check("api events deep cursor", lambda o: f"/api/events?limit=50&cursor={o.probes['deep_cursor']}", api=True),
    Check("api events by aggregate", lambda o: f"/api/events?limit=50&aggregate_id={o.probes['aggregate_id']}", api=True),
    Check("api events by correlation", lambda o: f"/api/events?correlation_id={o.probes['correlation_id']}", api=True),
    Check("api events since/until 1 day", lambda o: "/api/events?limit=50&" + since_until("occurred_day")(o), api=True),
    Check("api events since/until 1 day, 14 back", lambda o: "/api/events?limit=50&" + since_until("occurred_day", 1, 14)(o),
          api=True),
    Check("api events not dispatched", lambda o: "/api/events?limit=50&dispatched=false", api=True),
    Check("api event", lambda o: f"/api/events/{o.probes['details_event_id']}", api=True),
    Check("api deliveries", lambda o: "/api/deliveries?limit=50", api=True),
    Check("api deliveries dead", lambda o: "/api/deliveries?limit=50&status=dead", api=True),
    Check("api deliveries by event type", lambda o: "/api/deliveries?limit=50&event_type=loans.rejected", api=True),
    Check("api deliveries deep cursor", lambda o: f"/api/deliveries?limit=50&cursor={o.probes['delivery_deep_cursor']}",
          api=True),
    Check("api audit", lambda o: "/api/audit", api=True),
    Check("api audit 1 day", lambda o: "/api/audit?" + since_until("audit_day")(o), api=True),
    Check("api feed middle", lambda o: f"/api/feed?after={o.probes['feed_middle']}", api=True),
    Check("api feed rare type", lambda o: f"/api/feed?after={o.probes['feed_middle']}&types={el.RARE_TYPE}", api=True),
    Check("api status", lambda o: "/api/status", api=True),
    Check("api replays", lambda o: "/api/replays", api=True),
]


def rows_of(check: Check, response: Any) -> int:
    if check.api:
        body = response.get_json()
        return len(body["items"]) if isinstance(body, dict) and "items" in body else -1
    html = response.get_data(as_text=True)
    return len(set(re.findall(r"/admin/(?:events|deliveries|deadletters)/details/\?id=(\d+)", html)))


def request(office: Office, check: Check) -> tuple[float, float, int, list[el.Statement], str]:
    ms, sql_ms, response, statements, url = el.timed_get(office, check)
    return ms, sql_ms, rows_of(check, response), statements, url


def measure_pages(big: Office, small: Office, samples: int, explain_ms: float, only: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for check in CHECKS:
        if only and not re.search(only, check.name):
            continue
        per: dict[str, dict[str, Any]] = {}
        for office in (big, small):
            _, _, rows, statements, url = request(office, check)  # warm-up
            per[office.label] = {"url": url, "rows": rows, "ms": [], "sql": [], "statements": statements}
        for _ in range(samples):
            for office in (big, small):
                ms, sql_ms, _, _, _ = request(office, check)
                per[office.label]["ms"].append(ms)
                per[office.label]["sql"].append(sql_ms)
        a, b = per["big"], per["small"]
        item = {"url": a["url"], "rows_big": a["rows"], "rows_small": b["rows"],
                "ms_big": round(statistics.median(a["ms"]), 1), "sql_ms_big": round(statistics.median(a["sql"]), 1),
                "ms_small": round(statistics.median(b["ms"]), 1), "sql_ms_small": round(statistics.median(b["sql"]), 1),
                "max_ms_big": round(max(a["ms"]), 1)}
        results[check.name] = item
        say(f"  {check.name:42s} big {item['ms_big']:7.1f} ms (sql {item['sql_ms_big']:6.1f})  small "
            f"{item['ms_small']:6.1f} ms  rows {a['rows']}/{b['rows']}")
        if item["sql_ms_big"] > explain_ms:
            explain_slow(big, a["statements"], explain_ms)
    return results


def explain_slow(office: Office, statements: list[el.Statement], explain_ms: float) -> None:
    for statement in statements:
        if statement.ms < explain_ms / 4 or not statement.sql.lstrip().upper().startswith(("SELECT", "WITH")):
            continue
        raw = office.runtime.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement.sql, statement.params)
            lines = [row[0] for row in cur.fetchall()]
            raw.rollback()
        finally:
            raw.close()
        say(f"      {statement.ms:.1f} ms: {' '.join(statement.sql.split())[:300]}")
        for line in lines[:25]:
            say(f"        {line}")


# --- rates --------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    label: str
    env: pl.Environment
    runtime: Any = None
    relay: Any = None
    settings: Any = None
    seq: int = 0
    samples: dict[str, list[float]] = field(default_factory=lambda: {"commit": [], "relay": [], "drain": []})

    def start(self) -> None:
        from shared.delivery.relay import Relay

        self.settings = self.env.section_settings("rates", worker_threads=8)
        self.runtime = self.env.runtime(self.settings)
        self.relay = Relay(self.runtime)
        _ = self.runtime.broker
        self.relay.drain()  # the fill's backlog (100 events) and the office's audit events

    def commit(self, seq: int) -> None:
        with self.runtime.unit_of_work() as uow:
            uow.add(BenchItem.create(f"item-{seq}", seq))
            uow.commit()

    def publish(self, lo: int, hi: int) -> None:
        for start in range(lo, hi, 500):
            with self.runtime.unit_of_work() as uow:
                for seq in range(start, min(start + 500, hi)):
                    uow.add(BenchItem.create(f"item-{seq}", seq))
                uow.commit()

    def effects(self, lo: int, hi: int) -> list[float]:
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(text("SELECT started_at FROM bench_effects"
                                     " WHERE seq >= :lo AND seq < :hi"), {"lo": lo, "hi": hi}).scalars().all()
        return sorted(float(r) for r in rows)

    def round(self, events: int, earlier: int = 0) -> None:
        """Commit ``events`` more events (untimed), time ``Relay.drain()`` of them, then time an
        ``ozzy worker`` process handling them (first handler start to last). ``earlier``: events
        committed before (by :func:`commit_turns`) that this round relays and handles too."""
        self.publish(self.seq, self.seq + events)
        lo, hi = self.seq - earlier, self.seq + events
        self.seq = hi
        t0 = time.perf_counter()
        sent = self.relay.drain()
        self.samples["relay"].append(sent / (time.perf_counter() - t0))
        if sent != hi - lo:
            raise BenchError(f"{self.label}: the relay sent {sent}, expected {hi - lo}")
        with pl.ozzy_processes(pl.process_env(self.settings), ["worker", "--threads", "8"]):
            wait_until(lambda: len(self.effects(lo, hi)) >= hi - lo, timeout=max(120.0, (hi - lo) / 50),
                       interval=0.2, what=f"{self.label}: {hi - lo} handled")
        starts = self.effects(lo, hi)
        self.samples["drain"].append((len(starts) - 1) / (starts[-1] - starts[0]))
        say(f"  {self.label}: relay {self.samples['relay'][-1]:,.0f}/s, drain {self.samples['drain'][-1]:,.0f}/s"
            f"  (load {loadavg()})")


def commit_turns(pipes: list[Pipeline], commits: int) -> None:
    """Sequential commits, one event each, the databases taking turns commit by commit (so drift on
    a shared machine falls on both alike); a sample is the rate over a block of 100 commits."""
    spent = {p.label: 0.0 for p in pipes}
    for i in range(commits):
        for p in (pipes if i % 2 == 0 else pipes[::-1]):
            t0 = time.perf_counter()
            p.commit(p.seq)
            p.seq += 1
            spent[p.label] += time.perf_counter() - t0
        if (i + 1) % 100 == 0:
            for p in pipes:
                p.samples["commit"].append(100 / spent[p.label])
                spent[p.label] = 0.0


def measure_rates(big: Pipeline, small: Pipeline, rounds: int, commits: int, events: int) -> dict[str, Any]:
    for p in (big, small):
        p.start()
    commit_turns([big, small], commits)
    say(f"  commits: big {statistics.median(big.samples['commit']):,.0f}/s, small "
        f"{statistics.median(small.samples['commit']):,.0f}/s (medians of blocks of 100; load {loadavg()})")
    for p in (big, small):
        p.round(1000, earlier=commits)  # warm-up (and the commits' events handled), not reported
        p.samples["relay"].clear()
        p.samples["drain"].clear()
    for i in range(rounds):
        for p in ((big, small) if i % 2 == 0 else (small, big)):
            p.round(events)
    out: dict[str, Any] = {}
    for name in ("commit", "relay", "drain"):
        b, s = statistics.median(big.samples[name]), statistics.median(small.samples[name])
        out[name] = {"big_per_s": round(b), "small_per_s": round(s), "ratio": round(b / s, 3),
                     "big_samples": [round(x) for x in big.samples[name]],
                     "small_samples": [round(x) for x in small.samples[name]]}
        say(f"  {name}: big {b:,.0f}/s  small {s:,.0f}/s  ratio {b / s:.3f}")
    return out


# --- the occurred_at index's write cost (A/B) ----------------------------------------------------

BRIN = "CREATE INDEX ix_ozzy_outbox_occurred_at ON ozzy_outbox USING brin (occurred_at)"


def index_ab(envs: dict[str, pl.Environment], commits: int, events: int, rounds: int) -> dict[str, Any]:
    """Migration 0015's B-tree ``(occurred_at, id)`` against the BRIN index it replaced, on two
    databases with the same history: sequential commits taking turns commit by commit, then
    ``Relay.drain()`` rounds taking turns."""
    for conn_env in (envs["brin"],):
        engine = create_engine_for_url(conn_env)
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_ozzy_outbox_occurred_at"))
            conn.execute(text(BRIN))
        engine.dispose()
    pipes = {label: Pipeline(label, env) for label, env in envs.items()}
    for p in pipes.values():
        p.start()
        for seq in range(200):
            p.commit(10_000_000 + seq)
        p.relay.drain()
    times: dict[str, list[float]] = {label: [] for label in pipes}
    order = list(pipes)
    for i in range(commits):
        for label in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            pipes[label].commit(20_000_000 + i)
            times[label].append(time.perf_counter() - t0)
    say("  commits: " + ", ".join(f"{label} {commits / sum(t):,.0f}/s (median {statistics.median(t) * 1000:.2f} ms)"
                                  for label, t in times.items()) + f" (load {loadavg()})")
    server_side = sql_ab(envs, rounds=10, rows=5000, batch=500)
    relay: dict[str, list[float]] = {label: [] for label in pipes}
    for r in range(rounds):
        for label in (order if r % 2 == 0 else order[::-1]):
            p = pipes[label]
            base = 30_000_000 + r * events
            p.publish(base, base + events)
            t0 = time.perf_counter()
            sent = p.relay.drain()
            relay[label].append(sent / (time.perf_counter() - t0))
            say(f"  relay {label}: {relay[label][-1]:,.0f}/s (load {loadavg()})")
    out: dict[str, Any] = {}
    for label in pipes:
        out[label] = {"commits_per_s": round(commits / sum(times[label])),
                      "median_commit_ms": round(statistics.median(times[label]) * 1000, 3),
                      "relay_per_s": round(statistics.median(relay[label])),
                      "relay_samples": [round(x) for x in relay[label]]}
    out["commit_ratio_btree_to_brin"] = round(out["btree"]["commits_per_s"] / out["brin"]["commits_per_s"], 3)
    out["median_commit_ratio_brin_to_btree"] = round(out["brin"]["median_commit_ms"] / out["btree"]["median_commit_ms"], 3)
    out["relay_ratio_btree_to_brin"] = round(out["btree"]["relay_per_s"] / out["brin"]["relay_per_s"], 3)
    out["server_side"] = server_side
    say(f"  {out}")
    return out


#: Server-side rows like the framework's: a version-7 style event id (also the correlation id), a
#: random aggregate id, the time of the insert.
INSERT_ROWS = """
INSERT INTO ozzy_outbox (event_id, event_type, event_version, aggregate_type, aggregate_id, payload, metadata,
                         correlation_id, occurred_at)
SELECT u, 'bench.item_created', 1, 'bench_items', gen_random_uuid()::text, '{"name": "item", "seq": 1}',
       jsonb_build_object('correlation_id', u::text), u, clock_timestamp()
  FROM (SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
                || substr(md5(random()::text || g::text), 1, 20))::uuid AS u
          FROM generate_series(1, %(n)s) AS g) AS s
"""


def sql_ab(envs: dict[str, pl.Environment], rounds: int, rows: int, batch: int) -> dict[str, Any]:
    """The database's own time for the outbox INSERT and the relay's mark (``MARK_DISPATCHED``, the
    non-HOT update that adds an entry to every index), the two databases taking turns: no client,
    Redis or worker in the timing."""
    import psycopg

    from shared.db.sql import outbox as outbox_sql

    conns = {}
    for label, env in envs.items():
        assert env.settings is not None
        url = env.settings.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")
        conns[label] = psycopg.connect(url, autocommit=False)
    spent = {label: {"insert": 0.0, "mark": 0.0} for label in conns}
    order = list(conns)
    try:
        for r in range(rounds + 1):  # round 0 is a warm-up
            for label in (order if r % 2 == 0 else order[::-1]):
                conn = conns[label]
                with conn.cursor() as cur:
                    t0 = time.perf_counter()
                    cur.execute(INSERT_ROWS, {"n": rows})
                    conn.commit()
                    t_insert = time.perf_counter() - t0
                    t_mark = 0.0
                    while True:
                        cur.execute("SELECT id FROM ozzy_outbox WHERE dispatched_at IS NULL AND parked_at IS NULL"
                                    " ORDER BY id LIMIT %(n)s", {"n": batch})
                        ids = [row[0] for row in cur.fetchall()]
                        if not ids:
                            break
                        t0 = time.perf_counter()
                        cur.execute(outbox_sql.MARK_DISPATCHED, {"ids": ids})
                        conn.commit()
                        t_mark += time.perf_counter() - t0
                if r:
                    spent[label]["insert"] += t_insert
                    spent[label]["mark"] += t_mark
    finally:
        for conn in conns.values():
            conn.close()
    total = rounds * rows
    out: dict[str, Any] = {label: {"insert_us_per_row": round(v["insert"] / total * 1e6, 2),
                                   "mark_us_per_row": round(v["mark"] / total * 1e6, 2)} for label, v in spent.items()}
    out["insert_cost_ratio_btree_to_brin"] = round(spent["btree"]["insert"] / spent["brin"]["insert"], 3)
    out["mark_cost_ratio_btree_to_brin"] = round(spent["btree"]["mark"] / spent["brin"]["mark"], 3)
    say(f"  server side: {out} (load {loadavg()})")
    return out


def create_engine_for_url(env: pl.Environment) -> Engine:
    from sqlalchemy import create_engine

    assert env.settings is not None
    return create_engine(env.settings.sqlalchemy_url)


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000, help="history of the big database")
    parser.add_argument("--baseline", type=int, default=10_000, help="history of the small database")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--explain-ms", type=float, default=30.0, help="EXPLAIN requests with more SQL time than this")
    parser.add_argument("--only", help="a regular expression: measure only the pages whose name matches")
    parser.add_argument("--no-rates", dest="rates", action="store_false")
    parser.add_argument("--no-pages", dest="pages", action="store_false")
    parser.add_argument("--rounds", type=int, default=5, help="relay and drain rounds per database")
    parser.add_argument("--commits", type=int, default=2000, help="sequential commits per database")
    parser.add_argument("--relay-events", type=int, default=10_000, help="events relayed and drained per round")
    parser.add_argument("--index-ab", action="store_true",
                        help="instead: the write cost of the occurred_at B-tree against BRIN, both with --events history")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import logging

    logging.getLogger("ozzy").setLevel(logging.WARNING)
    result: dict[str, Any] = {"benchmark": "history", "started_at": datetime.now(timezone.utc).isoformat(),
                              "events": args.events, "baseline": args.baseline, "code": el.code_version(),
                              "loadavg_start": loadavg()}
    with ExitStack() as stack:
        envs = {}
        labels = (("btree", args.events), ("brin", args.events)) if args.index_ab else (
            ("small", args.baseline), ("big", args.events))
        for label, n in labels:
            env = pl.Environment()
            stack.callback(env.close)
            env.setup()
            say(f"{label}: filling {env.db_name} with {n:,} events")
            result[f"fill_{label}"] = fill(create_engine_for(env, stack), n)
            say(f"{label}: {result[f'fill_{label}']}")
            envs[label] = env
        if args.index_ab:
            say(f"index A/B: {args.commits} commits each, taking turns; {args.rounds} relay rounds of {args.relay_events}")
            result["index_ab"] = index_ab(envs, args.commits, args.relay_events, args.rounds)
        elif args.pages:
            say(f"pages: median of {args.samples} after a warm-up, big and small alternating (load {loadavg()})")
            big, small = build_office(envs["big"], "big", args.events), build_office(envs["small"], "small", args.baseline)
            result["pages"] = measure_pages(big, small, args.samples, args.explain_ms, args.only)
            result["loadavg_after_pages"] = loadavg()
            say("pages: " + json.dumps(result["pages"], default=str, separators=(",", ":")))
        if args.rates and not args.index_ab:
            say(f"rates: {args.rounds} rounds of {args.commits} commits and {args.relay_events} more events, "
                f"relayed then drained by an ozzy worker (load {loadavg()})")
            try:
                result["rates"] = measure_rates(Pipeline("big", envs["big"]), Pipeline("small", envs["small"]),
                                                args.rounds, args.commits, args.relay_events)
            except Exception as exc:  # noqa: BLE001 - keep the pages' figures
                say(f"rates failed: {exc!r}"[:2000])
                result["rates_error"] = repr(exc)[:2000]
        result["loadavg_end"] = loadavg()
        result["finished_at"] = datetime.now(timezone.utc).isoformat()
        say("dropping the databases")
    print(json.dumps(result, default=str, separators=(",", ":")), flush=True)
    return 0


def create_engine_for(env: pl.Environment, stack: ExitStack) -> Engine:
    from sqlalchemy import create_engine

    assert env.settings is not None
    engine = create_engine(env.settings.sqlalchemy_url)
    stack.callback(engine.dispose)
    return engine


if __name__ == "__main__":
    sys.exit(main())
