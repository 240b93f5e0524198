"""Hardened edges (#15): no input reaches a 500, security headers everywhere, bodies over the limit
refused by the server before they are read, formulas neutralised in CSV exports, local ``next`` only,
an access log with user and client address and no control characters."""

from __future__ import annotations

import csv
import io
import logging
import socket
import threading
import time

import pytest

from shared.web.http import MAX_BODY_BYTES, csv_safe, log_safe, parse_id
from shared.web.serve import make_server
from tests.integration.helpers import scalar

# Fixtures of the back office tests (pytest finds fixtures imported here).
from tests.integration.test_back_office import (  # noqa: F401
    app,
    bearer,
    csrf_token,
    https_client,
    logged_in,
    operator,
    runtime,
    token,
)

HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "Strict-Transport-Security")


@pytest.mark.parametrize("path", ["/", "/healthz", "/api/status", "/admin/login", "/admin/", "/nope",
                                  "/loan-applications/not-an-id", "/admin/static/admin/js/helpers.js"])
def test_every_response_carries_the_security_headers(app, path) -> None:
    # Given any page: JSON, HTML, a redirect, a 404, a static file; when a stranger asks for it
    response = https_client(app).get(path)
    response.close()
    # Then the security headers are there, framing is refused, and HSTS is on outside dev mode
    assert all(name in response.headers for name in HEADERS), (path, dict(response.headers))
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_dev_mode_sends_no_hsts(runtime) -> None:
    from services.app import create_app

    runtime.config = runtime.config.model_copy(update={"dev": True})
    response = create_app(runtime).test_client().get("/healthz")
    assert "Strict-Transport-Security" not in response.headers
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


NESTED = "[" * 100_000 + "]" * 100_000
BAD_BODIES = [NESTED.encode(), b'{"a": ' + NESTED.encode() + b"}", b"\xff\xfe\xfa{}", b'{"enabled": \xff}',
              b'{"value": ' + b"9" * 5000 + b"}", b'{"amount": 1e999999, "applicant_name": "a", "email": "a@b.cd"}']


@pytest.mark.parametrize("body", BAD_BODIES, ids=["nested", "nested-in-object", "not-utf8", "not-utf8-value",
                                                  "huge-number", "huge-exponent"])
@pytest.mark.parametrize("path", ["/api/flags/x", "/api/settings/x", "/api/deliveries/retry", "/loan-applications"])
def test_malformed_bodies_answer_4xx_json_never_500(app, token, path, body) -> None:
    client = https_client(app)
    method = "PUT" if "/flags/" in path or "/settings/" in path else "POST"
    response = client.open(path, method=method, data=body, content_type="application/json", headers=bearer(token))
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data()[:300])
    assert "error" in response.get_json()


@pytest.mark.parametrize("path", ["/api/events/²", "/api/events/٣", "/api/events/" + "9" * 30,
                                  "/api/events/99999999999999999999", "/api/events?limit=²", "/api/events?limit=" + "9" * 5000,
                                  "/api/events?cursor=٣", "/api/events?cursor=" + "9" * 40, "/api/deliveries?cursor=²",
                                  "/api/deliveries/²/retry", "/api/deliveries/" + "9" * 25 + "/retry",
                                  "/api/deliveries/9223372036854775808/retry", "/api/events?since=%ff%fe",
                                  "/api/events/%ff%fe", "/loan-applications/%ff", "/api/audit?cursor=" + "9" * 20])
def test_odd_numbers_and_ids_answer_4xx_never_500(app, token, path) -> None:
    client = https_client(app)
    method = "POST" if path.endswith("/retry") else "GET"
    response = client.open(path, method=method, headers=bearer(token))
    assert 400 <= response.status_code < 500, (path, response.status_code, response.get_data()[:300])


@pytest.mark.parametrize("path", ["/admin/events/details/?id=²", "/admin/events/details/?id=" + "9" * 30,
                                  "/admin/deliveries/?page=²", "/admin/events/?page=" + "9" * 40,
                                  "/admin/deliveries/details/?id=%ff%fe", "/admin/events/?flt0_occurred_between=%ff"])
def test_odd_ids_in_the_back_office_never_500(logged_in, path) -> None:
    assert logged_in.get(path).status_code < 500, path


def test_parse_id_takes_ascii_digits_within_a_bigint_only() -> None:
    assert parse_id("42") == 42 and parse_id("9223372036854775807") == 2**63 - 1
    assert [parse_id(v) for v in ("²", "٣", "", "-1", "1.0", " 1", "9223372036854775808", "9" * 5000)] == [None] * 8


def test_csv_cells_that_spreadsheets_would_run_are_neutralised(logged_in, runtime) -> None:
    # Given events whose aggregate ids look like formulas
    formulas = ["=HYPERLINK(\"http://evil\")", "+1+1", "-2+3", "@SUM(A1)"]
    with runtime.engine.begin() as conn:
        for i, text in enumerate(formulas):
            conn.exec_driver_sql(
                "INSERT INTO ozzy_outbox (event_id, event_type, event_version, payload, metadata, aggregate_id)"
                " VALUES (gen_random_uuid(), 'test.x', 1, '{}', '{}', %s)", (text,))
    # When the event log is exported
    rows = list(csv.DictReader(io.StringIO(logged_in.get("/admin/events/export/csv/").get_data(as_text=True))))
    # Then each such cell starts with an apostrophe, and nothing else changed
    cells = {r["Aggregate Id"] for r in rows if r["Type"] == "test.x"}
    assert cells == {"'" + f for f in formulas}
    assert csv_safe("plain") == "plain" and csv_safe(12) == 12


@pytest.mark.parametrize("target", ["/%09/evil.example", "//evil.example", "/\\evil.example", "/\\/evil.example",
                                    "https://evil.example/", "/%0a/evil.example", "/%0d%0a/evil.example",
                                    "javascript:alert(1)", "/ /evil.example", "%2F%2Fevil.example", "http:/evil"])
def test_login_redirects_only_to_local_paths(app, operator, target) -> None:
    client = https_client(app)
    response = client.post(f"/admin/login?next={target}", data={
        "csrf_token": csrf_token(client), "username": operator, "password": "correct horse battery"})
    assert response.status_code == 302 and response.headers["Location"] == "/admin/", target


def test_login_keeps_a_local_next(app, operator) -> None:
    client = https_client(app)
    response = client.post("/admin/login?next=/admin/events/%3Fpage%3D2", data={
        "csrf_token": csrf_token(client), "username": operator, "password": "correct horse battery"})
    assert response.headers["Location"] == "/admin/events/?page=2"


def test_the_access_log_names_user_and_client_and_escapes_control_characters(app, logged_in, token, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ozzy.access")
    # When a path carries a newline and an escape sequence, from a token's client and a session's
    https_client(app).get("/api/events/1%0AGET forged 200%1b[2J", headers=bearer(token),
                          environ_base={"REMOTE_ADDR": "203.0.113.9"})
    logged_in.get("/admin/")
    lines = [r.getMessage() for r in caplog.records if r.name == "ozzy.access"]
    # Then each request is one line, control characters escaped, with who and from where
    assert all("\n" not in line and "\x1b" not in line for line in lines)
    forged = [line for line in lines if "forged" in line]
    assert len(forged) == 1 and "\\n" in forged[0] and "\\x1b" in forged[0]
    assert "user=token:tests" in forged[0] and "client=203.0.113.9" in forged[0]
    assert any(line.startswith("GET /admin/ 200") and "user=user:ops" in line for line in lines)
    assert log_safe("a\u2028b\\n") == "a\\u2028b\\\\n"


def _raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_server_refuses_a_body_over_the_limit_before_reading_it(app, runtime) -> None:
    # Given the app served by waitress as `ozzy web` serves it
    server = make_server(app, host="127.0.0.1", port=0, threads=2)
    port = server.socket.getsockname()[1]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        # When a client announces a body of 1 GiB and sends none of it
        started = time.monotonic()
        head = (b"POST /loan-applications HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (1 << 30))
        answer = _raw_request(port, head)
        # Then it gets 413 at once, without the server waiting for (or buffering) the body
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert time.monotonic() - started < 5
        # And a body just under the limit still reaches the app (which validates it)
        body = b'{"applicant_name": "' + b"a" * (MAX_BODY_BYTES - 100) + b'"}'
        head = (b"POST /loan-applications HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        assert _raw_request(port, head, body).startswith(b"HTTP/1.1 400")
        assert scalar(runtime, "SELECT count(*) FROM loan_applications") == 0
    finally:
        server.close()
        thread.join(timeout=5)
