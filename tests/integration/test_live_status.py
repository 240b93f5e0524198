"""The live figures (#17 item 5): what workers and relays report at their heartbeats, merged into
``GET /api/status``'s ``throughput``, the dashboard that polls it, and ``ozzy status``."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from shared.cli import main
from shared.observability import metrics
from shared.observability.window import Window
from tests.integration.test_back_office import app, logged_in, operator, runtime

__all__ = ["app", "logged_in", "operator", "runtime"]  # the back office tests' fixtures, used here


def add_node(runtime, kind: str, info: dict, age_seconds: float = 1.0) -> None:  # type: ignore[no-untyped-def]
    with runtime.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO ozzy_nodes (id, kind, host, pid, version, heartbeat_at, info)"
            " VALUES (:i, :k, 'host-a', 4242, 't', now() - make_interval(secs => :age), CAST(:info AS jsonb))"),
            {"i": uuid.uuid4(), "k": kind, "age": age_seconds, "info": json.dumps(info)})


def worker_report(handler: str, fast: int, slow: int) -> dict:  # type: ignore[no-untyped-def]
    """What a worker's heartbeat carries after ``fast`` runs of 3 ms and ``slow`` of 200 ms."""
    window = Window(min_interval=0)
    window.handlers()
    child = metrics.for_handler(handler)
    for seconds in [0.003] * fast + [0.2] * slow:
        child.duration.observe(seconds)
    report = window.handlers()
    report["handlers"] = {handler: report["handlers"][handler]}
    report["handlers"][handler]["per_second"] = float(fast + slow)  # as if over one second
    return {"handler_stats": report}


@pytest.fixture
def two_workers_and_a_relay(runtime):  # type: ignore[no-untyped-def]
    add_node(runtime, "worker", worker_report("test.welcome", 90, 0))
    add_node(runtime, "worker", worker_report("test.welcome", 0, 10))
    add_node(runtime, "worker", worker_report("test.welcome", 500, 500), age_seconds=45)  # silent: left out
    add_node(runtime, "relay", {"dispatched_per_second": 12.5, "fast_channel": {"state": "connected"}})


def test_the_status_merges_the_live_workers_rates_and_percentiles(logged_in, two_workers_and_a_relay) -> None:
    status = logged_in.get("/api/status").get_json()
    live = status["throughput"]
    welcome = live["handlers"]["test.welcome"]
    assert live["events_per_second"] == 12.5
    assert welcome["per_second"] == 100.0  # 90 + 10; the silent worker is not counted
    assert 0.0025 <= welcome["p50_seconds"] <= 0.005  # 90 % of the runs took 3 ms
    assert 0.1 <= welcome["p95_seconds"] <= 0.25  # the slowest 10 % took 200 ms
    assert set(welcome["failures"]) == {"retry", "dead", "parked"}
    assert live["handlers"]["test.audit"]["p50_seconds"] is None  # known, nothing ran


def test_the_dashboard_renders_the_live_figures_and_polls_the_status(logged_in, two_workers_and_a_relay) -> None:
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert '<span id="events-per-second">12.5</span>' in html
    row = html[html.index('<tr data-handler="test.welcome">'):]
    row = row[:row.index("</tr>")]
    assert '<td data-cell="per-second">100.0</td>' in row and 'data-cell="p95"' in row
    assert 'fetch(url' in html and 'var url = "/api/status"' in html


def test_ozzy_status_prints_the_same_figures_as_tables(monkeypatch, runtime, two_workers_and_a_relay) -> None:
    monkeypatch.setenv("DATABASE_URL", runtime.config.database_url)
    monkeypatch.setenv("REDIS_URL", runtime.config.redis_url)
    monkeypatch.setenv("OZZY_REDIS_NAMESPACE", runtime.config.redis_namespace)
    monkeypatch.setenv("OZZY_HANDLER_MODULES", '["tests.handlers"]')
    monkeypatch.setattr("shared.cli.output._is_terminal", lambda: True)
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Pipeline at ") and "events/s      12.5" in lines
    assert any(line.startswith("fast channel  ") for line in lines)
    header = next(line for line in lines if line.startswith("handler "))
    assert header.split() == ["handler", "per_s", "p50_ms", "p95_ms", "pending", "lag_s", "retrying", "dead",
                              "failed_retry", "failed_dead", "failed_parked"]
    welcome = next(line for line in lines if line.startswith("test.welcome")).split()
    assert welcome[1] == "100.0" and 2.5 <= float(welcome[2]) <= 5.0 and 100 <= float(welcome[3]) <= 250
    assert sum(1 for line in lines if line.startswith("worker ")) == 3  # the nodes table
    as_json = CliRunner().invoke(main, ["status", "--json"])
    assert json.loads(as_json.output)["throughput"]["events_per_second"] == 12.5
    # --watch prints again after each interval, until Ctrl-C
    printed: list[int] = []

    def interrupted_after_two(seconds: float) -> None:
        printed.append(1)
        if len(printed) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("shared.cli.status.time.sleep", interrupted_after_two)
    watched = CliRunner().invoke(main, ["status", "--watch", "--interval", "1"])
    assert watched.exit_code == 0 and watched.output.count("Pipeline at ") == 2
