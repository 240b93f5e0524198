#!/usr/bin/env python
"""Back office with a million events: does the event log stay fast as ``ozzy_outbox`` grows?

    PYTHONPATH=. .venv/bin/python bench/event_log.py                 # N = 1,000,000 (several minutes)
    PYTHONPATH=. .venv/bin/python bench/event_log.py --rows 100000   # a quicker run

Two fresh databases are provisioned with ``tests.servers.provisioned`` (migrated, dropped at the end,
also on an error, Ctrl-C or SIGTERM): one filled with N outbox rows, the baseline with 1,000 rows, by
the same server-side ``INSERT ... SELECT ... FROM generate_series``. On each, the Flask app is built
with ``services.app.create_app``, an operator logs in through the test client and an API token is
created. Every page and API call is then timed on both databases, interleaved (one warm-up each,
then ``--samples`` rounds of N, baseline), and the median is reported with the ratio N / baseline.

Every SQL statement a request sends is recorded; each one that reads ``ozzy_outbox`` is run again
under ``EXPLAIN (ANALYZE, BUFFERS)`` with the same parameters, on the N database, and the script
reports the rows it read from ``ozzy_outbox`` and any sequential scan or ``count(*)`` over the table.

Servers: ``OZZY_TEST_DATABASE_URL`` / ``OZZY_TEST_REDIS_URL`` as for the tests (default the local
ones). Progress goes to stderr; the last line of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

START = time.monotonic()
BASELINE_ROWS = 1_000
UNDISPATCHED = 100  # the relay's backlog: an operational quantity, the same whatever the log's size
PARKED = 5  # of the undispatched rows, the oldest few are parked
SHARE = 0.10  # rows that continue an earlier row's conversation (same correlation id, caused by it)
COMMON_TYPE, RARE_TYPE = "loans.approved", "ozzy.control_command"
FLAG_ROWS_READ = 0.10  # a statement that reads more than this share of the table's rows is flagged
FLAG_PAGES = 0.01  # ... or touches more than this share of the pages of the table and its indexes

# --- fill ---------------------------------------------------------------------------------------

# One statement. ``base`` draws the random numbers once per row (MATERIALIZED, so the planner cannot
# inline the volatile calls into the window); ``linked`` lets ~10 % of rows continue the conversation
# of a row 1-20 positions earlier: its correlation id, and that row's event id as the causation id.
# Rows are inserted in ``g`` order, so ``id`` (identity) and ``occurred_at`` grow together.
FILL = """
WITH base AS MATERIALIZED (
    SELECT g,
           gen_random_uuid() AS event_id,
           gen_random_uuid() AS own_correlation,
           random() AS r_type,
           random() AS r_agg,
           random() AS r_amount,
           random() AS r_actor,
           random() < :share AS shares,
           1 + floor(random() * 20)::int AS back
      FROM generate_series(1, :n) AS g
), linked AS (
    SELECT b.*,
           CASE WHEN shares THEN lag(own_correlation, back, own_correlation) OVER w
                ELSE own_correlation END AS correlation_id,
           CASE WHEN shares THEN lag(event_id, back) OVER w END AS causation_id
      FROM base AS b
    WINDOW w AS (ORDER BY g)
), typed AS (
    SELECT l.*,
           CASE WHEN r_type < 0.300 THEN 'loans.application_submitted'
                WHEN r_type < 0.580 THEN 'loans.credit_checked'
                WHEN r_type < 0.800 THEN 'loans.approved'
                WHEN r_type < 0.970 THEN 'loans.rejected'
                WHEN r_type < 0.985 THEN 'ozzy.setting_changed'
                WHEN r_type < 0.999 THEN 'ozzy.flag_changed'
                ELSE 'ozzy.control_command' END AS event_type
      FROM linked AS l
), placed AS (
    SELECT t.*,
           CASE WHEN event_type LIKE 'loans.%' THEN 'loans.application'
                WHEN event_type = 'ozzy.setting_changed' THEN 'ozzy.setting'
                WHEN event_type = 'ozzy.flag_changed' THEN 'ozzy.flag' END AS aggregate_type,
           CASE WHEN event_type LIKE 'loans.%'
                     THEN md5('loan-' || floor(r_agg * greatest(:n / 4, 1))::bigint)::uuid::text
                WHEN event_type = 'ozzy.setting_changed'
                     THEN (ARRAY['relay.batch_size', 'relay.poll_interval', 'worker.max_retries',
                                 'loans.auto_approve_limit', 'loans.bureau_timeout'])[1 + floor(r_agg * 5)::int]
                WHEN event_type = 'ozzy.flag_changed'
                     THEN (ARRAY['loans.instant_decision', 'loans.new_scoring', 'relay.fast_channel',
                                 'web.maintenance', 'loans.sms_notices'])[1 + floor(r_agg * 5)::int]
                END AS aggregate_id,  -- a control command is published without an aggregate
           now() - interval '30 days' + interval '30 days' * ((g - 1 + r_actor * 0.5) / :n) AS occurred_at,
           g <= :n - :undispatched AS dispatched,
           g > :n - :undispatched AND g <= :n - :undispatched + :parked AS parked
      FROM typed AS t
)
INSERT INTO ozzy_outbox (event_id, event_type, event_version, aggregate_type, aggregate_id, payload,
                         metadata, correlation_id, causation_id, occurred_at, dispatched_at, parked_at,
                         park_reason, dispatch_seq)
SELECT event_id, event_type, 1, aggregate_type, aggregate_id,
       jsonb_build_object(
           'subject', coalesce(aggregate_id, 'cluster'),
           'applicant_name', 'Applicant ' || floor(r_amount * 1000000)::int,
           'email', 'applicant' || g || '@example.com',
           'amount', round((1000 + r_amount * 49000)::numeric, 2),
           'currency', 'EUR',
           'term_months', (ARRAY[12, 24, 36, 48, 60])[1 + floor(r_agg * 5)::int],
           'reference', md5(g::text),
           'channel', CASE WHEN r_actor < 0.7 THEN 'web' ELSE 'branch' END),
       jsonb_build_object(
           'correlation_id', correlation_id::text,
           'causation_id', causation_id::text,
           'actor', CASE WHEN r_actor < 0.2 THEN 'ops' END),
       correlation_id, causation_id, occurred_at,
       CASE WHEN dispatched THEN occurred_at + interval '1 millisecond' * (5 + r_amount * 50) END,
       CASE WHEN parked THEN occurred_at + interval '50 milliseconds' END,
       CASE WHEN parked THEN 'unknown event type: no handler module of this version routes it' END,
       CASE WHEN dispatched THEN nextval('ozzy_dispatch_seq') END
  FROM placed
 ORDER BY g
"""

SECONDARY_INDEXES = """
SELECT i.indexname, i.indexdef FROM pg_indexes AS i
 WHERE i.schemaname = current_schema() AND i.tablename = 'ozzy_outbox'
   AND i.indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'ozzy_outbox'::regclass)
 ORDER BY i.indexname
"""


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


def fill(engine: Engine, n: int) -> dict[str, Any]:
    """N outbox rows in one INSERT ... SELECT. The secondary indexes are dropped first and rebuilt
    from their own saved definitions afterwards (a bulk build is much faster than 1M random UUID
    inserts); the script checks that the table ends with exactly the indexes the migrations made."""
    started = time.monotonic()
    with engine.connect() as conn:
        indexes = conn.execute(text(SECONDARY_INDEXES)).all()
        conn.execute(text("SET work_mem = '256MB'"))
        conn.execute(text("SET maintenance_work_mem = '256MB'"))
        conn.execute(text("SET synchronous_commit = off"))
        conn.execute(text("SELECT setseed(0.42)"))
        for name, _ in indexes:
            conn.execute(text(f'DROP INDEX "{name}"'))
        inserted = conn.execute(text(FILL), {"n": n, "share": SHARE, "undispatched": UNDISPATCHED,
                                             "parked": PARKED}).rowcount
        t_insert = time.monotonic() - started
        for _, definition in indexes:
            conn.execute(text(definition))
        conn.commit()
        if conn.execute(text(SECONDARY_INDEXES)).all() != indexes:
            raise RuntimeError("the rebuilt indexes differ from the migrated ones")
        t_index = time.monotonic() - started - t_insert
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) ozzy_outbox"))
        stats = conn.execute(text("""
            SELECT count(*) AS n,
                   count(DISTINCT event_type) AS types,
                   count(DISTINCT aggregate_id) AS aggregates,
                   count(DISTINCT correlation_id) AS correlations,
                   count(causation_id) AS with_causation,
                   count(*) FILTER (WHERE dispatched_at IS NULL) AS undispatched,
                   count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
                   count(dispatch_seq) AS with_dispatch_seq,
                   round(avg(octet_length(payload::text))) AS payload_bytes,
                   min(occurred_at) AS oldest, max(occurred_at) AS newest,
                   pg_size_pretty(pg_total_relation_size('ozzy_outbox')) AS total_size,
                   pg_size_pretty(pg_relation_size('ozzy_outbox')) AS heap_size
              FROM ozzy_outbox""")).mappings().one()
    if inserted != n or stats["n"] != n:
        raise RuntimeError(f"expected {n} rows, inserted {inserted}, counted {stats['n']}")
    out = {k: (v.isoformat() if isinstance(v, datetime) else (float(v) if k == "payload_bytes" else v))
           for k, v in stats.items()}
    out.update(insert_s=round(t_insert, 1), index_s=round(t_index, 1),
               total_s=round(time.monotonic() - started, 1), indexes=[name for name, _ in indexes])
    return out


# --- SQL recording and plans --------------------------------------------------------------------


@dataclass
class Statement:
    sql: str
    params: Any
    ms: float


class Recorder:
    """Every statement the engine sends while ``active``, with its duration."""

    def __init__(self, engine: Engine) -> None:
        self.active = False
        self.statements: list[Statement] = []
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if self.active:
            ms = (time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())) * 1000
            self.statements.append(Statement(statement, parameters, ms))

    def start(self) -> None:
        self.statements = []
        self.active = True

    def stop(self) -> list[Statement]:
        self.active = False
        return self.statements


def reads_outbox(sql: str) -> bool:
    return bool(re.search(r"\bFROM\s+ozzy_outbox\b", sql, re.I)) and sql.lstrip().upper().startswith(("SELECT", "WITH"))


def explain(engine: Engine, statement: Statement, table_rows: int, table_pages: int) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one recorded statement with its own parameters."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement.sql, statement.params)
        doc = cur.fetchone()[0]
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement.sql, statement.params)
        lines = [row[0] for row in cur.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    plan = (doc if isinstance(doc, list) else json.loads(doc))[0]
    scans: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") == "ozzy_outbox":
            loops = node.get("Actual Loops", 1)
            read = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
                    + node.get("Rows Removed by Index Recheck", 0)) * loops
            scans.append({"node": node["Node Type"], "index": node.get("Index Name"), "rows_read": int(read)})
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    rows_read = sum(s["rows_read"] for s in scans)
    seq_scan = any(s["node"] == "Seq Scan" for s in scans)
    counts = bool(re.search(r"\bcount\s*\(", statement.sql, re.I))
    top = plan["Plan"]
    return {
        "sql": " ".join(statement.sql.split())[:400],
        "params": {k: str(v) for k, v in statement.params.items()} if isinstance(statement.params, dict) else str(statement.params),
        "top": lines[0].strip(),
        "scan_lines": [ln.strip() for ln in lines
                       if re.search(r"Scan|Sort Key|Limit|Aggregate|Index Cond|Filter|Recheck Cond", ln)][:12],
        "scans": scans,
        "rows_read_from_outbox": rows_read,
        "execution_ms": round(plan["Execution Time"], 3),
        "planning_ms": round(plan["Planning Time"], 3),
        "buffers_hit": top.get("Shared Hit Blocks", 0),
        "buffers_read": top.get("Shared Read Blocks", 0),
        "seq_scan_on_outbox": seq_scan,
        "count_over_table": counts and rows_read > FLAG_ROWS_READ * table_rows,
        "reads_large_share": rows_read > FLAG_ROWS_READ * table_rows,
        # e.g. a whole index walked for a condition on its second column: few rows, many pages
        "touches_many_pages": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
        > max(table_pages * FLAG_PAGES, 1000),
    }


# --- the two back offices -----------------------------------------------------------------------


@dataclass
class Office:
    label: str
    rows: int
    runtime: Any
    client: Any
    api: Any
    recorder: Recorder
    token: str
    probes: dict[str, Any] = field(default_factory=dict)
    filter_args: dict[str, str] = field(default_factory=dict)


def build_office(stack: ExitStack, label: str, rows: int, db_url: str, redis_url: str) -> Office:
    from services.app import create_app
    from shared.delivery.handlers import HandlerRegistry
    from shared.ops.accounts import create_token, create_user
    from tests.integration.helpers import HANDLER_MODULES, make_runtime
    from tests.integration.test_back_office import csrf_token, https_client
    from tests.servers import provisioned

    settings = stack.enter_context(provisioned(db_url, redis_url))
    say(f"{label}: provisioned database {settings.database_url.rsplit('/', 1)[-1]}")
    names = [n for n in HandlerRegistry.from_modules(HANDLER_MODULES) if n.startswith(("test.", "loans."))]
    runtime = make_runtime(settings, handlers=names)
    stack.callback(runtime.close)
    say(f"{label}: filling ozzy_outbox with {rows:,} rows")
    stats = fill(runtime.engine, rows)
    say(f"{label}: filled in {stats['total_s']} s (insert {stats['insert_s']} s, indexes {stats['index_s']} s); "
        f"{stats['total_size']} with indexes, payload {stats['payload_bytes']:.0f} B, "
        f"{stats['with_causation']:,} with causation, {stats['correlations']:,} correlations, "
        f"{stats['undispatched']} undispatched ({stats['parked']} parked)")
    app = create_app(runtime)
    with runtime.session_factory() as session:
        user = create_user(session, "ops", "correct horse battery")
        _, secret = create_token(session, user, "bench")
        session.commit()
    client = https_client(app)
    response = client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": "ops",
                                                 "password": "correct horse battery"})
    if response.status_code != 302:
        raise RuntimeError(f"{label}: login failed with {response.status_code}")
    office = Office(label, rows, runtime, client, https_client(app), Recorder(runtime.engine), secret)
    office.probes = probes(runtime.engine, rows)
    office.probes["fill"] = stats
    office.filter_args = filter_args(client)
    return office


def probes(engine: Engine, rows: int) -> dict[str, Any]:
    """Real values to look up, from the middle of the log (so an index-less plan cannot get lucky)."""
    with engine.connect() as conn:
        lo, hi = conn.execute(text("SELECT min(id), max(id) FROM ozzy_outbox")).one()
        middle = lo + (hi - lo) // 2
        # an event that caused another one: its details page walks the causal chain
        cause = conn.execute(text("""
            SELECT c.id, c.event_id FROM ozzy_outbox AS e JOIN ozzy_outbox AS c ON c.event_id = e.causation_id
             WHERE e.id <= :m AND e.causation_id IS NOT NULL ORDER BY e.id DESC LIMIT 1"""), {"m": middle}).one()
        correlation = conn.execute(text("""
            SELECT correlation_id, count(*) OVER () FROM ozzy_outbox
             WHERE correlation_id = (SELECT correlation_id FROM ozzy_outbox
                                      WHERE id <= :m AND causation_id IS NOT NULL ORDER BY id DESC LIMIT 1)
             LIMIT 1"""), {"m": middle}).one()
        aggregate = conn.execute(text("""
            SELECT aggregate_id, (SELECT count(*) FROM ozzy_outbox AS o WHERE o.aggregate_id = e.aggregate_id)
              FROM ozzy_outbox AS e WHERE id <= :m AND aggregate_type = 'loans.application'
             ORDER BY id DESC LIMIT 1"""), {"m": middle}).one()
        # a non-UUID aggregate id (a setting key): the search box matches those on aggregate_id
        setting_key = conn.execute(text("""
            SELECT aggregate_id FROM ozzy_outbox WHERE id <= :m AND aggregate_type = 'ozzy.setting'
             ORDER BY id DESC LIMIT 1"""), {"m": middle}).scalar()
        searched = conn.execute(text("SELECT event_id FROM ozzy_outbox WHERE id = :m"), {"m": middle}).scalar()
        occurred = conn.execute(text("SELECT occurred_at FROM ozzy_outbox WHERE id = :m"), {"m": middle}).scalar()
    return {
        "min_id": lo, "max_id": hi,
        "details_id": cause.id,
        "details_event_id": str(cause.event_id),
        "correlation_id": str(correlation[0]), "correlation_rows": correlation[1],
        "aggregate_id": aggregate[0], "aggregate_rows": aggregate[1],
        "search_event_id": str(searched),
        "setting_key": setting_key,
        # a deep cursor: 90 % of the log is newer than it
        "deep_cursor": lo + (hi - lo) // 10,
        "occurred_day": occurred.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0),
    }


def list_filters(client, view: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A back-office list page's own filter URL names (``named_filter_urls``), from its
    filter-groups-data: ``{"Type equals": "type_equals", ...}``."""
    html = client.get(f"/admin/{view}/").get_data(as_text=True)
    match = re.search(r'<div id="filter-groups-data"[^>]*>(.*?)</div>', html, re.S)
    if not match:
        raise RuntimeError(f"no filter-groups-data on /admin/{view}/")
    args: dict[str, str] = {}
    for label, filters in json.loads(unescape(match.group(1))).items():
        for entry in filters:
            args[f"{label} {entry['operation']}"] = entry["arg"]
    return args


def filter_args(client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The event list's filter URL names (see :func:`list_filters`)."""
    return list_filters(client, "events")


# --- measurements -------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    url: Callable[[Office], str]
    api: bool = False
    expect_rows: Callable[[Office], bool] = lambda office: True
    samples: int | None = None


def flt(label: str, op: str, value: Callable[[Office], str]) -> Callable[[Office], str]:
    return lambda o: "/admin/events/?" + urlencode({"flt0_" + o.filter_args[f"{label} {op}"]: value(o)})


def occurred_range(o: Office) -> str:
    day: datetime = o.probes["occurred_day"]
    return f"{day:%Y-%m-%d %H:%M:%S} to {day + timedelta(days=1):%Y-%m-%d %H:%M:%S}"


CHECKS = [
    Check("admin_events_list", lambda o: "/admin/events/"),
    Check("admin_events_page_50", lambda o: "/admin/events/?page=50",
          expect_rows=lambda o: o.rows > 50 * 50),
    Check("admin_events_by_type", flt("Type", "equals", lambda o: COMMON_TYPE)),
    Check("admin_events_by_correlation_id", flt("Correlation id", "equals", lambda o: o.probes["correlation_id"])),
    Check("admin_events_by_aggregate_id", flt("Aggregate id", "equals", lambda o: o.probes["aggregate_id"])),
    Check("admin_events_search_event_id", lambda o: "/admin/events/?" + urlencode({"search": o.probes["search_event_id"]})),
    Check("admin_event_details", lambda o: f"/admin/events/details/?id={o.probes['details_id']}"),
    Check("admin_dashboard", lambda o: "/admin/"),
    Check("api_events", lambda o: "/api/events?limit=50", api=True),
    Check("api_events_by_type", lambda o: f"/api/events?limit=50&type={COMMON_TYPE}", api=True),
    Check("api_events_deep_cursor", lambda o: f"/api/events?limit=50&cursor={o.probes['deep_cursor']}", api=True),
    # beyond the brief: the remaining filters and lookups an operator reaches from the same pages
    Check("admin_events_by_rare_type", flt("Type", "equals", lambda o: RARE_TYPE)),
    Check("admin_events_search_setting_key", lambda o: "/admin/events/?" + urlencode({"search": o.probes["setting_key"]})),
    Check("admin_events_by_occurred_day", flt("Occurred", "between", occurred_range)),
    Check("admin_events_undispatched", flt("Dispatched", "is", lambda o: "0")),
    Check("api_events_by_aggregate_id", lambda o: f"/api/events?limit=50&aggregate_id={o.probes['aggregate_id']}", api=True),
    Check("api_event_by_id", lambda o: f"/api/events/{o.probes['details_event_id']}", api=True),
    Check("api_events_undispatched", lambda o: "/api/events?limit=50&dispatched=false", api=True),
    Check("api_events_by_time_range", lambda o: "/api/events?" + urlencode(
        {"limit": 50, "since": o.probes["occurred_day"].isoformat(),
         "until": (o.probes["occurred_day"] + timedelta(days=1)).isoformat()}), api=True),
]


def row_count(check: Check, office: Office, response) -> int:  # type: ignore[no-untyped-def]
    if check.api:
        body = response.get_json()
        return len(body["items"]) if "items" in body else 1
    html = response.get_data(as_text=True)
    if check.name == "admin_event_details":
        return 1 if office.probes["details_event_id"] in html else 0
    if check.name == "admin_dashboard":
        return 1
    return len(set(re.findall(r"/admin/events/details/\?id=(\d+)", html)))


def timed_get(office: Any, check: Any) -> tuple[float, float, Any, list[Statement], str]:
    """GET ``check``'s URL as ``office``'s viewer (the API with its token): total ms, SQL ms, the
    response, the statements recorded and the URL. Raises unless the answer is a 200. ``office``
    and ``check``: this module's or ``bench/history.py``'s (same attributes)."""
    url = check.url(office)
    office.recorder.start()
    t0 = time.perf_counter()
    if check.api:
        response = office.api.get(url, headers={"Authorization": f"Bearer {office.token}"})
    else:
        response = office.client.get(url)
    body = response.get_data()
    ms = (time.perf_counter() - t0) * 1000
    statements = office.recorder.stop()
    if response.status_code != 200:
        raise RuntimeError(f"{office.label} {check.name}: GET {url} returned {response.status_code}: {body[:300]!r}")
    return ms, sum(s.ms for s in statements), response, statements, url


def request(office: Office, check: Check) -> tuple[float, float, int, list[Statement], Any]:
    ms, sql_ms, response, statements, url = timed_get(office, check)
    return ms, sql_ms, row_count(check, office, response), statements, url


def measure(big: Office, small: Office, samples: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for check in CHECKS:
        n = check.samples or samples
        per: dict[str, dict[str, Any]] = {}
        for office in (big, small):
            _, _, rows, statements, url = request(office, check)  # warm-up
            if rows == 0 and check.expect_rows(office):
                raise RuntimeError(f"{office.label} {check.name}: GET {url} returned no rows")
            per[office.label] = {"url": url, "rows": rows, "ms": [], "sql_ms": [], "statements": statements}
        for _ in range(n):
            for office in (big, small):
                ms, sql_ms, _, _, _ = request(office, check)
                per[office.label]["ms"].append(ms)
                per[office.label]["sql_ms"].append(sql_ms)
        a, b = per[big.label], per[small.label]
        med_a, med_b = statistics.median(a["ms"]), statistics.median(b["ms"])
        results[check.name] = {
            "url_n": a["url"], "rows_returned_n": a["rows"], "rows_returned_baseline": b["rows"],
            "ms_n": round(med_a, 2), "ms_baseline": round(med_b, 2), "ratio": round(med_a / med_b, 2),
            "sql_ms_n": round(statistics.median(a["sql_ms"]), 2),
            "sql_ms_baseline": round(statistics.median(b["sql_ms"]), 2),
            "statements_n": len(a["statements"]),
            "samples_ms_n": [round(x, 1) for x in a["ms"]],
            "samples_ms_baseline": [round(x, 1) for x in b["ms"]],
            "_statements": a["statements"],
        }
        say(f"  {check.name:36s} N {med_a:8.1f} ms (sql {results[check.name]['sql_ms_n']:7.1f})   "
            f"1k {med_b:7.1f} ms   x{med_a / med_b:5.2f}   rows {a['rows']}/{b['rows']}")
    return results


def table_pages(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT pg_total_relation_size('ozzy_outbox') / current_setting('block_size')::int")).scalar()


def outbox_statements(results: dict[str, Any]) -> dict[str, list[Statement]]:
    """Per request, the distinct statements that read ``ozzy_outbox`` (taken out of ``results``)."""
    out: dict[str, list[Statement]] = {}
    for name, result in results.items():
        seen: set[str] = set()
        for statement in result.pop("_statements"):
            key = statement.sql + repr(statement.params)
            if reads_outbox(statement.sql) and key not in seen:
                seen.add(key)
                out.setdefault(name, []).append(statement)
    return out


def plans(big: Office, recorded: dict[str, list[Statement]]) -> dict[str, list[dict[str, Any]]]:
    pages = table_pages(big.runtime.engine)
    return {name: [explain(big.runtime.engine, st, big.rows, pages) for st in statements]
            for name, statements in recorded.items()}


# --- candidate fixes, tried on the throwaway N database only --------------------------------------

SELECT_ALL = "SELECT * FROM ozzy_outbox"


def ids_of(engine: Engine, statement: Statement) -> list[int]:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(statement.sql, statement.params)
        names = [d[0] for d in cur.description]
        column = next(i for i, n in enumerate(names) if n in ("id", "ozzy_outbox_id"))
        ids = [row[column] for row in cur.fetchall()]
        raw.rollback()
        return ids
    finally:
        raw.close()


def summary(item: dict[str, Any]) -> dict[str, Any]:
    return {k: item[k] for k in ("top", "scan_lines", "rows_read_from_outbox", "buffers_hit", "buffers_read",
                                 "execution_ms")}


def experiments(big: Office, recorded: dict[str, list[Statement]]) -> list[dict[str, Any]]:
    """Indexes and query shapes that would keep the flagged requests O(page): each is built or run
    on the N database, EXPLAINed, and checked to return the same rows as the application's query."""
    engine, pages = big.runtime.engine, table_pages(big.runtime.engine)
    day: datetime = big.probes["occurred_day"]
    out: list[dict[str, Any]] = []

    def main_statement(name: str) -> Statement:
        return max(recorded[name], key=lambda st: len(st.sql))  # the list query, not a lookup

    def run_index(name: str, ddl: str, requests: list[str]) -> None:
        say(f"  trying {name}")
        with engine.connect() as conn:
            conn.execute(text("SET maintenance_work_mem = '256MB'"))
            t0 = time.monotonic()
            conn.execute(text(ddl))
            conn.execute(text("ANALYZE ozzy_outbox"))
            conn.commit()
            built = time.monotonic() - t0
            size = conn.execute(text("SELECT pg_size_pretty(pg_relation_size('bench_candidate'))")).scalar()
        try:
            for request_name in requests:
                statement = main_statement(request_name)
                item = explain(engine, statement, big.rows, pages)
                out.append({"candidate": name, "ddl": ddl, "build_s": round(built, 1), "index_size": size,
                            "request": request_name, **summary(item)})
                say(f"    {request_name}: {item['top']}")
                for line in item["scan_lines"][1:3]:
                    say(f"        {line}")
                say(f"        rows read {item['rows_read_from_outbox']:,}; pages "
                    f"{item['buffers_hit'] + item['buffers_read']:,}; Execution Time {item['execution_ms']} ms")
        finally:
            with engine.connect() as conn:
                conn.execute(text("DROP INDEX bench_candidate"))
                conn.execute(text("ANALYZE ozzy_outbox"))
                conn.commit()

    def run_rewrite(name: str, request_name: str, sql: str, params: dict[str, Any]) -> None:
        say(f"  trying {name}")
        original = main_statement(request_name)
        rewritten = Statement(sql, params, 0.0)
        item = explain(engine, rewritten, big.rows, pages)
        same = ids_of(engine, original) == ids_of(engine, rewritten)
        out.append({"candidate": name, "sql": sql, "request": request_name, "same_rows_as_application": same,
                    **summary(item)})
        say(f"    {item['top']}")
        for line in item["scan_lines"][1:3]:
            say(f"        {line}")
        say(f"        rows read {item['rows_read_from_outbox']:,}; pages {item['buffers_hit'] + item['buffers_read']:,}; "
            f"Execution Time {item['execution_ms']} ms; same rows as the application's query: {same}")

    run_index("index on (aggregate_id, id)",
              "CREATE INDEX bench_candidate ON ozzy_outbox (aggregate_id, id)",
              ["admin_events_by_aggregate_id", "api_events_by_aggregate_id", "admin_events_search_setting_key"])
    run_index("partial index on (id) WHERE dispatched_at IS NULL",
              "CREATE INDEX bench_candidate ON ozzy_outbox (id) WHERE dispatched_at IS NULL",
              ["admin_events_undispatched", "api_events_undispatched"])
    run_rewrite("'not dispatched' as two arms that match ix_ozzy_outbox_undispatched and ix_ozzy_outbox_parked",
                "admin_events_undispatched",
                SELECT_ALL + " WHERE (dispatched_at IS NULL AND parked_at IS NULL)"
                " OR (dispatched_at IS NULL AND parked_at IS NOT NULL) ORDER BY id DESC LIMIT 50", {})
    run_rewrite("time range ordered by occurred_at (ix_ozzy_outbox_occurred_at) instead of id",
                "admin_events_by_occurred_day",
                SELECT_ALL + " WHERE occurred_at >= %(since)s AND occurred_at <= %(until)s"
                " ORDER BY occurred_at DESC, id DESC LIMIT 50", {"since": day, "until": day + timedelta(days=1)})
    return out


# --- main ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        info["loadavg_1m"] = float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        pass
    return info


def code_version() -> dict[str, Any]:
    """The checked-out commit, read from .git without running git."""
    try:
        head = (ROOT / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            path = ROOT / ".git" / ref
            if path.exists():
                return {"commit": path.read_text().strip()[:7], "ref": ref}
            for line in (ROOT / ".git" / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return {"commit": line[:7], "ref": ref}
        return {"commit": head[:7]}
    except OSError:
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="outbox rows in the big database")
    parser.add_argument("--baseline-rows", type=int, default=BASELINE_ROWS)
    parser.add_argument("--samples", type=int, default=5, help="timed requests per page, after one warm-up")
    parser.add_argument("--no-experiments", dest="experiments", action="store_false",
                        help="skip trying candidate indexes and query shapes for the flagged requests")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on SIGTERM too

    import logging

    logging.getLogger("ozzy").setLevel(logging.WARNING)
    from tests.servers import database_server_url, redis_server_url

    result: dict[str, Any] = {"benchmark": "event_log", "started_at": datetime.now(timezone.utc).isoformat(),
                              "rows": args.rows, "baseline_rows": args.baseline_rows, "samples": args.samples,
                              "machine": machine(), "code": code_version()}
    with ExitStack() as stack:
        db_url, redis_url = database_server_url(stack), redis_server_url(stack)
        big = build_office(stack, "N", args.rows, db_url, redis_url)
        small = build_office(stack, "1k", args.baseline_rows, db_url, redis_url)
        with big.runtime.engine.connect() as conn:
            result["postgresql"] = conn.execute(text("SHOW server_version")).scalar()
            result["shared_buffers"] = conn.execute(text("SHOW shared_buffers")).scalar()
        result["filter_args"] = big.filter_args
        result["probes_n"] = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in big.probes.items()}
        result["probes_baseline"] = {k: (v.isoformat() if isinstance(v, datetime) else v)
                                     for k, v in small.probes.items()}
        say(f"filter URL names: {big.filter_args}")
        say(f"timing {len(CHECKS)} requests, median of {args.samples} after a warm-up, N and 1k interleaved")
        timings = measure(big, small, args.samples)
        say("EXPLAIN (ANALYZE, BUFFERS) of every outbox statement, on the N database")
        recorded = outbox_statements(timings)
        explained = plans(big, recorded)
        flagged = []
        for name, items in explained.items():
            for item in items:
                if (item["seq_scan_on_outbox"] or item["count_over_table"] or item["reads_large_share"]
                        or item["touches_many_pages"]):
                    flagged.append({"request": name, "sql": item["sql"], "top": item["top"],
                                    "rows_read_from_outbox": item["rows_read_from_outbox"],
                                    "pages": item["buffers_hit"] + item["buffers_read"],
                                    "execution_ms": item["execution_ms"], "seq_scan": item["seq_scan_on_outbox"],
                                    "count_over_table": item["count_over_table"]})
        for name in ("admin_events_list", "admin_events_by_type") + tuple(n for n in explained
                                                                          if n not in ("admin_events_list", "admin_events_by_type")):
            for item in explained.get(name, []):
                say(f"  {name}: {item['top']}")
                for line in item["scan_lines"][1:]:
                    say(f"      {line}")
                say(f"      rows read from ozzy_outbox {item['rows_read_from_outbox']:,}; "
                    f"Execution Time {item['execution_ms']} ms; buffers hit {item['buffers_hit']} read {item['buffers_read']}")
        if flagged:
            for f in flagged:
                say(f"FLAGGED {f['request']}: {'Seq Scan' if f['seq_scan'] else 'large read'}: "
                    f"{f['rows_read_from_outbox']:,} rows, {f['pages']:,} pages, {f['execution_ms']} ms: "
                    f"{f['top']}")
        else:
            say("no sequential scan and no count(*) over ozzy_outbox in any request")
        result.update(timings=timings, plans=explained, flagged=flagged)
        if args.experiments and flagged:
            say("candidate fixes, on the N database (dropped afterwards; the application is unchanged)")
            result["experiments"] = experiments(big, recorded)
        result["machine"]["loadavg_1m_end"] = machine().get("loadavg_1m")
        result["finished_at"] = datetime.now(timezone.utc).isoformat()
        say("dropping the databases")
    print(json.dumps(result, default=str, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
