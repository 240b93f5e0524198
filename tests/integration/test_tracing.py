"""Traces and the web process's observability, through Flask's test client, the real relay and an
in-process worker on the real PostgreSQL and Redis, with OpenTelemetry's in-memory exporter."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timezone

import pytest
from flask import Flask
from prometheus_client import REGISTRY

from services.app import create_app
from shared import UnitOfWork, handles, logs
from shared.delivery.relay import Relay
from shared.observability import tracing
from shared.runtime import Runtime
from shared.web import http
from tests.domain import Account, DepositAudited, Deposited
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until

@handles(DepositAudited, name="obs.deposit_after_audit", min_backoff=10, max_backoff=20)
def deposit_after_audit(event: DepositAudited, uow: UnitOfWork) -> None:
    """The second hop of the traced chain: it raises the event of the third."""
    uow.publish(Deposited(account_id=event.account_id, money={"amount": "1", "currency": "EUR"},
                          at=datetime.now(timezone.utc)))


def accounts_app(runtime: Runtime) -> Flask:
    """A one-route application on the framework's HTTP plumbing: POST /accounts opens an account."""
    app = Flask(__name__)
    http.install(app, runtime)

    @app.post("/accounts")
    def open_account():  # type: ignore[no-untyped-def]
        with http.unit_of_work() as uow:
            uow.add(Account.open("traced"))
            uow.commit()
        return {"ok": True}, 201

    return app


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=["test.welcome", deposit_after_audit, "test.count_deposit"], worker_idle_ms=100)
    yield rt
    rt.close()


@pytest.fixture
def spans():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.configure(provider)
    yield exporter
    tracing.disable()
    provider.shutdown()


def test_one_request_and_its_three_handler_hops_form_one_trace(runtime, spans) -> None:
    # Given a request that opens an account: welcome → (DepositAudited) → a deposit → (Deposited) → count
    response = accounts_app(runtime).test_client().post("/accounts")
    assert response.status_code == 201
    # When the relay and a worker carry it through the three handlers
    relay = Relay(runtime)
    relay.start()
    try:
        with running_worker(runtime, threads=2):
            wait_until(lambda: scalar(runtime, "SELECT count(*) FROM test_side_effects WHERE handler = 'count_deposit'") == 1,
                       timeout=30)
            wait_until(lambda: len([s for s in spans.get_finished_spans() if s.name.startswith("ozzy.handle")]) == 3)
    finally:
        relay.stop()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    request = by_name["POST /accounts"]
    commit = by_name["ozzy.commit"]
    first = by_name["ozzy.handle test.welcome"]
    second = by_name["ozzy.handle obs.deposit_after_audit"]
    third = by_name["ozzy.handle test.count_deposit"]

    # Then every span is in one trace
    trace_ids = {s.context.trace_id for s in spans.get_finished_spans()}
    assert trace_ids == {request.context.trace_id}
    # and each links to its cause: request > commit > first hop > second > third, each relay
    # dispatch a child of the span that wrote the event it moved
    def parent(span):  # type: ignore[no-untyped-def]
        return span.parent.span_id if span.parent is not None else None

    assert request.parent is None
    assert parent(commit) == request.context.span_id
    assert parent(first) == commit.context.span_id
    assert parent(second) == first.context.span_id
    assert parent(third) == second.context.span_id
    assert parent(by_name["ozzy.relay.dispatch test.account_opened"]) == commit.context.span_id
    assert parent(by_name["ozzy.relay.dispatch test.deposit_audited"]) == first.context.span_id
    assert parent(by_name["ozzy.relay.dispatch test.deposited"]) == second.context.span_id
    assert first.attributes["ozzy.handler"] == "test.welcome" and first.attributes["ozzy.attempt"] == 1
    assert len(spans.get_finished_spans()) == 8  # request, commit, three dispatches, three runs
    # and the trace context rode in the events' metadata
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE metadata ? 'traceparent'") == 3


def test_without_tracing_no_event_carries_a_trace_context(runtime) -> None:
    assert not tracing.active()
    assert accounts_app(runtime).test_client().post("/accounts").status_code == 201
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE metadata ? 'traceparent'") == 0


def test_web_requests_count_by_route_template_and_log_their_correlation_id(runtime) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.BoundFields())
    access = logging.getLogger("ozzy.access")
    access.addHandler(handler)
    previous_level = access.level
    access.setLevel(logging.INFO)

    def count(route: str, status: str) -> float:
        return REGISTRY.get_sample_value("ozzy_http_requests_total",
                                         {"route": route, "method": "GET", "status": status}) or 0.0

    before = count("/loan-applications/<application_id>", "404"), count("unmatched", "404")
    client = create_app(runtime).test_client()
    correlation = "6f1c1e2a-52b1-4a47-9a3e-1b2f3c4d5e6f"
    try:
        for _ in range(3):
            client.get("/loan-applications/00000000-0000-0000-0000-000000000000",
                       headers={"X-Correlation-ID": correlation})
        client.get("/no/such/path/at/all")
    finally:
        access.removeHandler(handler)
        access.setLevel(previous_level)
    assert count("/loan-applications/<application_id>", "404") - before[0] == 3
    assert count("unmatched", "404") - before[1] == 1
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["correlation_id"] for r in records[:3]] == [correlation] * 3
