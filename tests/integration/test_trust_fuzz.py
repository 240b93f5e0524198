"""Property: generated bodies, query strings and ids sent to every route of /api, /admin and the
example service, as a stranger and as each role, never get a 5xx, and never do more than the role
may: a stranger and a viewer change nothing in /api and /admin, an operator never stops a node nor
touches users and tokens (#15). Routes come from the app's URL map, so routes added later are in."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import text

from shared.ops.accounts import create_token, create_user
from tests.integration.test_back_office import (  # noqa: F401  (fixtures)
    add_node,
    app,
    csrf_token,
    https_client,
    runtime,
    seed_mixed,
)

PASSWORD = "correct horse battery"
ARG = re.compile(r"<(?:([a-z]+)(?:\(([^)]*)\))?:)?([a-z_]+)>")
#: The tables an action could change, except the log (counted without its audit events), the login
#: throttle's rows and a token's last use (reading changes them).
SKIPPED = {"ozzy_outbox", "ozzy_login_failures", "ozzy_api_tokens", "alembic_version"}


def fingerprint_sql(runtime) -> str:
    with runtime.engine.connect() as conn:
        tables = [t for (t,) in conn.exec_driver_sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_type = 'BASE TABLE' ORDER BY table_name") if t not in SKIPPED]
    parts = [f"(SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {t} t)" for t in tables]
    parts.append("(SELECT count(*)::text FROM ozzy_outbox WHERE event_type <> 'ozzy.audit')")
    parts.append("(SELECT md5(coalesce(string_agg(concat_ws(',', id, revoked_at, role, expires_at), '|'"
                 " ORDER BY id), '')) FROM ozzy_api_tokens)")
    return "SELECT " + " || ',' || ".join(parts)


def above_operator_sql() -> str:
    """What only an admin may do: stop nodes, change users and tokens."""
    return ("SELECT (SELECT count(*) FROM ozzy_outbox WHERE event_type = 'ozzy.control_command'"
            " AND payload->>'command' = 'drain_stop')::text || ',' ||"
            " (SELECT md5(coalesce(string_agg(concat_ws(',', id, username, active, role, password_hash, session_token),"
            " '|' ORDER BY id), '')) FROM ozzy_users) || ',' ||"
            " (SELECT md5(coalesce(string_agg(concat_ws(',', id, revoked_at, role, expires_at), '|' ORDER BY id), ''))"
            " FROM ozzy_api_tokens)")


@pytest.fixture
def world(app, runtime) -> dict[str, Any]:
    """A busy database, and a client for a stranger and for each role (sessions and tokens)."""
    seeded = seed_mixed(runtime)
    node = add_node(runtime)
    clients: dict[str, tuple[Any, dict[str, str]]] = {"stranger": (https_client(app), {})}
    for role in ("viewer", "operator", "admin"):
        with runtime.session_factory() as session:
            user = create_user(session, role, PASSWORD, role)
            _, secret = create_token(session, user, f"{role}-token")
            session.commit()
        client = https_client(app)
        client.environ_base["REMOTE_ADDR"] = f"192.0.2.{len(clients)}"
        client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": role, "password": PASSWORD})
        clients[role] = (client, {"X-CSRFToken": csrf_token(client, "/admin/")})
        clients[f"{role}-token"] = (https_client(app), {"Authorization": f"Bearer {secret}"})
    routes = sorted({(rule.rule, method) for rule in app.url_map.iter_rules()
                     if not rule.rule.startswith("/admin/static") and "static" not in rule.endpoint
                     for method in rule.methods - {"HEAD", "OPTIONS"}})
    ids = [str(i) for i in seeded] + [str(node), "1", "0", "beta", "test.audit", "max_amount", "pause", "resume"]
    with runtime.engine.begin() as conn:  # a setting and a flag to change
        conn.execute(text("INSERT INTO ozzy_settings (key, type, value) VALUES ('max_amount', 'integer', '5')"))
        conn.execute(text("INSERT INTO ozzy_flags (name, enabled) VALUES ('beta', false)"))
    return {"clients": clients, "routes": routes, "ids": ids, "node": node,
            "fingerprint": fingerprint_sql(runtime), "above_operator": above_operator_sql()}


odd_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["²", "٣", "9" * 30, "9223372036854775808", "-1", "1e9999", "%ff", "\x00", "../..", "NaN",
                     "' OR 1=1 --", "yes", "dead", "pause_relay", "drain_stop", "true", "2026-12-03T00:00:00Z"]),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40) | st.floats(allow_nan=False) | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["value", "type", "enabled", "description", "status", "handler", "event_type", "amount",
                         "applicant_name", "email", "from", "to", "handlers", "x"]), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["limit", "cursor", "since", "until", "actor", "action", "type", "aggregate_id", "correlation_id",
          "dispatched", "status", "handler", "page", "id", "search", "sort", "flt0_handler_equals", "url",
          "command", "target", "confirm", "rowid", "name", "key", "value", "enabled", "csrf_token", "next"]


@st.composite
def requests(draw, world: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    rule, method = draw(st.sampled_from(world["routes"]))

    def fill(match: re.Match[str]) -> str:
        converter, items = match.group(1), match.group(2)
        if converter == "any" and draw(st.booleans()):
            return draw(st.sampled_from([i.strip() for i in items.split(",")]))
        value = draw(st.one_of(st.sampled_from(world["ids"]), odd_text, st.uuids().map(str)))
        return quote(value, safe="") or "x"

    path = ARG.sub(fill, rule)
    if draw(st.integers(min_value=0, max_value=2)) == 0:  # a third of the requests are plausible ones
        return plausible(draw, world, path, method)
    query = draw(st.dictionaries(st.sampled_from(FIELDS), odd_text, max_size=3))
    request: dict[str, Any] = {"path": path, "method": method, "query_string": query}
    if method not in ("GET", "DELETE"):
        kind = draw(st.sampled_from(["json", "form", "raw", "deep"]))
        if kind == "json":
            request["json"] = draw(json_values)
        elif kind == "form":
            form = draw(st.dictionaries(st.sampled_from(FIELDS), odd_text | st.sampled_from(world["ids"]), max_size=5))
            form.setdefault("confirm", "yes")
            request["data"] = form
        elif kind == "raw":
            request["data"] = draw(st.binary(max_size=200))
            request["content_type"] = draw(st.sampled_from(["application/json", "text/plain",
                                                            "application/x-www-form-urlencoded"]))
        else:
            depth = draw(st.integers(min_value=500, max_value=50_000))
            request["data"] = "[" * depth + "]" * depth
            request["content_type"] = "application/json"
    return request


PLAUSIBLE_JSON = [{"enabled": True}, {"value": 7, "type": "integer"}, {"value": 9}, {"status": "dead"},
                  {"handler": "test.audit"}, {"status": "dead", "handler": "test.audit"}, {}]
PLAUSIBLE_FORMS = [{"command": "pause_relay"}, {"command": "pause_handler", "target": "test.audit"},
                   {"command": "drain_stop", "target": "NODE"}, {"action": "retry"}, {"action": "resolve"},
                   {"action": "toggle", "rowid": ["beta"]}, {"action": "cancel"}, {"action": "pause"},
                   {"name": "fuzzed", "enabled": "y", "description": "d"},
                   {"key": "fuzzed", "type": "integer", "value": "3"}, {"value": "11", "description": "d"}]


def plausible(draw, world: dict[str, Any], path: str, method: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A request that would change something if its sender were allowed to."""
    request: dict[str, Any] = {"path": path, "method": method, "query_string": {}}
    if path.startswith("/api"):
        request["json"] = draw(st.sampled_from(PLAUSIBLE_JSON))
    else:
        form = dict(draw(st.sampled_from(PLAUSIBLE_FORMS)))
        if form.get("target") == "NODE":
            form["target"] = str(world["node"])
        form.setdefault("rowid", [draw(st.sampled_from(world["ids"]))])
        form["confirm"] = "yes"
        request["data"] = form
        request["query_string"] = {"id": draw(st.sampled_from(world["ids"]))}
    return request


def test_no_route_answers_5xx_nor_acts_above_the_role(app, runtime, world) -> None:
    conn = runtime.engine.connect()
    accepted: list[tuple[str, str, str]] = []

    def state(sql: str) -> str:
        conn.rollback()
        return str(conn.execute(text(sql)).scalar())

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(who=st.sampled_from(sorted(world["clients"])), request=requests(world))
    def check(who: str, request: dict[str, Any]) -> None:
        client, headers = world["clients"][who]
        request = {**request, "headers": headers}
        if "data" in request and isinstance(request["data"], dict) and "X-CSRFToken" in headers:
            request["data"] = {**request["data"], "csrf_token": headers["X-CSRFToken"]}
        guarded = request["path"].startswith(("/api", "/admin"))
        role = who.removesuffix("-token")
        sql = world["fingerprint"] if role in ("stranger", "viewer") else world["above_operator"]
        before = state(sql) if guarded and role != "admin" else None
        response = client.open(**request)
        response.close()
        if request["method"] != "GET" and response.status_code < 400:
            accepted.append((who, request["method"], request["path"]))
        # Then never a server error
        assert response.status_code < 500, (who, request, response.status_code, response.get_data()[:300])
        # And nothing above the role: strangers and viewers change nothing, operators no admin's work
        if before is not None:
            assert state(sql) == before, (who, request, response.status_code)
        # The sessions stay usable for the next example (a logout ends a session: log in again)
        if role in ("viewer", "operator", "admin") and who == role and request["path"] == "/admin/logout":
            client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": role, "password": PASSWORD})
            headers["X-CSRFToken"] = csrf_token(client, "/admin/")

    try:
        check()
    finally:
        conn.close()
    # And the examples did reach the actions: operators and admins got changes through
    assert {who.removesuffix("-token") for who, _, _ in accepted} >= {"operator", "admin"}, accepted


CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
ACTIONS = ["retry", "resolve", "toggle", "cancel", "pause", "resume", "delete"]


def arguments(rule, world: dict[str, Any]) -> list[str]:  # type: ignore[no-untyped-def]
    """Paths of ``rule`` with arguments that exist: a dead delivery, the node, the flag, a handler."""
    values = {"delivery_id": world["ids"][0], "key": "max_amount", "node_id": str(world["node"]), "job_id": "1",
              "name": "test.audit" if "/handlers/" in rule.rule else "beta"}

    def fill(match: re.Match[str]) -> str:
        if match.group(1) == "any":
            return match.group(2).split(",")[0].strip()
        return values.get(match.group(3), "1")

    return [ARG.sub(fill, rule.rule)]


def plausible_requests(path: str, method: str, world: dict[str, Any]) -> list[dict[str, Any]]:
    if path.startswith("/api"):
        body = ({"enabled": True} if "/flags/" in path else {"value": 7, "type": "integer"} if "/settings/" in path
                else {"status": "dead"} if path.endswith("/deliveries/retry") else {})
        return [{"path": path, "method": method, "json": body}]
    base = {"confirm": "yes", "name": "fuzzed", "enabled": "y", "description": "d", "key": "fuzzed", "type": "integer",
            "value": "3", "rowid": [world["ids"][0], "beta", "1"]}
    forms = ([{**base, "command": c, "target": t} for c, t in (("pause_relay", ""), ("drain_stop", str(world["node"])))]
             if path.endswith("/control/") else [{**base, "action": a} for a in ACTIONS] if path.endswith("/action/")
             else [base])
    return [{"path": path, "method": method, "data": f, "query_string": {"id": world["ids"][0]}} for f in forms]


@pytest.mark.parametrize("who", ["stranger", "viewer", "viewer-token", "operator", "operator-token"])
def test_every_changing_route_refuses_what_the_role_may_not_do(app, runtime, world, who) -> None:
    # Given every changing route of /api and /admin, with arguments that exist and bodies that would work
    client, headers = world["clients"][who]
    role = who.removesuffix("-token")
    sql = world["fingerprint"] if role in ("stranger", "viewer") else world["above_operator"]
    rules = [(rule, method) for rule in app.url_map.iter_rules() if rule.rule.startswith(("/api", "/admin"))
             and "static" not in rule.endpoint and not rule.rule.endswith(("/login", "/logout"))
             for method in sorted(rule.methods & CHANGING)]
    offenders = []
    with runtime.engine.connect() as conn:
        for rule, method in rules:
            for path in arguments(rule, world):
                for request in plausible_requests(path, method, world):
                    if "data" in request and "X-CSRFToken" in headers:
                        request["data"]["csrf_token"] = headers["X-CSRFToken"]
                    conn.rollback()
                    before = conn.execute(text(sql)).scalar()
                    # When the role sends it
                    response = client.open(headers=headers, **request)
                    response.close()
                    conn.rollback()
                    # Then nothing above the role happened, and nothing failed
                    if conn.execute(text(sql)).scalar() != before or response.status_code >= 500:
                        offenders.append((method, path, request.get("json") or request.get("data"), response.status_code))
    assert offenders == [], "\n".join(f"{m} {p} {(b or {}).get('action') or (b or {}).get('command') or b} -> {s}"
                                       for m, p, b, s in offenders)
