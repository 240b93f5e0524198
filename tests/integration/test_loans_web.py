"""The loan example's HTTP API through Flask's test client, on the real PostgreSQL and Redis."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from services.app import create_app
from shared.web.http import MAX_BODY_BYTES
from shared.delivery.relay import Relay
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until


@pytest.fixture
def runtime(clean_db):
    import workers.handlers.loans  # noqa: F401

    rt = make_runtime(
        clean_db,
        handlers=["loans.credit_check", "loans.decide", "loans.notify_approved", "loans.notify_rejected"],
        worker_idle_ms=200,
    )
    yield rt
    rt.close()


@pytest.fixture
def client(runtime):
    return create_app(runtime).test_client()


GOOD = {"applicant_name": "Ada Lovelace", "email": "ada@example.com", "amount": 1200.50}


def test_submit_returns_201_and_saves_the_application_with_its_event(client, runtime) -> None:
    response = client.post("/loan-applications", json=GOOD)
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "submitted" and uuid.UUID(body["id"])
    assert scalar(runtime, "SELECT count(*) FROM loan_applications") == 1
    assert scalar(runtime, "SELECT event_type FROM ozzy_outbox") == "loans.application_submitted"
    # the request's correlation id is echoed and stored on the event
    assert scalar(runtime, "SELECT correlation_id::text FROM ozzy_outbox") == response.headers["X-Correlation-ID"]


def test_an_application_goes_through_credit_check_decision_and_one_notification(client, runtime) -> None:
    # The rule written out independently of the model (README), so a wrong model cannot agree with it
    from tests.e2e.test_loans_http import predicted_status

    expected = {500: (785, "approved"), 90000: (671, "rejected")}  # one of each outcome
    assert {amount: predicted_status("ada@example.com", Decimal(amount)) for amount in expected} == expected
    ids = [client.post("/loan-applications", json={**GOOD, "amount": amount}).get_json()["id"] for amount in expected]
    relay = Relay(runtime)
    relay.start()
    try:
        with running_worker(runtime):
            wait_until(lambda: scalar(runtime, "SELECT count(*) FROM loan_notifications") == 2)
    finally:
        relay.stop()
    for application_id, (score, status) in zip(ids, expected.values()):
        view = client.get(f"/loan-applications/{application_id}").get_json()
        assert (view["credit_score"], view["status"]) == (score, status), view
        assert [n["kind"] for n in view["notifications"]] == [status]


def test_get_unknown_or_malformed_ids_is_404(client) -> None:
    assert client.get(f"/loan-applications/{uuid.uuid4()}").status_code == 404
    response = client.get("/loan-applications/not-a-uuid")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@example.com", "amount": 10}, "applicant_name"),
        ({**GOOD, "applicant_name": 42}, "applicant_name"),
        ({**GOOD, "applicant_name": "   "}, "applicant_name"),
        ({**GOOD, "email": "not-an-email"}, "email"),
        ({**GOOD, "amount": -5}, "amount"),
        ({**GOOD, "amount": 0}, "amount"),
        ({**GOOD, "amount": 10_000_000_000}, "amount"),
        ({**GOOD, "amount": "100"}, "amount"),
        ({**GOOD, "amount": True}, "amount"),
        ({**GOOD, "amount": 10.123}, "amount"),
        ({**GOOD, "admin": True}, "admin"),
    ],
)
def test_a_bad_body_is_400_naming_the_field_and_saves_nothing(client, runtime, body, field) -> None:
    response = client.post("/loan-applications", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "validation_failed"
    assert field in error["fields"], error
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 0


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        ("{bad json", "application/json", 400, "malformed_json"),
        ('{"amount": NaN, "email": "a@b.co", "applicant_name": "x"}', "application/json", 400, "malformed_json"),
        ("[1, 2]", "application/json", 400, "malformed_json"),
        (json.dumps(GOOD), "text/plain", 415, "unsupported_media_type"),
        ("x" * (MAX_BODY_BYTES + 1), "application/json", 413, "request_entity_too_large"),
    ],
)
def test_malformed_wrong_type_and_oversize_bodies_are_json_4xx(client, data, content_type, status, code) -> None:
    response = client.post("/loan-applications", data=data, content_type=content_type)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_unknown_routes_and_methods_are_json_errors(client) -> None:
    assert client.get("/nope").get_json()["error"]["code"] == "not_found"
    response = client.delete("/loan-applications")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_healthz_reports_database_and_redis_separately(client, clean_db) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok", "database": "ok", "redis": "ok"}
    from tests.servers import free_port

    broken = make_runtime(clean_db, handlers=[], redis_url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        response = create_app(broken).test_client().get("/healthz")
        assert response.status_code == 503
        body = response.get_json()
        assert body == {"status": "degraded", "database": "ok", "redis": "down"}  # no driver error text
    finally:
        broken.close()
