"""Logins, roles and the audit trail (#15): throttled guessing, sessions that end on the server,
viewer/operator/admin held to their rights in the API and the back office, tokens capped by their
user's role, and every operator action on the trail with who, from where and what."""

from __future__ import annotations

import getpass
import json
import re
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from shared.ops import accounts
from shared.ops.accounts import User, create_token, create_user
from tests.integration.helpers import scalar
from tests.integration.test_cli import cli_env, ozzy  # noqa: F401  (fixtures)

# Fixtures of the back office tests (pytest finds fixtures imported here).
from tests.integration.test_back_office import (  # noqa: F401
    add_node,
    app,
    bearer,
    csrf_token,
    https_client,
    runtime,
    seed_mixed,
)

PASSWORD = "correct horse battery"


def add(runtime, name: str, role: str) -> str:
    with runtime.session_factory() as session:
        create_user(session, name, PASSWORD, role)
        session.commit()
    return name


def client_from(app, address: str = "198.51.100.1"):  # type: ignore[no-untyped-def]
    client = https_client(app)
    client.environ_base["REMOTE_ADDR"] = address
    return client


def log_in(client, name: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": name, "password": password})


def session_of(app, runtime, role: str, address: str = "198.51.100.1"):  # type: ignore[no-untyped-def]
    client = client_from(app, address)
    assert log_in(client, add(runtime, role + "-user", role)).status_code == 302
    return client


def token_of(runtime, name: str, role: str | None = None, expires_at: datetime | None = None) -> str:
    with runtime.session_factory() as session:
        user = session.query(User).filter_by(username=name).one()
        _, secret = create_token(session, user, f"{name}-token", role, expires_at)
        session.commit()
    return secret


def trail(runtime, **equal: str) -> list[dict]:
    where = "".join(f" AND payload->>'{k}' = :{k}" for k in equal)
    with runtime.engine.connect() as conn:
        return [r for (r,) in conn.execute(text(
            f"SELECT payload FROM ozzy_outbox WHERE event_type = 'ozzy.audit'{where} ORDER BY id"), equal)]


# --- logins ---------------------------------------------------------------------------------------


def test_five_failures_close_the_door_even_for_the_right_password_until_the_window_passes(app, runtime) -> None:
    # Given an operator, and someone guessing their password
    add(runtime, "ann", "operator")
    guesser = client_from(app, "203.0.113.7")
    for i in range(5):
        assert log_in(guesser, "ann", f"guess {i}!").status_code == 401
    # When the right password comes next, from another address
    owner = client_from(app, "198.51.100.20")
    refused = log_in(owner, "ann")
    # Then it is refused with 429 and the form says why; no session was made
    assert refused.status_code == 429 and "Too many failed attempts" in refused.get_data(as_text=True)
    assert owner.get("/api/status").status_code == 401
    # When the window has passed (the failures are 16 minutes old)
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE ozzy_login_failures SET failed_at = now() - interval '16 minutes'"))
    # Then the right password logs in, and the failures of that name are forgotten
    assert log_in(owner, "ann").status_code == 302
    assert scalar(runtime, "SELECT count(*) FROM ozzy_login_failures WHERE username = 'ann'") == 0
    # And every attempt is on the trail, with the name tried and the address
    actions = [(e["action"], e["client"]) for e in trail(runtime, target="ann")]
    assert actions == [("login.failed", "203.0.113.7")] * 5 + [("login.throttled", "198.51.100.20"),
                                                               ("login.succeeded", "198.51.100.20")]


def test_one_address_trying_many_names_is_throttled_too(app, runtime) -> None:
    add(runtime, "bob", "viewer")
    sprayer = client_from(app, "203.0.113.8")
    for name in ("root", "admin", "ops", "alice", "deploy"):
        assert log_in(sprayer, name, "Winter2026!").status_code == 401
    assert log_in(sprayer, "bob").status_code == 429
    # The throttle is per address: bob from his own address is not affected
    assert log_in(client_from(app, "198.51.100.30"), "bob").status_code == 302


def test_an_unknown_name_costs_as_much_as_a_known_one(app, runtime) -> None:
    add(runtime, "cat", "operator")

    def cost(name: str) -> float:
        with runtime.session_factory() as session:
            started = time.perf_counter()
            assert accounts.verify_login(session, name, "wrong password") is None
            return time.perf_counter() - started

    cost("nobody")  # the dummy hash is made once
    known = min(cost("cat") for _ in range(3))
    unknown = min(cost(f"nobody-{i}") for i in range(3))
    # Both pay one scrypt hash (tens of ms); without the dummy an unknown name took ~1 ms
    assert unknown > known / 3, (known, unknown)


def test_the_session_is_renewed_at_login(app, runtime) -> None:
    add(runtime, "dan", "operator")
    client = client_from(app)
    before = csrf_token(client)
    assert log_in(client, "dan").status_code == 302
    # A new session: the CSRF token of the login page is not the one the session now holds
    after = csrf_token(client, "/admin/")
    assert after != before
    assert client.put("/api/flags/x", json={"enabled": True}, headers={"X-CSRFToken": before}).status_code == 403
    assert client.put("/api/flags/x", json={"enabled": True}, headers={"X-CSRFToken": after}).status_code == 200


def test_a_password_change_ends_sessions_and_a_logout_is_audited(app, runtime, cli_env) -> None:
    add(runtime, "eve", "operator")
    client = client_from(app)
    log_in(client, "eve")
    assert client.get("/api/status").status_code == 200
    assert ozzy("users", "set-password", "eve", "--password", "a new password").exit_code == 0
    assert client.get("/api/status").status_code == 401
    log_in(client, "eve", "a new password")
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    assert client.get("/api/status").status_code == 401
    assert [e["action"] for e in trail(runtime, target="eve")][-3:] == ["user.password_set", "login.succeeded", "logout"]


# --- roles --------------------------------------------------------------------------------------------


def test_a_viewer_reads_everything_and_changes_nothing(app, runtime) -> None:
    # Given a viewer's session and token, and a busy database
    seeded = seed_mixed(runtime)
    node = add_node(runtime)
    viewer = session_of(app, runtime, "viewer")
    secret = token_of(runtime, "viewer-user")
    csrf = csrf_token(viewer, "/admin/")
    events_before = scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'")
    dead_before = scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'")
    # Reads work
    for path in ("/api/status", "/api/events", "/api/deliveries", "/api/audit", "/api/nodes"):
        assert viewer.get(path).status_code == 200, path
        assert https_client(app).get(path, headers=bearer(secret)).status_code == 200, path
    for page in ("/admin/", "/admin/events/", "/admin/deliveries/", "/admin/audit/", "/admin/settings/"):
        assert viewer.get(page).status_code == 200, page
    # Every change is 403, JSON in the API, a page in the back office
    dead = next(i for i, r in seeded.items() if r["status"] == "dead")
    for method, path, body in (("PUT", "/api/flags/x", {"enabled": True}), ("POST", "/api/relay/pause", None),
                               ("POST", f"/api/deliveries/{dead}/retry", None), ("PUT", "/api/settings/s", {"value": 1}),
                               ("POST", f"/api/nodes/{node}/stop", None)):
        for client, headers in ((viewer, {"X-CSRFToken": csrf}), (https_client(app), bearer(secret))):
            response = client.open(path, method=method, json=body, headers=headers)
            assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden", path
    page = viewer.post("/admin/control/", data={"csrf_token": csrf, "command": "pause_relay", "confirm": "yes"})
    assert page.status_code == 403 and "Not allowed for your role" in page.get_data(as_text=True)
    action = viewer.post("/admin/deadletters/action/", data={"csrf_token": csrf, "action": "retry", "rowid": [str(dead)]})
    assert action.status_code == 403
    assert viewer.post("/admin/flags/new/", data={"csrf_token": csrf, "name": "f", "enabled": "y"}).status_code == 403
    # Nothing changed, and the UI offers none of it
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'") == events_before
    assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'") == dead_before
    assert scalar(runtime, "SELECT count(*) FROM ozzy_flags") == 0
    assert scalar(runtime, "SELECT count(*) FROM ozzy_settings") == 0
    dashboard = viewer.get("/admin/").get_data(as_text=True)
    assert 'action="/admin/control/"' not in dashboard and 'id="user-role">viewer<' in dashboard
    deadletters = viewer.get("/admin/deadletters/").get_data(as_text=True)
    assert "Retry all matching" not in deadletters and "return modelActions.execute(" not in deadletters
    assert 'href="/admin/flags/new/' not in viewer.get("/admin/flags/").get_data(as_text=True)


def test_an_operator_operates_but_stopping_nodes_needs_an_admin(app, runtime) -> None:
    node = add_node(runtime)
    operator = session_of(app, runtime, "operator")
    csrf = csrf_token(operator, "/admin/")
    h = {"X-CSRFToken": csrf}
    assert operator.post("/api/relay/pause", headers=h).status_code == 202
    assert operator.put("/api/flags/beta", json={"enabled": True}, headers=h).status_code == 200
    stop = operator.post(f"/api/nodes/{node}/stop", headers=h)
    assert stop.status_code == 403 and stop.get_json() == {"error": {"code": "forbidden", "message": "this needs the admin role"}}
    page = operator.post("/admin/control/", data={"csrf_token": csrf, "command": "drain_stop", "target": str(node),
                                                   "confirm": "yes"})
    assert page.status_code == 403
    dashboard = operator.get("/admin/").get_data(as_text=True)
    assert 'data-command="pause_relay"' not in dashboard or 'data-command="resume_relay"' in dashboard
    assert 'data-command="drain_stop"' not in dashboard
    admin = session_of(app, runtime, "admin", "198.51.100.2")
    assert 'data-command="drain_stop"' in admin.get("/admin/").get_data(as_text=True)
    assert admin.post(f"/api/nodes/{node}/stop", headers={"X-CSRFToken": csrf_token(admin, "/admin/")}).status_code == 202


def test_tokens_act_with_their_role_capped_by_their_users_and_expire(app, runtime, cli_env) -> None:
    add(runtime, "root", "admin")
    client = https_client(app)
    # A viewer token of an admin reads but cannot change
    reader = token_of(runtime, "root", "viewer")
    assert client.get("/api/status", headers=bearer(reader)).status_code == 200
    assert client.post("/api/relay/pause", headers=bearer(reader)).status_code == 403
    # A token without a role acts as its user; when the user is lowered, so is the token
    full = token_of(runtime, "root")
    assert client.post("/api/relay/pause", headers=bearer(full)).status_code == 202
    assert ozzy("users", "set-role", "root", "viewer").exit_code == 0
    assert client.post("/api/relay/resume", headers=bearer(full)).status_code == 403
    # No token above its user's role
    result = ozzy("tokens", "create", "root", "--name", "sneaky", "--role", "admin")
    assert result.exit_code == 1 and "cannot be admin" in result.output
    # An expired token is refused like a revoked one
    gone = token_of(runtime, "root", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    assert client.get("/api/status", headers=bearer(gone)).status_code == 401


def test_cli_roles_tokens_with_expiry_and_last_use(cli_env, runtime, app) -> None:
    created = ozzy("users", "create", "fay", "--password", PASSWORD)
    assert created.exit_code == 0 and "(operator)" in created.output
    assert ozzy("users", "create", "gil", "--password", PASSWORD, "--role", "viewer").exit_code == 0
    assert ozzy("users", "create", "hal", "--password", PASSWORD, "--role", "boss").exit_code == 2
    assert ozzy("users", "set-role", "gil", "admin").exit_code == 0
    users = {u["username"]: u["role"] for u in json.loads(ozzy("users", "list", "--json").stdout)}
    assert users == {"fay": "operator", "gil": "admin"}
    made = ozzy("tokens", "create", "fay", "--name", "ci", "--role", "viewer", "--expires", "30d")
    assert made.exit_code == 0, made.output
    secret = re.search(r"(ozzy_\S+)", made.output).group(1)
    assert ozzy("tokens", "create", "fay", "--name", "x", "--expires", "soon").exit_code == 2
    https_client(app).get("/api/status", headers=bearer(secret))
    [token] = json.loads(ozzy("tokens", "list", "--json").stdout)
    assert token["role"] == "viewer" and token["last_used"] is not None
    expires = datetime.fromisoformat(token["expires"])
    assert timedelta(days=29) < expires - datetime.now(timezone.utc) <= timedelta(days=30)
    assert ozzy("tokens", "revoke", str(token["id"])).exit_code == 0
    # Every change is on the trail as the person at the terminal
    me = f"cli:{getpass.getuser()}"
    assert [(e["action"], e["target"], e["actor"]) for e in trail(runtime)] == [
        ("user.created", "fay", me), ("user.created", "gil", me), ("user.role_set", "gil", me),
        ("token.created", "ci", me), ("token.revoked", "ci", me)]


# --- the audit trail -------------------------------------------------------------------------------------


def test_operator_actions_are_on_the_trail_with_actor_client_and_target(app, runtime) -> None:
    # Given dead deliveries and an operator's session and token
    seeded = seed_mixed(runtime)
    dead = sorted(i for i, r in seeded.items() if r["status"] == "dead")
    ops = session_of(app, runtime, "operator", "192.0.2.10")
    csrf = csrf_token(ops, "/admin/")
    secret = token_of(runtime, "operator-user")
    api = client_from(app, "192.0.2.11")
    # When they retry one, retry in bulk, resolve, change a setting and a flag, pause the relay
    assert api.post(f"/api/deliveries/{dead[0]}/retry", headers=bearer(secret)).status_code == 200
    assert api.post("/api/deliveries/retry", json={"status": "dead", "handler": "test.audit"},
                    headers=bearer(secret)).status_code == 200
    ops.post("/admin/deadletters/action/", data={"csrf_token": csrf, "action": "resolve", "rowid": [str(dead[-1])]})
    assert api.put("/api/settings/limit", json={"value": 3, "type": "integer", "description": "d"},
                   headers=bearer(secret)).status_code == 200
    ops.post("/admin/flags/new/", data={"csrf_token": csrf, "name": "beta", "enabled": "y", "description": "b"})
    ops.post("/admin/control/", data={"csrf_token": csrf, "command": "pause_relay", "confirm": "yes"})
    # Then each is on the trail: who, from where, what
    entries = [(e["action"], e["actor"], e["client"], e["target"]) for e in trail(runtime)
               if not e["action"].startswith("login")]
    assert entries == [
        ("delivery.retried", "token:operator-user-token", "192.0.2.11", str(dead[0])),
        ("deliveries.retried", "token:operator-user-token", "192.0.2.11", "handler=test.audit,status=dead"),
        ("deliveries.resolved", "user:operator-user", "192.0.2.10", str(dead[-1])),
        ("setting.changed", "token:operator-user-token", "192.0.2.11", "limit"),
        ("flag.changed", "user:operator-user", "192.0.2.10", "beta"),
        ("control.issued", "user:operator-user", "192.0.2.10", None),
    ]
    bulk = trail(runtime, action="deliveries.retried")[0]
    assert bulk["details"]["count"] >= 1 and bulk["details"]["user"] == "operator-user"
    assert trail(runtime, action="control.issued")[0]["details"] == {"command": "pause_relay"}


def test_a_change_made_through_a_route_without_its_own_audit_is_still_recorded(app, runtime) -> None:
    # Given a route added without an audit call of its own (as another module may add one)
    from datetime import timezone as tz

    now = datetime.now(tz.utc)
    with runtime.engine.begin() as conn:
        event = conn.execute(text("INSERT INTO ozzy_scheduled (event_id, event_type, event_version, payload, metadata,"
                                  " due_at) VALUES (gen_random_uuid(), 'test.x', 1, '{}', '{}', :d) RETURNING event_id"),
                             {"d": now + timedelta(hours=1)}).scalar()
    ops = session_of(app, runtime, "operator")
    assert ops.post(f"/api/scheduled/{event}/cancel", headers={"X-CSRFToken": csrf_token(ops, "/admin/")}).status_code == 200
    [entry] = trail(runtime, action="request")
    assert entry["target"] == f"/api/scheduled/{event}/cancel" and entry["details"] == {"method": "POST", "status": 200}


def test_get_api_audit_filters_and_pages(app, runtime) -> None:
    # Given a trail of failed logins by two names, then a success
    add(runtime, "ivy", "viewer")
    for name in ("ivy", "joe", "ivy"):
        log_in(client_from(app, "192.0.2.50"), name, "nope nope")
    viewer = client_from(app, "192.0.2.51")
    log_in(viewer, "ivy")
    # Filters: actor, action, since, until
    everything = viewer.get("/api/audit").get_json()
    assert [e["action"] for e in everything["items"]] == ["login.succeeded"] + ["login.failed"] * 3
    assert everything["next_cursor"] is None
    failed_ivy = viewer.get("/api/audit", query_string={"actor": "user:ivy", "action": "login.failed"}).get_json()
    assert len(failed_ivy["items"]) == 2 and all(e["client"] == "192.0.2.50" for e in failed_ivy["items"])
    cut = everything["items"][0]["at"]
    assert len(viewer.get("/api/audit", query_string={"until": cut}).get_json()["items"]) == 3
    assert len(viewer.get("/api/audit", query_string={"since": cut}).get_json()["items"]) == 1
    assert viewer.get("/api/audit", query_string={"since": "yesterday"}).status_code == 400
    # Cursor pages walk all of it, newest first, without repeats
    seen, cursor = [], None
    while True:
        page = viewer.get("/api/audit", query_string={"limit": 3, **({"cursor": cursor} if cursor else {})}).get_json()
        seen += [e["id"] for e in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [e["id"] for e in everything["items"]]
    # The back office shows the same trail, filtered
    html = viewer.get("/admin/audit/?action=login.failed").get_data(as_text=True)
    assert html.count("login.failed") >= 3 and "192.0.2.50" in html and "login.succeeded</a>" not in html
