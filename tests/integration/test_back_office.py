"""The back office and the management API through Flask's test client, on the real PostgreSQL."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from urllib.parse import quote

import pytest
from flask_admin import tools
from sqlalchemy import text

from services.app import create_app
from shared import ConfigurationError, UnitOfWork, handles
from shared.cluster import values as dynamic
from shared.ops.accounts import User, create_token, create_user
from shared.delivery.handlers import HandlerRegistry
from shared.delivery.relay import Relay
from shared.model.stored import to_stored
from shared.outbox.write import write_events
from tests.domain import Account, AccountOpened, Currency, DepositAudited, Deposited, Money
from tests.integration.helpers import HANDLER_MODULES, make_runtime, running_worker, scalar, wait_until

ADMIN_PAGES = ["/admin/", "/admin/events/", "/admin/deliveries/", "/admin/deadletters/", "/admin/settings/",
               "/admin/flags/", "/admin/nodes/", "/admin/loan_applications/", "/admin/settings/new/",
               "/admin/flags/new/", "/admin/events/export/csv/", "/admin/deliveries/retry-matching/"]
API_ROUTES = [("GET", "/api/status"), ("GET", "/api/nodes"), ("GET", "/api/events"), ("GET", "/api/events/1"),
              ("GET", "/api/deliveries"), ("POST", "/api/deliveries/1/retry"), ("POST", "/api/deliveries/retry"),
              ("GET", "/api/settings/x"), ("PUT", "/api/settings/x"), ("GET", "/api/flags/x"),
              ("PUT", "/api/flags/x"), ("POST", "/api/handlers/test.audit/pause"), ("POST", "/api/relay/pause"),
              ("POST", "/api/nodes/00000000-0000-7000-8000-000000000001/stop")]
INJECTIONS = ["' OR '1'='1", "1; DROP TABLE ozzy_outbox; --", "\" OR 1=1 --", "%' OR 1=1 --", "') OR ('a'='a"]


@pytest.fixture
def runtime(clean_db):
    names = [n for n in HandlerRegistry.from_modules(HANDLER_MODULES) if n.startswith(("test.", "loans."))]
    rt = make_runtime(clean_db, handlers=names, worker_idle_ms=100)
    yield rt
    rt.close()


@pytest.fixture
def app(runtime):
    return create_app(runtime)


def https_client(app):  # type: ignore[no-untyped-def]
    """Cookies are Secure outside dev mode, and Flask-WTF checks the Referer on HTTPS."""
    client = app.test_client()
    client.environ_base.update({"wsgi.url_scheme": "https", "HTTP_REFERER": "https://localhost/admin/"})
    return client


@pytest.fixture
def operator(runtime):
    with runtime.session_factory() as session:
        create_user(session, "ops", "correct horse battery", role="admin")  # may do everything (#15 roles)
        session.commit()
    return "ops"


def csrf_token(client, path: str = "/admin/login") -> str:
    html = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


@pytest.fixture
def logged_in(app, operator):
    client = https_client(app)
    response = client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": operator,
                                                 "password": "correct horse battery"})
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    return client


@pytest.fixture
def token(runtime, operator):
    with runtime.session_factory() as session:
        user = session.query(User).filter_by(username=operator).one()
        _, secret = create_token(session, user, "tests")
        session.commit()
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def open_accounts(runtime, n: int) -> list[Account]:
    accounts = []
    with runtime.unit_of_work() as uow:
        for i in range(n):
            account = Account.open(f"owner-{i}")
            uow.add(account)
            accounts.append(account)
        uow.commit()
    return accounts


# --- security ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_every_back_office_page_sends_strangers_to_the_login_page(app, path) -> None:
    response = https_client(app).get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login")


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
def test_every_api_route_refuses_strangers_with_401_json(app, method, path) -> None:
    response = https_client(app).open(path, method=method, json={})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
def test_a_wrong_or_revoked_token_is_refused(app, runtime, token, method, path) -> None:
    assert https_client(app).open(path, method=method, json={}, headers=bearer("ozzy_nope")).status_code == 401
    with runtime.session_factory() as session:
        from shared.ops.accounts import ApiToken, revoke_token

        revoke_token(session, session.query(ApiToken).one().id)
        session.commit()
    assert https_client(app).open(path, method=method, json={}, headers=bearer(token)).status_code == 401


def test_wrong_password_is_refused_and_leaves_no_session(app, operator) -> None:
    client = https_client(app)
    response = client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": operator,
                                                 "password": "wrong"})
    assert response.status_code == 401 and "Wrong username or password" in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_login_form_and_actions_need_the_csrf_token(app, operator, logged_in) -> None:
    stranger = https_client(app)
    assert stranger.post("/admin/login", data={"username": operator, "password": "correct horse battery"}).status_code == 400
    # An action posted without the token is refused and changes nothing
    response = logged_in.post("/admin/flags/new/", data={"name": "sneaky", "enabled": "y"})
    assert response.status_code == 400
    assert logged_in.post("/admin/logout").status_code == 400
    # The API refuses a cookie-authenticated change without X-CSRFToken, accepts it with one
    assert logged_in.put("/api/flags/f", json={"enabled": True}).status_code == 403
    ok = logged_in.put("/api/flags/f", json={"enabled": True}, headers={"X-CSRFToken": csrf_token(logged_in, "/admin/flags/new/")})
    assert ok.status_code == 200


def test_session_cookie_is_secure_httponly_and_samesite(app, operator) -> None:
    client = https_client(app)
    client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": operator,
                                      "password": "correct horse battery"})
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.secure and cookie.http_only and cookie.same_site == "Lax"


def test_secret_key_is_required_outside_dev_mode(clean_db) -> None:
    runtime = make_runtime(clean_db, handlers=[], secret_key=None)
    try:
        with pytest.raises(ConfigurationError, match="SECRET_KEY"):
            create_app(runtime)
        dev = make_runtime(clean_db, handlers=[], secret_key=None, dev=True)
        assert create_app(dev).config["SECRET_KEY"]
        dev.close()
    finally:
        runtime.close()


def test_login_never_redirects_to_another_site(app, operator) -> None:
    client = https_client(app)
    response = client.post("/admin/login?next=//evil.example/x", data={
        "csrf_token": csrf_token(client), "username": operator, "password": "correct horse battery"})
    assert response.headers["Location"] == "/admin/"


# --- pages ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_every_page_renders_for_an_operator(logged_in, runtime, path) -> None:
    open_accounts(runtime, 3)
    assert logged_in.get(path).status_code == 200


def test_dashboard_shows_backlog_handlers_and_nodes(logged_in, runtime) -> None:
    open_accounts(runtime, 4)
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert '<div class="h3 mb-0" id="backlog">5</div>' in html  # and the login, on the audit trail
    assert "test.welcome" in html and "loans.credit_check" in html
    assert "events per minute" in html


def test_event_log_filters_searches_exports_and_shows_the_caused_chain(logged_in, runtime) -> None:
    accounts = open_accounts(runtime, 3)
    relay = Relay(runtime)
    with running_worker(runtime):
        wait_until(lambda: relay.drain() >= 0 and scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type = 'test.deposit_audited'") == 3)
    target = str(accounts[1].id)
    # search by aggregate id: exact match only
    html = logged_in.get(f"/admin/events/?search={target}").get_data(as_text=True)
    assert html.count(target) >= 1 and str(accounts[0].id) not in html
    # filter by type, by URL, as the filter menu builds it
    page = logged_in.get("/admin/events/?flt0_type_equals=test.deposit_audited").get_data(as_text=True)
    assert "test.deposit_audited" in page and "test.account_opened</td>" not in page
    # the details page shows the pretty payload, the events it caused and its deliveries
    opened_id = scalar(runtime, "SELECT id FROM ozzy_outbox WHERE aggregate_id = :a", a=target)
    details = logged_in.get(f"/admin/events/details/?id={opened_id}").get_data(as_text=True)
    assert "test.deposit_audited" in details and 'id="caused"' in details and "test.welcome" in details
    # CSV export with the payload
    exported = logged_in.get("/admin/events/export/csv/").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert len(rows) == 7 and any(target in r["Payload"] for r in rows)  # 6 and the login's audit event


@pytest.mark.parametrize("term", INJECTIONS)
def test_injection_strings_in_search_and_filters_are_just_values(logged_in, runtime, token, app, term) -> None:
    open_accounts(runtime, 2)
    assert logged_in.get("/admin/events/", query_string={"search": term}).status_code == 200
    assert logged_in.get("/admin/events/", query_string={"flt0_type_equals": term}).status_code == 200
    assert logged_in.get("/admin/deliveries/", query_string={"flt0_handler_equals": term}).status_code == 200
    client = https_client(app)
    for params in ({"type": term}, {"aggregate_id": term}):
        response = client.get("/api/events", query_string=params, headers=bearer(token))
        assert response.status_code == 200 and response.get_json()["items"] == []
    assert client.get("/api/deliveries", query_string={"handler": term}, headers=bearer(token)).get_json()["items"] == []
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'") == 2  # the table is still there, untouched


@pytest.fixture
def dead_runtime(clean_db):
    fail = {"on": True}

    @handles(AccountOpened, name="test.office_flaky", max_retries=0)
    def office_flaky(event: AccountOpened, uow: UnitOfWork) -> None:
        if fail["on"]:
            raise RuntimeError("downstream refused")

    rt = make_runtime(clean_db, handlers=[office_flaky], worker_idle_ms=100)
    rt.fail = fail
    yield rt
    rt.close()


def test_retry_all_matching_covers_every_page_after_a_confirmation_with_the_count(dead_runtime, operator) -> None:
    runtime = dead_runtime
    app = create_app(runtime)
    client = https_client(app)
    client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": operator,
                                      "password": "correct horse battery"})
    with running_worker(runtime):
        open_accounts(runtime, 70)  # more than one page of 50
        Relay(runtime).drain()
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'") == 70)
        confirm = client.get("/admin/deadletters/retry-matching/").get_data(as_text=True)
        assert "70 deliveries match" in confirm and "<strong>70</strong>" in confirm
        runtime.fail["on"] = False
        token = csrf_token(client, "/admin/deadletters/retry-matching/")
        done = client.post("/admin/deadletters/retry-matching/", data={"csrf_token": token}, follow_redirects=True)
        assert "70 deliveries matching the filter enqueued again" in done.get_data(as_text=True)
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'") == 70)


def test_retry_selected_and_mark_resolved_actions(dead_runtime, operator) -> None:
    runtime = dead_runtime
    client = https_client(create_app(runtime))
    client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": operator,
                                      "password": "correct horse battery"})
    with running_worker(runtime):
        open_accounts(runtime, 3)
        Relay(runtime).drain()
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'") == 3)
        with runtime.engine.connect() as conn:
            ids = [str(i) for (i,) in conn.exec_driver_sql("SELECT id FROM ozzy_deliveries ORDER BY id").all()]
        token = csrf_token(client, "/admin/deliveries/")
        resolved = client.post("/admin/deliveries/action/", data={"csrf_token": token, "action": "resolve", "rowid": ids[:1]})
        assert resolved.status_code == 302
        runtime.fail["on"] = False
        client.post("/admin/deliveries/action/", data={"csrf_token": token, "action": "retry", "rowid": ids})
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'") == 2)
    with runtime.engine.connect() as conn:
        statuses = dict(conn.exec_driver_sql("SELECT id, status FROM ozzy_deliveries").all())
    assert statuses[int(ids[0])] == "resolved"
    assert "resolved by user:ops" in scalar(runtime, "SELECT last_error FROM ozzy_deliveries WHERE id = :i", i=int(ids[0]))


def test_dead_letter_details_show_the_traceback(dead_runtime, operator) -> None:
    runtime = dead_runtime
    client = https_client(create_app(runtime))
    client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": operator,
                                      "password": "correct horse battery"})
    with running_worker(runtime):
        open_accounts(runtime, 1)
        Relay(runtime).drain()
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'") == 1)
    delivery = scalar(runtime, "SELECT id FROM ozzy_deliveries")
    html = client.get(f"/admin/deadletters/details/?id={delivery}").get_data(as_text=True)
    assert "Traceback (most recent call last)" in html and "downstream refused" in html


EDIT_MAX_AMOUNT = "/admin/settings/edit/?id=" + quote(tools.escape("loans.max_amount"))


def test_settings_are_typed_validated_and_each_change_is_an_event_with_its_actor(logged_in, runtime) -> None:
    token = csrf_token(logged_in, "/admin/settings/new/")
    created = logged_in.post("/admin/settings/new/", data={"csrf_token": token, "key": "loans.max_amount",
                                                            "type": "integer", "value": "5000", "description": "cap"})
    assert created.status_code == 302
    bad = logged_in.post(EDIT_MAX_AMOUNT,
                         data={"csrf_token": token, "value": "lots", "description": "cap"}, follow_redirects=True)
    assert "expected an integer" in bad.get_data(as_text=True)
    logged_in.post(EDIT_MAX_AMOUNT, data={"csrf_token": token, "value": "7000", "description": "cap"})
    from shared import settings as live_settings

    assert live_settings.get("loans.max_amount") == 7000
    with runtime.engine.connect() as conn:
        events = conn.exec_driver_sql(
            "SELECT payload, metadata FROM ozzy_outbox WHERE event_type = 'ozzy.setting_changed' ORDER BY id").all()
    assert [(e.payload["old_value"], e.payload["new_value"]) for e in events] == [(None, 5000), (5000, 7000)]
    assert {e.metadata["actor"] for e in events} == {"user:ops"}


def test_flags_toggle_through_the_back_office_and_are_read_by_is_enabled(logged_in, runtime) -> None:
    from shared import flags

    token = csrf_token(logged_in, "/admin/flags/new/")
    created = logged_in.post("/admin/flags/new/", data={"csrf_token": token, "name": "checkout.v2", "description": "beta"})
    assert created.status_code == 302
    assert flags.is_enabled("checkout.v2") is False
    # the list's checkbox carries Flask-Admin's escaped id ("." is its separator)
    checkbox = re.search(r'<input[^>]*name="rowid"[^>]*>', logged_in.get("/admin/flags/").get_data(as_text=True)).group(0)
    rowid = re.search(r'value="([^"]+)"', checkbox).group(1)
    logged_in.post("/admin/flags/action/", data={"csrf_token": token, "action": "toggle", "rowid": [rowid]})
    assert flags.is_enabled("checkout.v2") is True
    assert flags.is_enabled("missing", default=True) is True
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type = 'ozzy.flag_changed'") == 2


# --- management API ---------------------------------------------------------------------------


def test_api_status_events_and_cursor_pagination(app, runtime, token) -> None:
    client = https_client(app)
    open_accounts(runtime, 5)
    status = client.get("/api/status", headers=bearer(token)).get_json()
    assert status["backlog"]["undispatched"] == 5 and "test.welcome" in status["handlers"]
    first = client.get("/api/events?limit=2", headers=bearer(token)).get_json()
    second = client.get(f"/api/events?limit=2&cursor={first['next_cursor']}", headers=bearer(token)).get_json()
    third = client.get(f"/api/events?limit=2&cursor={second['next_cursor']}", headers=bearer(token)).get_json()
    ids = [e["id"] for page in (first, second, third) for e in page["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5 and third["next_cursor"] is None
    one = client.get(f"/api/events/{ids[0]}", headers=bearer(token)).get_json()
    assert one["payload"]["owner"].startswith("owner-") and one["deliveries"] == []
    by_uuid = client.get(f"/api/events/{one['event_id']}", headers=bearer(token)).get_json()
    assert by_uuid["id"] == ids[0]
    assert client.get("/api/events?dispatched=false", headers=bearer(token)).get_json()["items"]
    assert client.get("/api/events?since=2000-01-01T00:00:00%2B00:00&type=test.account_opened",
                      headers=bearer(token)).get_json()["items"]


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=abc", "limit"), ("cursor=x", "cursor"), ("correlation_id=nope", "correlation_id"),
     ("since=yesterday", "since"), ("since=2026-01-01T00:00:00", "since"), ("dispatched=maybe", "dispatched")],
)
def test_api_rejects_bad_parameters_with_400_naming_them(app, token, query, field) -> None:
    response = https_client(app).get(f"/api/events?{query}", headers=bearer(token))
    assert response.status_code == 400 and field in response.get_json()["error"]["fields"]


def test_api_unknown_things_are_404(app, token) -> None:
    client = https_client(app)
    for path in ("/api/events/999999", f"/api/events/{uuid.uuid4()}", "/api/events/nope", "/api/settings/none",
                 "/api/flags/none", "/api/nope"):
        assert client.get(path, headers=bearer(token)).status_code == 404, path
    assert client.post("/api/deliveries/999/retry", headers=bearer(token)).status_code == 404


def test_api_deliveries_filter_and_retry_by_id_and_by_filter(dead_runtime, operator) -> None:
    runtime = dead_runtime
    with runtime.session_factory() as session:
        user = session.query(User).filter_by(username=operator).one()
        _, secret = create_token(session, user, "t")
        session.commit()
    client = https_client(create_app(runtime))
    with running_worker(runtime):
        open_accounts(runtime, 4)
        Relay(runtime).drain()
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'") == 4)
        dead = client.get("/api/deliveries?status=dead&handler=test.office_flaky", headers=bearer(secret)).get_json()
        assert len(dead["items"]) == 4 and dead["items"][0]["last_error"]
        runtime.fail["on"] = False
        one = client.post(f"/api/deliveries/{dead['items'][0]['id']}/retry", headers=bearer(secret)).get_json()
        assert one == {"retried": 1}
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'") == 1)
        again = client.post(f"/api/deliveries/{dead['items'][0]['id']}/retry", headers=bearer(secret))
        assert again.status_code == 409
        bulk = client.post("/api/deliveries/retry", json={"status": "dead"}, headers=bearer(secret)).get_json()
        assert bulk == {"matched": 3, "retried": 3}
        wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'") == 4)
    assert client.post("/api/deliveries/retry", json={}, headers=bearer(secret)).status_code == 400
    assert client.post("/api/deliveries/retry", json={"colour": "red"}, headers=bearer(secret)).status_code == 400


def test_api_settings_and_flags(app, runtime, token) -> None:
    client = https_client(app)
    h = bearer(token)
    assert client.put("/api/settings/limit", json={"value": 3}, headers=h).status_code == 404
    created = client.put("/api/settings/limit", json={"value": 3, "type": "integer", "description": "d"}, headers=h)
    assert created.status_code == 200 and created.get_json()["value"] == 3
    assert client.put("/api/settings/limit", json={"value": "three"}, headers=h).status_code == 400
    assert client.put("/api/settings/limit", json={"value": True}, headers=h).status_code == 400
    assert client.put("/api/settings/limit", json={"value": 4}, headers=h).get_json()["version"] == 2
    assert client.get("/api/settings/limit", headers=h).get_json()["value"] == 4
    assert client.put("/api/settings/cfg", json={"value": {"a": [1]}, "type": "json"}, headers=h).get_json()["value"] == {"a": [1]}
    assert client.put("/api/flags/beta", json={"enabled": "yes"}, headers=h).status_code == 400
    flag = client.put("/api/flags/beta", json={"enabled": True, "description": "b"}, headers=h).get_json()
    assert flag["enabled"] is True and flag["updated_by"] == "user:ops"
    assert client.get("/api/flags/beta", headers=h).get_json()["enabled"] is True
    assert client.put("/api/flags/beta", data="x", headers=h).status_code == 415
    with runtime.engine.connect() as conn:
        actors = {m for (m,) in conn.exec_driver_sql(
            "SELECT metadata->>'actor' FROM ozzy_outbox WHERE event_type LIKE 'ozzy.%%'").all()}
    assert actors == {"user:ops"}


def test_settings_store_rejects_bad_types_without_http() -> None:
    with pytest.raises(dynamic.InvalidSettingValue):
        dynamic.coerce("integer", True)
    with pytest.raises(dynamic.InvalidSettingValue):
        dynamic.coerce("boolean", "perhaps")
    assert dynamic.coerce("boolean", "off") is False
    assert dynamic.coerce("json", '{"a": 1}') == {"a": 1}


# --- seeded deliveries: several handlers, event types and statuses ---------------------------

#: The event type each handler of ``tests.handlers`` / ``workers.handlers`` consumes.
EVENT_OF_HANDLER = {"test.welcome": "test.account_opened", "test.audit": "test.deposit_audited",
                    "test.count_deposit": "test.deposited", "loans.credit_check": "loans.application_submitted"}


def sample_event(event_type: str):  # type: ignore[no-untyped-def]
    """A valid typed event of ``event_type`` (the loans type is written under its stable name)."""
    account = uuid.uuid4()
    if event_type == "test.deposit_audited":
        return DepositAudited(account_id=account, amount=Decimal("1.50"))
    if event_type == "test.deposited":
        return Deposited(account_id=account, money=Money(amount=Decimal("5"), currency=Currency.EUR),
                         at=datetime.now(timezone.utc))
    return AccountOpened(account_id=account, owner="seeded")


def write_event(runtime, event_type: str, *, parked: bool = False) -> uuid.UUID:
    """One event in the log (written as the outbox INSERT does), optionally parked as unknown."""
    stored = dataclasses.replace(to_stored(sample_event(event_type)), type=event_type)
    with runtime.session_factory() as session:
        write_events(session, [stored])
        if parked:
            session.execute(text("UPDATE ozzy_outbox SET parked_at = now(), park_reason = 'unknown event type'"
                                 " WHERE event_id = :e"), {"e": stored.event_id})
        session.commit()
    return stored.event_id


def seed_delivery(runtime, handler: str, status: str, *, minutes_ago: int = 0,
                  reason: str = "retries_exhausted") -> int:
    """An event of the handler's type and its delivery row in ``status``, written directly; failed
    ones carry a traceback whose last line names the handler and the event type."""
    event_type = EVENT_OF_HANDLER[handler]
    event_id = write_event(runtime, event_type)
    failed = status in ("dead", "retrying")
    at = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)
    error = (f'Traceback (most recent call last):\n  File "tests/handlers.py", line 7, in {handler}\n'
             f"RuntimeError: {handler} refused {event_type} ({minutes_ago} min ago)") if failed else None
    with runtime.engine.begin() as conn:
        return conn.execute(text(
            "INSERT INTO ozzy_deliveries (event_id, handler, status, attempts, last_error, enqueued_at,"
            " first_failed_at, last_failed_at, dead_reason, completed_at)"
            " VALUES (:e, :h, :s, :a, :err, :at, :ff, :lf, :reason, :done) RETURNING id"),
            {"e": event_id, "h": handler, "s": status, "a": 3 if failed else (1 if status == "done" else 0),
             "err": error, "at": at, "ff": at - timedelta(minutes=1) if failed else None, "lf": at if failed else None,
             "reason": reason if status == "dead" else None, "done": at if status in ("done", "resolved") else None},
        ).scalar_one()


#: (handler, status, dead reason) of the seeded deliveries: every handler has dead rows and others.
MIXED = [("test.welcome", "dead", "retries_exhausted"), ("test.welcome", "dead", "permanent_error"),
         ("test.welcome", "done", None), ("test.audit", "dead", "retries_exhausted"),
         ("test.audit", "dead", "retries_exhausted"), ("test.audit", "pending", None),
         ("test.count_deposit", "dead", "retries_exhausted"), ("test.count_deposit", "retrying", None),
         ("loans.credit_check", "dead", "retries_exhausted")]


def seed_mixed(runtime) -> dict[int, dict[str, str | None]]:
    """The :data:`MIXED` deliveries; delivery id → handler, event_type, status, dead_reason."""
    seeded = {}
    for minutes_ago, (handler, status, reason) in enumerate(MIXED):
        delivery_id = seed_delivery(runtime, handler, status, minutes_ago=minutes_ago, reason=reason or "")
        seeded[delivery_id] = {"handler": handler, "event_type": EVENT_OF_HANDLER[handler], "status": status,
                               "dead_reason": reason}
    return seeded


def matching(seeded: dict[int, dict[str, str | None]], **wanted: str) -> set[int]:
    return {i for i, row in seeded.items() if all(row[k] == v for k, v in wanted.items())}


def statuses(runtime) -> dict[int, str]:
    with runtime.engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT id, status FROM ozzy_deliveries").all())


def listed_rowids(html: str) -> set[int]:
    """The ids of the rows a Flask-Admin list page shows (its action checkboxes)."""
    return {int(v) for v in re.findall(r'name="rowid" class="action-checkbox" value="(\d+)"', html)}


# --- the control page: pause and resume, drain and stop ----------------------------------------


def add_node(runtime, kind: str = "worker") -> uuid.UUID:
    node_id = uuid.uuid4()
    with runtime.engine.begin() as conn:
        conn.execute(text("INSERT INTO ozzy_nodes (id, kind, host, pid, version) VALUES (:i, :k, 'host-1', 4242, 't')"),
                     {"i": node_id, "k": kind})
    return node_id


def control_events(runtime) -> list[tuple[dict, str | None]]:
    """The control commands in the log, oldest first: (payload, actor)."""
    with runtime.engine.connect() as conn:
        return [(payload, metadata.get("actor")) for payload, metadata in conn.exec_driver_sql(
            "SELECT payload, metadata FROM ozzy_outbox WHERE event_type = 'ozzy.control_command' ORDER BY id").all()]


def setting_values(runtime) -> dict[str, object]:
    with runtime.engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT key, value FROM ozzy_settings").all())


def post_control(client, command: str, target: str | None = None, token: str | None = None,  # type: ignore[no-untyped-def]
                 confirm: str | None = "yes"):
    """POST a dashboard control form; ``confirm=yes`` is what the button adds once the operator confirms."""
    data = {"command": command}
    if confirm is not None:
        data["confirm"] = confirm
    if target is not None:
        data["target"] = target
    if token is not None:
        data["csrf_token"] = token
    return client.post("/admin/control/", data=data)


def test_dashboard_renders_the_control_forms_for_an_operator(logged_in, runtime) -> None:
    # Given a running worker node and the handlers this web process knows
    node_id = add_node(runtime)
    # When an operator opens the dashboard (the control page)
    response = logged_in.get("/admin/")
    html = response.get_data(as_text=True)
    # Then it renders a CSRF-protected form posting to /admin/control/ for each command
    assert response.status_code == 200
    forms = re.findall(r'<form class="d-inline" method="post" action="/admin/control/">(.*?)</form>', html, re.S)
    assert forms and all('name="csrf_token"' in f for f in forms)
    assert 'data-command="pause_relay"' in html
    assert 'data-command="pause_handler" data-target="test.audit"' in html
    assert 'data-command="pause_handler" data-target="loans.credit_check"' in html
    assert f'data-command="drain_stop" data-target="{node_id}"' in html


@pytest.mark.parametrize(
    ("steps", "expected_settings"),
    [
        ([("pause_handler", "test.audit")], {"ozzy.paused_handlers": ["test.audit"]}),
        ([("pause_handler", "test.audit"), ("pause_handler", "test.welcome"), ("resume_handler", "test.audit")],
         {"ozzy.paused_handlers": ["test.welcome"]}),
        ([("pause_relay", None)], {"ozzy.relay_paused": True}),
        ([("pause_relay", None), ("resume_relay", None)], {"ozzy.relay_paused": False}),
    ],
    ids=["pause-handler", "pause-two-resume-one", "pause-relay", "pause-then-resume-relay"],
)
def test_control_actions_record_the_command_and_the_pause_state(logged_in, runtime, steps, expected_settings) -> None:
    # Given an operator on the dashboard, with its CSRF token
    token = csrf_token(logged_in, "/admin/")
    # When they press the buttons, one POST per step
    for command, target in steps:
        response = post_control(logged_in, command, target, token)
        assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    # Then each step is one ozzy.control_command event, in order, with the operator as actor
    assert control_events(runtime) == [({"command": c, "target": t}, "user:ops") for c, t in steps]
    # And the pause state is stored as runtime settings that processes started later honour
    assert setting_values(runtime) == expected_settings
    # And the dashboard shows the new state (the button that undoes it)
    html = logged_in.get("/admin/").get_data(as_text=True)
    for name in expected_settings.get("ozzy.paused_handlers", []):
        assert f'data-command="resume_handler" data-target="{name}"' in html
    if expected_settings.get("ozzy.relay_paused"):
        assert 'data-command="resume_relay"' in html and "relay paused" in html


def test_control_drain_stop_names_the_node_and_changes_no_pause_state(logged_in, runtime) -> None:
    # Given a running node
    node_id = add_node(runtime)
    # When the operator asks it to drain and stop
    response = post_control(logged_in, "drain_stop", str(node_id), csrf_token(logged_in, "/admin/"))
    # Then the command targeting that node is in the log, and no pause setting was written
    assert response.status_code == 302
    assert control_events(runtime) == [({"command": "drain_stop", "target": str(node_id)}, "user:ops")]
    assert setting_values(runtime) == {}


@pytest.mark.parametrize(("command", "target"), [("pause_handler", "no.such_handler"), ("resume_handler", None),
                                                 ("reboot", None), ("", None)])
def test_control_refuses_unknown_commands_and_handlers(logged_in, runtime, command, target) -> None:
    # Given an operator with a valid CSRF token
    token = csrf_token(logged_in, "/admin/")
    # When they post a command that does not exist, or target a handler this process does not know
    response = post_control(logged_in, command, target, token)
    # Then it is refused and nothing is recorded
    assert response.status_code == 400
    assert control_events(runtime) == [] and setting_values(runtime) == {}


@pytest.mark.parametrize(("command", "target"), [("pause_handler", "test.audit"), ("resume_handler", "test.welcome"),
                                                 ("pause_relay", None), ("resume_relay", None), ("drain_stop", "node")])
def test_control_post_without_csrf_token_changes_nothing(logged_in, runtime, command, target) -> None:
    # Given a paused handler and a paused relay, set through the form with its token
    token = csrf_token(logged_in, "/admin/")
    assert post_control(logged_in, "pause_handler", "test.welcome", token).status_code == 302
    assert post_control(logged_in, "pause_relay", None, token).status_code == 302
    node_id = add_node(runtime)
    before_rows = scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'")
    before_settings = setting_values(runtime)
    # When a command is posted without the CSRF token (a forged cross-site form)
    response = post_control(logged_in, command, str(node_id) if target == "node" else target)
    # Then it is refused, no event is written and the pause state is as it was
    assert response.status_code == 400
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'") == before_rows
    assert setting_values(runtime) == before_settings == {"ozzy.paused_handlers": ["test.welcome"],
                                                          "ozzy.relay_paused": True}


# --- filters of dead letters and deliveries: exactly the matching rows --------------------------


@pytest.mark.parametrize(
    "query",
    [{"handler": "test.audit"}, {"handler": "test.welcome", "status": "dead"}, {"status": "dead"},
     {"status": "retrying"}, {"event_type": "test.deposited"}, {"event_type": "test.account_opened", "status": "done"},
     {"handler": "test.welcome", "event_type": "test.deposited"}],
    ids=lambda q: "&".join(f"{k}={v}" for k, v in q.items()),
)
def test_api_deliveries_filters_return_exactly_the_matching_rows(app, runtime, token, query) -> None:
    # Given deliveries of several handlers, event types and statuses
    seeded = seed_mixed(runtime)
    # When the API is asked for the deliveries matching a filter
    response = https_client(app).get("/api/deliveries", query_string={**query, "limit": 500}, headers=bearer(token))
    # Then it returns exactly the seeded rows that match, each showing the filtered fields
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert {i["id"] for i in items} == matching(seeded, **query)
    assert all(i[k] == v for i in items for k, v in query.items())


@pytest.mark.parametrize(
    ("params", "wanted"),
    [({"flt0_handler_equals": "test.audit"}, {"handler": "test.audit"}),
     ({"flt0_handler_equals": "test.welcome"}, {"handler": "test.welcome"}),
     ({"flt0_event_type_equals": "test.deposited"}, {"event_type": "test.deposited"}),
     ({"flt0_handler_equals": "test.welcome", "flt1_dead_reason_equals": "permanent_error"},
      {"handler": "test.welcome", "dead_reason": "permanent_error"}),
     ({"flt0_handler_equals": "test.audit", "flt1_event_type_equals": "test.deposited"},
      {"handler": "test.audit", "event_type": "test.deposited"}),
     ({}, {})],
    ids=["handler-audit", "handler-welcome", "event-type", "handler-and-reason", "contradictory", "no-filter"],
)
def test_dead_letters_view_filters_show_exactly_the_matching_dead_rows(logged_in, runtime, params, wanted) -> None:
    # Given deliveries of several handlers, event types and statuses, dead and not
    seeded = seed_mixed(runtime)
    # When the operator filters the dead letters view
    response = logged_in.get("/admin/deadletters/", query_string=params)
    # Then the list shows exactly the dead deliveries that match, and no other
    assert response.status_code == 200
    assert listed_rowids(response.get_data(as_text=True)) == matching(seeded, status="dead", **wanted)


@pytest.mark.parametrize(
    ("params", "wanted"),
    [({"flt0_status_equals": "pending"}, {"status": "pending"}),
     ({"flt0_handler_equals": "test.count_deposit"}, {"handler": "test.count_deposit"}),
     ({"flt0_status_equals": "dead", "flt1_handler_equals": "test.audit"}, {"status": "dead", "handler": "test.audit"}),
     ({"flt0_event_type_equals": "test.account_opened"}, {"event_type": "test.account_opened"})],
    ids=["status", "handler", "status-and-handler", "event-type"],
)
def test_deliveries_view_filters_show_exactly_the_matching_rows(logged_in, runtime, params, wanted) -> None:
    # Given deliveries of several handlers and statuses
    seeded = seed_mixed(runtime)
    # When the operator filters the deliveries view
    response = logged_in.get("/admin/deliveries/", query_string=params)
    # Then exactly the matching deliveries are listed
    assert response.status_code == 200
    assert listed_rowids(response.get_data(as_text=True)) == matching(seeded, **wanted)


def test_retry_matching_in_the_dead_letters_view_retries_only_the_filtered_handler(logged_in, runtime) -> None:
    # Given dead deliveries of several handlers
    seeded = seed_mixed(runtime)
    audit_dead = matching(seeded, handler="test.audit", status="dead")
    query = "?flt0_handler_equals=test.audit"
    # When the operator asks to retry all dead letters matching the handler filter
    confirm = logged_in.get("/admin/deadletters/retry-matching/" + query).get_data(as_text=True)
    done = logged_in.post("/admin/deadletters/retry-matching/" + query,
                          data={"csrf_token": csrf_token(logged_in, "/admin/deadletters/retry-matching/" + query)},
                          follow_redirects=True)
    # Then the confirmation counted only that handler's dead rows, and only they were enqueued again
    assert f"{len(audit_dead)} deliveries match" in confirm
    assert f"{len(audit_dead)} deliveries matching the filter enqueued again" in done.get_data(as_text=True)
    after = statuses(runtime)
    assert {i for i, s in after.items() if s != seeded[i]["status"]} == audit_dead
    assert all(after[i] == "pending" for i in audit_dead)


def test_api_bulk_retry_changes_only_the_rows_matching_its_filter(app, runtime, token) -> None:
    # Given deliveries of several handlers, event types and statuses
    seeded = seed_mixed(runtime)
    client = https_client(app)
    # When a script retries the dead deliveries of one handler, then everything unfinished of one event type
    first = client.post("/api/deliveries/retry", json={"handler": "test.welcome", "status": "dead"}, headers=bearer(token))
    second = client.post("/api/deliveries/retry", json={"event_type": "test.deposited"}, headers=bearer(token))
    # Then each call matched exactly its rows, and only those are enqueued again (pending)
    welcome_dead = matching(seeded, handler="test.welcome", status="dead")
    deposited = matching(seeded, event_type="test.deposited")
    assert first.get_json() == {"matched": len(welcome_dead), "retried": len(welcome_dead)}
    assert second.get_json() == {"matched": len(deposited), "retried": len(deposited)}
    after = statuses(runtime)
    assert {i for i, s in after.items() if s != seeded[i]["status"]} == welcome_dead | deposited
    assert {after[i] for i in welcome_dead | deposited} == {"pending"}
