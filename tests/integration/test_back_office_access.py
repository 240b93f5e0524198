"""Who may change what through the back office and /api: strangers, logged-out and deactivated
operators change nothing; every route that changes something is found in the app's URL map."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text

from shared.cluster import values as dynamic
from shared.ops.accounts import User, create_user
from tests.integration.helpers import scalar

# Fixtures and helpers of the back office tests (pytest finds fixtures imported here).
from tests.integration.test_back_office import (  # noqa: F401
    ADMIN_PAGES,
    add_node,
    app,
    bearer,
    csrf_token,
    https_client,
    logged_in,
    operator,
    runtime,
    seed_mixed,
    token,
)

CHANGING_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
PASSWORD = "correct horse battery"  # the operator fixture's

#: Routes that must be among the enumerated ones (so the enumeration itself is checked).
KNOWN_CHANGING_ROUTES = {
    ("POST", "/admin/control/"), ("POST", "/admin/logout"), ("POST", "/admin/flags/action/"),
    ("POST", "/admin/flags/new/"), ("POST", "/admin/settings/edit/"), ("POST", "/admin/deliveries/action/"),
    ("POST", "/admin/deadletters/retry-matching/"), ("POST", "/api/deliveries/<int:delivery_id>/retry"),
    ("POST", "/api/deliveries/retry"), ("PUT", "/api/settings/<key>"), ("PUT", "/api/flags/<name>"),
    ("POST", "/api/handlers/<name>/<any(pause, resume):verb>"), ("POST", "/api/relay/<any(pause, resume):verb>"),
    ("POST", "/api/nodes/<node_id>/stop"),
}


def database_state(runtime) -> dict[str, list[Any]]:
    """Everything an operator's action could change, row by row."""
    queries = {
        "outbox": "SELECT count(*), coalesce(max(id), 0) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'",
        "deliveries": "SELECT id, status, attempts, enqueued_at, completed_at, last_error FROM ozzy_deliveries ORDER BY id",
        "settings": "SELECT key, value::text, version, description FROM ozzy_settings ORDER BY key",
        "flags": "SELECT name, enabled, version, description FROM ozzy_flags ORDER BY name",
        "users": "SELECT id, username, active, password_hash, last_login_at FROM ozzy_users ORDER BY id",
        "tokens": "SELECT id, revoked_at, last_used_at FROM ozzy_api_tokens ORDER BY id",
        "nodes": "SELECT id, stopped_at FROM ozzy_nodes ORDER BY id",
    }
    with runtime.engine.connect() as conn:
        return {name: [tuple(row) for row in conn.exec_driver_sql(sql).all()] for name, sql in queries.items()}


def changing_routes(app) -> list[tuple[str, Any]]:
    """(method, rule) of every back office and API route that accepts a changing method."""
    return sorted(
        ((method, rule) for rule in app.url_map.iter_rules() if rule.rule.startswith(("/admin", "/api"))
         for method in sorted(rule.methods & CHANGING_METHODS)),
        key=lambda pair: (pair[1].rule, pair[0]),
    )


def refused(response) -> bool:  # type: ignore[no-untyped-def]
    """A redirect to the login page, or 401/403."""
    if response.status_code in (301, 302, 303, 307, 308):
        return urlsplit(response.headers.get("Location", "")).path == "/admin/login"
    return response.status_code in (401, 403)


def is_login_redirect(response) -> bool:  # type: ignore[no-untyped-def]
    return response.status_code == 302 and urlsplit(response.headers["Location"]).path == "/admin/login"


@pytest.fixture
def busy_state(runtime, operator, token) -> dict[str, Any]:
    """A database with something to break: an operator and a token, a setting, a flag, dead and
    pending deliveries of several handlers, a running node."""
    with runtime.unit_of_work() as uow:
        dynamic.define_setting(uow, "max_amount", "integer", 5000, "cap", "user:ops")
        dynamic.set_flag(uow, "beta", False, "user:ops", "beta checkout")
        uow.commit()
    seeded = seed_mixed(runtime)
    return {"deliveries": seeded, "dead": [i for i, r in seeded.items() if r["status"] == "dead"],
            "node": add_node(runtime)}


def plausible_request(rule, method: str, state: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Arguments for the test client that would change something if the route accepted them."""
    view = rule.endpoint.split(".")[0]
    a_delivery = state["dead"][0]
    # Primary key and list action per back office view; anything else gets a generic guess.
    pk, list_action = {
        "deliveries": (str(a_delivery), "resolve"), "deadletters": (str(a_delivery), "retry"),
        "flags": ("beta", "toggle"), "settings": ("max_amount", "delete"),
        "nodes": (str(state["node"]), "delete"),
    }.get(view, ("1", "delete"))
    arguments = {"delivery_id": a_delivery, "key": "max_amount", "verb": "pause", "node_id": str(state["node"]),
                 "name": "test.audit" if "/handlers/" in rule.rule else "beta", "export_type": "csv"}
    path = rule.build({a: arguments.get(a, "1") for a in rule.arguments}, append_unknown=False)[1]
    if rule.rule.startswith("/api"):
        body = {"api.put_setting": {"value": 7, "type": "integer"}, "api.put_flag": {"enabled": True},
                "api.retry_matching": {"status": "dead"}}.get(rule.endpoint, {})
        return {"path": path, "method": method, "json": body}
    form = {"command": "pause_relay", "target": "", "action": list_action, "rowid": [pk], "id": pk,
            "list_form_pk": pk, "name": "sneaky", "key": "sneaky", "type": "string", "value": "7",
            "enabled": "y", "description": "changed by a stranger", "username": "ops", "password": "not the password"}
    return {"path": path, "method": method, "data": form, "query_string": {"id": pk}}


def test_every_changing_route_refuses_a_stranger_and_changes_nothing(app, runtime, busy_state) -> None:
    # Given a busy database and the changing routes of the back office and the API, from the URL map
    routes = changing_routes(app)
    found = {(method, rule.rule) for method, rule in routes}
    assert KNOWN_CHANGING_ROUTES <= found, KNOWN_CHANGING_ROUTES - found
    offenders = []
    for method, rule in routes:
        # When a stranger (no session, no token) sends a plausible request, even with a valid CSRF
        # token taken from the login page, so only the authentication check stands in the way
        stranger = https_client(app)
        token = csrf_token(stranger)
        request = plausible_request(rule, method, busy_state)
        if "json" in request:
            request["headers"] = {"X-CSRFToken": token}
        else:
            request["data"]["csrf_token"] = token
        before = database_state(runtime)
        response = stranger.open(**request)
        after = database_state(runtime)
        # Then the answer is a redirect to the login page or 401/403, and no row changed
        changed = sorted(k for k in before if before[k] != after[k])
        if not refused(response) or changed:
            offenders.append((method, rule.rule, response.status_code, response.headers.get("Location"), changed))
    assert offenders == []



# --- logging out --------------------------------------------------------------------------------


def log_out(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    assert is_login_redirect(response)


def test_after_logout_pages_redirect_to_login_and_the_api_refuses_the_session(app, runtime, logged_in) -> None:
    # Given a logged-in operator whose session works for pages and the API
    assert logged_in.get("/admin/").status_code == 200
    assert logged_in.get("/api/status").status_code == 200
    token = csrf_token(logged_in, "/admin/")
    # When they log out
    log_out(logged_in)
    # Then every back office page sends them to the login page
    for path in ADMIN_PAGES:
        assert is_login_redirect(logged_in.get(path)), path
    # And the API answers 401 to the cookie session, for reads and for changes (even with the CSRF token)
    status = logged_in.get("/api/status")
    assert status.status_code == 401 and status.get_json()["error"]["code"] == "unauthorized"
    change = logged_in.put("/api/flags/after-logout", json={"enabled": True}, headers={"X-CSRFToken": token})
    assert change.status_code == 401
    # And a control form posted with the old CSRF token is sent to the login page and records nothing
    assert is_login_redirect(logged_in.post("/admin/control/", data={"csrf_token": token, "command": "pause_relay"}))
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'") == 0
    assert scalar(runtime, "SELECT count(*) FROM ozzy_flags") == 0


def test_a_session_cookie_copied_before_logout_is_refused_after_it(app, runtime, logged_in) -> None:
    # Given a copy of an operator's session cookie (a shared machine, a proxy log, a stolen cookie)
    copied = logged_in.get_cookie("session").value
    replay = https_client(app)
    replay.set_cookie("session", copied, domain="localhost", secure=True, httponly=True)
    assert replay.get("/api/status").status_code == 200
    # When the operator logs out
    log_out(logged_in)
    # Then the copied cookie no longer opens the back office nor the API
    assert is_login_redirect(replay.get("/admin/"))
    assert replay.get("/api/status").status_code == 401


# --- deactivated operators ----------------------------------------------------------------------


def set_active(runtime, username: str, active: bool) -> None:
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE ozzy_users SET active = :a WHERE username = :u"), {"a": active, "u": username})


def log_in(client, username: str, password: str):  # type: ignore[no-untyped-def]
    return client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": username,
                                             "password": password})


def test_a_deactivated_operator_cannot_log_in(app, runtime, operator) -> None:
    # Given two operators with their right passwords, one of them deactivated
    with runtime.session_factory() as session:
        create_user(session, "still-here", PASSWORD)
        session.commit()
    set_active(runtime, operator, False)
    # When both log in
    active_client, inactive_client = https_client(app), https_client(app)
    ok = log_in(active_client, "still-here", PASSWORD)
    refused_login = log_in(inactive_client, operator, PASSWORD)
    # Then the active one gets in, the deactivated one is refused like a wrong password
    assert ok.status_code == 302 and active_client.get("/admin/").status_code == 200
    assert refused_login.status_code == 401
    assert "Wrong username or password" in refused_login.get_data(as_text=True)
    # And has no session: pages redirect to the login page, the API answers 401
    assert is_login_redirect(inactive_client.get("/admin/"))
    assert inactive_client.get("/api/status").status_code == 401
    # And the failed attempt is not recorded as a login
    assert scalar(runtime, "SELECT last_login_at FROM ozzy_users WHERE username = :u", u=operator) is None


def test_an_open_session_of_an_operator_deactivated_afterwards_is_refused(app, runtime, logged_in, operator) -> None:
    # Given a logged-in operator whose session works
    assert logged_in.get("/admin/").status_code == 200
    assert logged_in.get("/api/status").status_code == 200
    token = csrf_token(logged_in, "/admin/")
    # When another operator deactivates their account
    set_active(runtime, operator, False)
    # Then their next requests are refused: pages redirect to the login page, the API answers 401
    assert is_login_redirect(logged_in.get("/admin/"))
    assert is_login_redirect(logged_in.get("/admin/deadletters/"))
    assert logged_in.get("/api/status").status_code == 401
    assert logged_in.put("/api/flags/x", json={"enabled": True}, headers={"X-CSRFToken": token}).status_code == 401
    # And a control form posted with their CSRF token records nothing
    assert is_login_redirect(logged_in.post("/admin/control/", data={"csrf_token": token, "command": "pause_relay"}))
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'") == 0
    assert scalar(runtime, "SELECT count(*) FROM ozzy_settings") == 0


def test_an_api_token_of_a_deactivated_operator_gets_401(app, runtime, operator, token) -> None:
    # Given an operator's API token that works
    client = https_client(app)
    assert client.get("/api/status", headers=bearer(token)).status_code == 200
    last_used = scalar(runtime, "SELECT last_used_at FROM ozzy_api_tokens")
    assert last_used is not None
    # When the operator is deactivated
    set_active(runtime, operator, False)
    # Then the token is refused for reads and for changes, and the change is not made
    read = client.get("/api/status", headers=bearer(token))
    assert read.status_code == 401 and read.get_json()["error"]["code"] == "unauthorized"
    assert client.put("/api/flags/x", json={"enabled": True}, headers=bearer(token)).status_code == 401
    assert client.post("/api/relay/pause", headers=bearer(token)).status_code == 401
    assert scalar(runtime, "SELECT count(*) FROM ozzy_flags") == 0
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'") == 0
    # And a refused use is not recorded as a use
    assert scalar(runtime, "SELECT last_used_at FROM ozzy_api_tokens") == last_used
