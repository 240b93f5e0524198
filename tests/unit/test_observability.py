"""Observability without servers: JSON log lines, the metric names, percentiles from buckets, the
probes in docker-compose.yml, the Grafana dashboard's metrics, and no OpenTelemetry unless asked."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import yaml

from shared import logs
from shared.observability import metrics
from shared.observability.window import quantile

ROOT = Path(__file__).resolve().parents[2]


def record(message: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    rec = logging.LogRecord("ozzy.test", logging.WARNING, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]
    logs.BoundFields().filter(rec)
    return rec


def test_a_json_line_carries_the_bound_fields_of_its_thread_and_only_while_bound() -> None:
    # Given fields bound as a handler's middleware binds them
    token = logs.bind(event_id="e-1", event_type="t.x", handler="h", attempt=2, correlation_id="c-1")
    try:
        inside = json.loads(logs.JsonFormatter().format(record("ran %s", "fine")))
    finally:
        logs.unbind(token)
    outside = json.loads(logs.JsonFormatter().format(record("after")))
    assert inside["message"] == "ran fine" and inside["level"] == "WARNING" and inside["logger"] == "ozzy.test"
    assert {k: inside[k] for k in ("event_id", "event_type", "handler", "attempt", "correlation_id")} == {
        "event_id": "e-1", "event_type": "t.x", "handler": "h", "attempt": 2, "correlation_id": "c-1"}
    assert "event_id" not in outside and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", outside["time"])


def test_a_json_line_is_one_line_even_with_a_traceback_and_a_newline_in_the_message() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        line = logs.JsonFormatter().format(record("two\nlines", exc_info=sys.exc_info()))
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "two\nlines" and "ValueError: bad" in data["exception"]


def test_a_bound_field_never_clobbers_a_record_attribute() -> None:
    token = logs.bind(msg="evil", levelname="FAKE", handler="h")
    try:
        data = json.loads(logs.JsonFormatter().format(record("real")))
    finally:
        logs.unbind(token)
    assert data["message"] == "real" and data["level"] == "WARNING" and data["handler"] == "h"


def test_every_contract_metric_is_registered_with_its_labels() -> None:
    from prometheus_client import REGISTRY

    registered = {m.name: m for m in REGISTRY.collect()}
    labels = {
        "ozzy_handler_duration_seconds": {"handler"},
        "ozzy_handler_failures": {"handler", "kind"},
        "ozzy_handler_duplicates_skipped": {"handler"},
        "ozzy_relay_drains": {"trigger"},
        "ozzy_http_requests": {"route", "method", "status"},
        "ozzy_http_request_duration_seconds": {"route", "method", "status"},
    }
    for name in ("ozzy_relay_dispatched", "ozzy_relay_batch_seconds", *labels):
        assert name in registered, name
    # the fast channel's gauge only from a relay: a 0 from another process would read as "down"
    assert "ozzy_fast_channel_up" not in registered
    metrics.export_fast_channel(lambda: True)
    metrics.export_fast_channel(lambda: True)  # a second relay in the same process is harmless
    try:
        assert REGISTRY.get_sample_value("ozzy_fast_channel_up") == 1.0
    finally:
        REGISTRY.unregister(metrics.fast_channel_up)
    metrics.for_handler("unit.h").failures["retry"].inc()
    assert {s.labels["kind"] for s in next(iter(metrics.handler_failures.collect())).samples
            if s.labels.get("handler") == "unit.h"} == {"retry", "dead", "parked"}
    assert {s.labels["trigger"] for s in next(iter(metrics.relay_drains.collect())).samples} >= {"notify", "poll"}


def test_percentiles_interpolate_within_a_bucket_as_prometheus_does() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert quantile(0.5, [0, 10, 0, 0], bounds) == 1.5
    assert quantile(0.95, [10, 0, 0, 10], bounds) == 4.0  # in +Inf: the highest finite bound
    assert quantile(0.25, [4, 4, 0, 0], bounds) == 0.5
    assert quantile(0.5, [0, 0, 0, 0], bounds) is None


def test_compose_probes_every_application_process_on_its_metrics_port() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("web", "relay", "worker"):
        service = services[name]
        port = service["environment"]["OZZY_METRICS_PORT"]
        check = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/" in check and "'healthz'" in check and "'readyz'" in check, name


def test_no_opentelemetry_is_imported_unless_traces_are_asked_for_and_none_is_needed() -> None:
    # Every process module imports without OpenTelemetry, and configuring from the environment
    # without the extra says what to install instead of failing.
    script = """
import sys, os, logging
sys.modules['opentelemetry'] = None  # as if the otel extra were not installed
import shared, shared.runtime.roles, shared.web.serve, shared.web.http, shared.cli.commands
from shared.observability import tracing
logging.basicConfig(level=logging.WARNING, format='%(message)s')
assert not tracing.configure_from_env('ozzy-test')  # no OTEL_* variables: off
os.environ['OTEL_TRACES_EXPORTER'] = 'console'
assert not tracing.configure_from_env('ozzy-test') and not tracing.active()
meta = {}
tracing.add_context(meta)
assert meta == {}
print('ok')
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok" and "pip install 'ozzy[otel]'" in done.stderr
    # (redis-py imports OpenTelemetry by itself when it is installed; Ozzy's modules never do at import.)
