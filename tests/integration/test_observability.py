"""Metrics, health probes, JSON logs and the gauges read from PostgreSQL, in one process against the
real PostgreSQL and Redis (the e2e twin, tests/e2e/test_observability_processes.py, scrapes real
processes)."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from shared import UnitOfWork, handles, logs
from shared.delivery.messages import send
from shared.delivery.relay import Relay
from shared.model.stored import envelope_json
from shared.observability import metrics
from shared.observability.server import MetricsServer
from shared.observability.window import Window, quantile
from shared.ops.gauges import DatabaseGauges
from tests.domain import Account, AccountOpened
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def open_accounts(runtime, n: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(n):
        with runtime.unit_of_work() as uow:
            uow.add(Account.open(f"owner-{i}"))
            uow.commit()


def test_after_n_events_handled_each_handlers_count_is_n_and_duplicates_and_failures_count_apart(clean_db) -> None:
    # Given a handler that fails once per event before succeeding, and one that always fails
    failed_once: set[str] = set()

    @handles(AccountOpened, name="obs.flaky", max_retries=3, min_backoff=10, max_backoff=20)
    def flaky(event: AccountOpened, uow: UnitOfWork) -> None:
        if str(event.account_id) not in failed_once:
            failed_once.add(str(event.account_id))
            raise RuntimeError("first attempt fails")

    @handles(AccountOpened, name="obs.doomed", max_retries=1, min_backoff=10, max_backoff=20)
    def doomed(event: AccountOpened, uow: UnitOfWork) -> None:
        raise RuntimeError("always fails")

    runtime = make_runtime(clean_db, handlers=["test.welcome", "test.audit", flaky, doomed], worker_idle_ms=100)
    names = ("test.welcome", "test.audit", "obs.flaky")
    before = {h: sample("ozzy_handler_duration_seconds_count", handler=h) for h in names}
    fails = {(h, k): sample("ozzy_handler_failures_total", handler=h, kind=k)
             for h in ("obs.flaky", "obs.doomed") for k in metrics.FAILURE_KINDS}
    dups = sample("ozzy_handler_duplicates_skipped_total", handler="test.welcome")
    dispatched = sample("ozzy_relay_dispatched_total")
    n = 25
    try:
        open_accounts(runtime, n)
        relay = Relay(runtime)
        with running_worker(runtime, threads=4):
            # When the relay dispatches them and the workers run every handler to the end
            wait_until(lambda: relay.drain() >= 0 and scalar(
                runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status IN ('done', 'dead')") == 4 * n, timeout=60)
            # and one message is delivered a second time
            with runtime.engine.connect() as conn:
                row = conn.execute(
                    text(
                        "SELECT id, event_id::text AS event_id, event_type, event_version, aggregate_type, aggregate_id,"
                        " payload::text AS payload, metadata::text AS metadata, occurred_at FROM ozzy_outbox"
                        " WHERE event_type = 'test.account_opened' ORDER BY id LIMIT 1")).one()
            send(runtime.redis, runtime.config.redis_namespace, [(runtime.handlers["test.welcome"], envelope_json(row))])
            wait_until(lambda: sample("ozzy_handler_duplicates_skipped_total", handler="test.welcome") == dups + 1)
    finally:
        runtime.close()
    # Then each handler's count is exactly the number of events it handled
    for h in names:
        assert sample("ozzy_handler_duration_seconds_count", handler=h) - before[h] == n, h
    assert sample("ozzy_handler_duration_seconds_count", handler="obs.doomed") == 0
    # and each failure counts once, by what came of it
    assert sample("ozzy_handler_failures_total", handler="obs.flaky", kind="retry") - fails["obs.flaky", "retry"] == n
    assert sample("ozzy_handler_failures_total", handler="obs.flaky", kind="dead") - fails["obs.flaky", "dead"] == 0
    assert sample("ozzy_handler_failures_total", handler="obs.doomed", kind="retry") - fails["obs.doomed", "retry"] == n
    assert sample("ozzy_handler_failures_total", handler="obs.doomed", kind="dead") - fails["obs.doomed", "dead"] == n
    # and the relay counted every event it sent (the accounts and the audits they caused)
    assert sample("ozzy_relay_dispatched_total") - dispatched == 2 * n


def test_json_logs_inside_a_handler_carry_the_event_and_its_correlation(clean_db) -> None:
    # Given JSON logs on the root logger, as OZZY_LOG_FORMAT=json sets them up
    seen: list[str] = []

    @handles(AccountOpened, name="obs.chatty", max_retries=1, min_backoff=10, max_backoff=20)
    def chatty(event: AccountOpened, uow: UnitOfWork) -> None:
        logging.getLogger("obs.chatty").warning("inside the handler")
        if not seen:
            seen.append("failed")
            raise RuntimeError("once")

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.BoundFields())
    root = logging.getLogger()
    root.addHandler(handler)
    runtime = make_runtime(clean_db, handlers=[chatty], worker_idle_ms=100)
    try:
        with runtime.unit_of_work() as uow:
            uow.add(Account.open("ada"))
            (stored,) = uow.commit()
        with running_worker(runtime, threads=1):
            Relay(runtime).drain()
            wait_until(lambda: scalar(runtime, "SELECT status FROM ozzy_deliveries") == "done")
    finally:
        root.removeHandler(handler)
        runtime.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    inside = [r for r in lines if r["message"] == "inside the handler"]
    assert [r["attempt"] for r in inside] == [1, 2]
    for record in inside:
        assert record["event_id"] == str(stored.event_id) and record["event_type"] == "test.account_opened"
        assert record["handler"] == "obs.chatty" and record["correlation_id"] == str(stored.correlation_id)
        assert record["level"] == "WARNING" and record["logger"] == "obs.chatty" and "time" in record
    # The worker's own failure line carries them too; a record outside any handler carries none
    retry = [r for r in lines if r["logger"] == "shared.delivery.worker" and "will retry" in r["message"]]
    assert retry and retry[0]["event_id"] == str(stored.event_id) and retry[0]["attempt"] == 1
    logging.getLogger("obs.outside").warning("outside")
    assert "event_id" not in json.loads(logs.JsonFormatter().format(
        logging.LogRecord("obs.outside", logging.WARNING, __file__, 1, "outside", None, None)))


def test_the_metrics_port_serves_metrics_and_probes_that_name_the_failing_check() -> None:
    healthy = {"ok": True}
    server = MetricsServer("127.0.0.1", 0, alive={"loop": lambda: healthy["ok"]},
                           ready={"database": lambda: 1 / 0 == 0})
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        body = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        for name in ("ozzy_handler_duration_seconds", "ozzy_relay_drains_total", "ozzy_http_requests_total"):
            assert f"# TYPE {name.removesuffix('_total')}" in body, name
        assert json.loads(urllib.request.urlopen(f"{base}/healthz", timeout=5).read()) == {
            "status": "ok", "checks": {"loop": "ok"}}
        healthy["ok"] = False
        for path, check in (("/healthz", "failing"), ("/readyz", "failing: ZeroDivisionError: division by zero")):
            with pytest.raises(urllib.error.HTTPError) as failed:
                urllib.request.urlopen(base + path, timeout=5)
            assert failed.value.code == 503
            assert check in json.loads(failed.value.read())["checks"].values()
    finally:
        server.stop()


def test_database_gauges_are_read_by_one_process_at_a_time(clean_db) -> None:
    runtime = make_runtime(clean_db, handlers=["test.welcome"])
    first = DatabaseGauges(runtime.engine, ["test.welcome"])
    second = DatabaseGauges(runtime.engine, ["test.welcome"])
    try:
        open_accounts(runtime, 3)
        with runtime.engine.begin() as conn:  # one event three minutes old
            conn.execute(text(
                "UPDATE ozzy_outbox SET occurred_at = now() - interval '3 minutes' WHERE id = (SELECT min(id) FROM ozzy_outbox)"))
        first.refresh()
        second.refresh()
        values = {s.name: s.value for family in first.collect() for s in family.samples if not s.labels}
        assert values["ozzy_outbox_backlog"] == 3
        assert 170 < values["ozzy_outbox_oldest_age_seconds"] < 600
        assert list(second.collect()) == []  # the other process exports none of them
        # Once dispatched, the deliveries show per handler and status
        Relay(runtime).drain()
        first.refresh()
        families = {f.name: f for f in first.collect()}
        pending = {s.labels["status"]: s.value for s in families["ozzy_deliveries"].samples
                   if s.labels["handler"] == "test.welcome"}
        assert pending == {"pending": 3, "retrying": 0, "dead": 0}
        assert families["ozzy_outbox_backlog"].samples[0].value == 0
        # When the holder stops, the other takes over at its next refresh
        first.close()
        second.refresh()
        assert {f.name for f in second.collect()} == {"ozzy_outbox_backlog", "ozzy_outbox_oldest_age_seconds", "ozzy_deliveries"}
    finally:
        first.close()
        second.close()
        runtime.close()


def test_the_dashboard_window_gives_rates_and_percentiles_of_the_runs_since_the_last_heartbeat() -> None:
    window = Window(min_interval=0)
    window.handlers()
    child = metrics.for_handler("obs.window")
    for seconds in [0.003] * 90 + [0.2] * 10:
        child.duration.observe(seconds)
    child.failures["retry"].inc()
    stats = window.handlers()["handlers"]["obs.window"]
    assert stats["handled"] == 100 and stats["per_second"] > 0 and sum(stats["buckets"]) == 100
    assert 0.0025 <= stats["p50_seconds"] <= 0.005 and 0.1 <= stats["p95_seconds"] <= 0.25
    assert stats["failures"]["retry"] >= 1
    assert quantile(0.5, [0] * 17) is None
