"""Time-range pages of the event log (#16, migration 0015), on the real PostgreSQL: the back office's
"Occurred" filter and ``GET /api/events?since=&until=`` list newest first by ``(occurred_at, id)``,
page by page without gaps or repeats, and the query is served by ``ix_ozzy_outbox_occurred_at``
without a sort (bench/history.py measures the speed)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, text

from tests.integration import test_back_office as office
from tests.integration.test_back_office import bearer

# the back office's fixtures: a runtime on the clean test database, its app, a logged-in operator
# (test client with the session cookie) and the operator's API token
runtime, app, operator, logged_in, token = office.runtime, office.app, office.operator, office.logged_in, office.token

BASE = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc)
#: Minutes after BASE, in insertion (id) order: out of time order in places, two ties (7 and 7),
#: and two events outside the range [BASE, BASE + 20 min).
MINUTES = [3, 1, 7, 2, 7, 30, 5, 4, -5, 9, 6, 8]
SINCE, UNTIL = BASE, BASE + timedelta(minutes=20)


def insert_events(runtime, minutes: list[int]) -> list[tuple[int, datetime]]:  # type: ignore[no-untyped-def]
    rows = []
    with runtime.engine.begin() as conn:
        for m in minutes:
            at = BASE + timedelta(minutes=m)
            rows.append((conn.execute(text(
                "INSERT INTO ozzy_outbox (event_id, event_type, event_version, payload, metadata, occurred_at,"
                " dispatched_at) VALUES (gen_random_uuid(), 'test.tick', 1, '{}', '{}', :at, :at) RETURNING id"),
                {"at": at}).scalar_one(), at))
    return rows


def newest_by_time(rows: list[tuple[int, datetime]]) -> list[int]:
    return [pk for pk, at in sorted(rows, key=lambda r: (r[1], r[0]), reverse=True) if SINCE <= at < UNTIL]


def api_pages(client, secret: str, limit: int, cursor: int | None = None) -> list[dict]:  # type: ignore[no-untyped-def]
    pages = []
    while True:
        query = {"limit": limit, "since": SINCE.isoformat(), "until": UNTIL.isoformat()}
        if cursor is not None:
            query["cursor"] = cursor
        page = client.get("/api/events", query_string=query, headers=bearer(secret)).get_json()
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


def test_api_time_range_pages_are_newest_first_by_time_without_gaps_or_repeats(app, runtime, token) -> None:
    rows = insert_events(runtime, MINUTES)
    client = app.test_client()
    pages = api_pages(client, token, limit=3)
    ids = [item["id"] for page in pages for item in page["items"]]
    assert ids == newest_by_time(rows) and len(ids) == 10 and len(pages) == 4
    # the two events at minute 7: the later id first, on either side of a page break or not
    tied = [pk for pk, at in rows if at == BASE + timedelta(minutes=7)]
    assert ids.index(max(tied)) + 1 == ids.index(min(tied))
    # unfiltered pages keep the log's order
    plain = client.get("/api/events?limit=50", headers=bearer(token)).get_json()["items"]
    assert [item["id"] for item in plain] == sorted((pk for pk, _ in rows), reverse=True)


def test_api_time_range_cursor_whose_event_is_gone_continues_after_it(app, runtime, token) -> None:
    rows = insert_events(runtime, [-5, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 30])  # in time order, as the log is written
    client = app.test_client()
    first = api_pages(client, token, limit=4)[0]
    cursor = first["next_cursor"]
    expected = newest_by_time(rows)
    with runtime.engine.begin() as conn:  # retention, or an operator, removed it meanwhile
        conn.execute(text("DELETE FROM ozzy_outbox WHERE id = :id"), {"id": cursor})
    rest = [item["id"] for page in api_pages(client, token, limit=4, cursor=cursor) for item in page["items"]]
    assert rest == expected[expected.index(cursor) + 1:]


def test_admin_occurred_filter_lists_newest_first_by_time_and_keeps_a_chosen_sort(logged_in, runtime) -> None:
    rows = insert_events(runtime, MINUTES)
    value = f"{SINCE:%Y-%m-%d %H:%M:%S} to {UNTIL - timedelta(seconds=1):%Y-%m-%d %H:%M:%S}"

    def listed(**args: str) -> list[int]:
        html = logged_in.get("/admin/events/", query_string={"flt0_occurred_between": value, **args}).get_data(as_text=True)
        seen: list[int] = []
        for pk in map(int, re.findall(r"/admin/events/details/\?id=(\d+)", html)):
            if pk not in seen:
                seen.append(pk)
        return seen

    assert listed() == newest_by_time(rows)
    in_range = sorted(newest_by_time(rows))
    assert listed(sort="0") == in_range  # the operator's own sort (id, ascending) wins
    assert listed(sort="0", desc="1") == in_range[::-1]
    # no time filter: the log's order, newest id first
    html = logged_in.get("/admin/events/").get_data(as_text=True)
    mine = {pk for pk, _ in rows}  # the log also holds the login's audit event
    ids = [pk for pk in dict.fromkeys(map(int, re.findall(r"/admin/events/details/\?id=(\d+)", html))) if pk in mine]
    assert ids == sorted(mine, reverse=True)


@pytest.mark.parametrize("path", ["/api/events", "/admin/events/"])
def test_time_range_page_is_read_from_the_occurred_index_without_a_sort(app, logged_in, runtime, token, path) -> None:
    with runtime.engine.begin() as conn:  # a month of events, a minute apart in id order
        conn.execute(text(
            "INSERT INTO ozzy_outbox (event_id, event_type, event_version, payload, metadata, occurred_at,"
            " dispatched_at) SELECT gen_random_uuid(), 'test.tick', 1, '{}', '{}', t, t"
            "  FROM generate_series(:start, :start + interval '30 days', interval '1 minute') AS t"),
            {"start": BASE - timedelta(days=30)})
        conn.execute(text("ANALYZE ozzy_outbox"))
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM ozzy_outbox" in statement and "ORDER BY ozzy_outbox.occurred_at DESC, ozzy_outbox.id DESC" in statement:
            statements.append((statement, parameters))

    day = BASE - timedelta(days=15)
    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        if path.startswith("/api"):
            response = app.test_client().get(path, query_string={"since": day.isoformat(),
                                                                 "until": (day + timedelta(days=1)).isoformat()},
                                             headers=bearer(token))
        else:
            response = logged_in.get(path, query_string={
                "flt0_occurred_between": f"{day:%Y-%m-%d %H:%M:%S} to {day + timedelta(days=1):%Y-%m-%d %H:%M:%S}"})
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)
    assert response.status_code == 200 and len(statements) == 1
    raw = runtime.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("EXPLAIN " + statements[0][0], statements[0][1])
        plan = "\n".join(row[0] for row in cur.fetchall())
        raw.rollback()
    finally:
        raw.close()
    assert "Index Scan Backward using ix_ozzy_outbox_occurred_at" in plan, plan
    assert "Sort" not in plan and "Seq Scan" not in plan, plan


def test_dead_letter_pages_read_the_dead_index_and_list_every_dead_delivery_newest_first(
        app, logged_in, runtime, token) -> None:
    """Dead deliveries are few and old among many finished ones: the pages read
    ``ix_ozzy_deliveries_dead`` (migration 0015) instead of walking every delivery."""
    with runtime.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO ozzy_outbox (event_id, event_type, event_version, payload, metadata, occurred_at,"
            " dispatched_at) SELECT gen_random_uuid(), 'test.tick', 1, '{}', '{}', now(), now()"
            "  FROM generate_series(1, 20000)"))
        conn.execute(text(
            "INSERT INTO ozzy_deliveries (event_id, handler, status, attempts, dead_reason)"
            " SELECT event_id, CASE WHEN id % 2 = 0 THEN 'test.audit' ELSE 'test.welcome' END,"
            "        CASE WHEN rank <= 30 THEN 'dead' ELSE 'done' END, 1,"
            "        CASE WHEN rank <= 30 THEN 'retries_exhausted' END"
            "   FROM (SELECT id, event_id, row_number() OVER (ORDER BY id) AS rank FROM ozzy_outbox) AS o"
            "  ORDER BY o.id"))
        conn.execute(text("ANALYZE ozzy_deliveries"))
        dead = [row[0] for row in conn.execute(text(
            "SELECT id FROM ozzy_deliveries WHERE status = 'dead' ORDER BY id DESC"))]
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM ozzy_deliveries" in statement and "LIMIT" in statement:
            statements.append((statement, parameters))

    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        page = logged_in.get("/admin/deadletters/").get_data(as_text=True)
        by_handler = logged_in.get("/admin/deadletters/?flt0_handler_equals=test.audit").get_data(as_text=True)
        api = app.test_client().get("/api/deliveries?status=dead", headers=bearer(token)).get_json()
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)
    listed = list(dict.fromkeys(map(int, re.findall(r"/admin/deadletters/details/\?id=(\d+)", page))))
    assert listed == dead and [d["id"] for d in api["items"]] == dead
    with runtime.engine.connect() as conn:
        audit_dead = [pk for (pk,) in conn.execute(text(
            "SELECT id FROM ozzy_deliveries WHERE status = 'dead' AND handler = 'test.audit' ORDER BY id DESC"))]
    assert list(dict.fromkeys(map(int, re.findall(r"/admin/deadletters/details/\?id=(\d+)", by_handler)))) == audit_dead
    assert len(statements) == 3
    raw = runtime.engine.raw_connection()
    try:
        cur = raw.cursor()
        for sql, params in statements:
            cur.execute("EXPLAIN " + sql, params)
            plan = "\n".join(row[0] for row in cur.fetchall())
            assert "ix_ozzy_deliveries_dead" in plan and "Seq Scan on ozzy_deliveries" not in plan, plan
        raw.rollback()
    finally:
        raw.close()
