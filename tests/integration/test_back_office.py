"""The back office and the management API through Flask's test client, on the real PostgreSQL."""

from __future__ import annotations

import csv
import io
import re
import uuid

from urllib.parse import quote

import pytest
from flask_admin import tools

from services.app import create_app
from shared import ConfigurationError, UnitOfWork, dynamic, handles
from shared.accounts import User, create_token, create_user
from shared.handlers import unregister
from shared.relay import Relay
from tests.domain import Account, AccountOpened
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until

ADMIN_PAGES = ["/admin/", "/admin/events/", "/admin/deliveries/", "/admin/deadletters/", "/admin/settings/",
               "/admin/flags/", "/admin/nodes/", "/admin/loan_applications/", "/admin/settings/new/",
               "/admin/flags/new/", "/admin/events/export/csv/", "/admin/deliveries/retry-matching/"]
API_ROUTES = [("GET", "/api/status"), ("GET", "/api/nodes"), ("GET", "/api/events"), ("GET", "/api/events/1"),
              ("GET", "/api/deliveries"), ("POST", "/api/deliveries/1/retry"), ("POST", "/api/deliveries/retry"),
              ("GET", "/api/settings/x"), ("PUT", "/api/settings/x"), ("GET", "/api/flags/x"),
              ("PUT", "/api/flags/x"), ("POST", "/api/handlers/test.audit/pause"), ("POST", "/api/relay/pause"),
              ("POST", f"/api/nodes/{uuid.uuid4()}/stop")]
INJECTIONS = ["' OR '1'='1", "1; DROP TABLE ozzy_outbox; --", "\" OR 1=1 --", "%' OR 1=1 --", "') OR ('a'='a"]


@pytest.fixture
def runtime(clean_db):
    import workers.handlers.loans  # noqa: F401

    import tests.handlers  # noqa: F401
    from shared.handlers import registered_handlers

    names = [n for n in registered_handlers() if n.startswith(("test.", "loans.")) and n != "test.office_flaky"]
    rt = make_runtime(clean_db, handler_names=names, worker_idle_ms=100)
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
        create_user(session, "ops", "correct horse battery")
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
        from shared.accounts import ApiToken, revoke_token

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
    runtime = make_runtime(clean_db, handler_names=[], secret_key=None)
    try:
        with pytest.raises(ConfigurationError, match="SECRET_KEY"):
            create_app(runtime)
        dev = make_runtime(clean_db, handler_names=[], secret_key=None, dev=True)
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
    assert '<div class="h3 mb-0" id="backlog">4</div>' in html
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
    assert len(rows) == 6 and any(target in r["Payload"] for r in rows)


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
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 2  # the table is still there, untouched


@pytest.fixture
def dead_runtime(clean_db):
    fail = {"on": True}

    @handles(AccountOpened, name="test.office_flaky", max_retries=0)
    def office_flaky(event: AccountOpened, uow: UnitOfWork) -> None:
        if fail["on"]:
            raise RuntimeError("downstream refused")

    rt = make_runtime(clean_db, handler_names=["test.office_flaky"], worker_idle_ms=100)
    rt.fail = fail
    yield rt
    unregister("test.office_flaky")
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
