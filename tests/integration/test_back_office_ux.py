"""The back office's everyday use (issue #13, item 5), through Flask's test client on the real
PostgreSQL: confirmations that name what they touch (and a server that acts only on ``confirm=yes``),
links between ids, status badges, short ids, compact timestamps, default sorting, plain words and
the live node count."""

from __future__ import annotations

import html as htmllib
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import text

from tests.integration.helpers import scalar

# Fixtures and helpers of the back office tests (pytest finds fixtures imported here).
from tests.integration.test_back_office import (  # noqa: F401
    add_node,
    app,
    control_events,
    csrf_token,
    listed_rowids,
    logged_in,
    operator,
    post_control,
    runtime,
    seed_delivery,
    seed_mixed,
    setting_values,
    write_event,
)

BADGE_OF = {"done": "success", "pending": "warning", "retrying": "warning", "dead": "danger", "resolved": "secondary",
            "running": "primary", "completed": "success", "scheduled": "info", "fired": "success",
            "cancelled": "secondary"}


def page(client, path: str, **params) -> str:  # type: ignore[no-untyped-def]
    response = client.get(path, query_string=params or None)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def cells(html: str, column: str) -> list[str]:
    """The inner HTML of a list's cells of one column, top to bottom."""
    return re.findall(rf'<td class="col-{re.escape(column)}">(.*?)</td>', html, re.S)


def hrefs(fragment: str) -> list[str]:
    return [htmllib.unescape(h) for h in re.findall(r'href="([^"]+)"', fragment)]


def times(html: str, column: str) -> list[datetime]:
    """The moments a list's column shows (the ``datetime`` attribute of each compact timestamp)."""
    return [datetime.fromisoformat(m) for c in cells(html, column) for m in re.findall(r'datetime="([^"]+)"', c)]


def node_row(runtime, kind: str, host: str, pid: int, *, stopped: bool = False, seconds_ago: float = 0) -> uuid.UUID:
    node_id = uuid.uuid4()
    with runtime.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO ozzy_nodes (id, kind, host, pid, version, heartbeat_at, stopped_at)"
            " VALUES (:i, :k, :h, :p, 't', now() - make_interval(secs => :ago),"
            " CASE WHEN :stopped THEN now() ELSE NULL END)"),
            {"i": node_id, "k": kind, "h": host, "p": pid, "ago": seconds_ago, "stopped": stopped})
    return node_id


def outbox_rows(runtime) -> int:
    return scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'")


# --- confirmations ------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "target"), [("pause_handler", "test.audit"), ("resume_handler", "test.audit"),
                                                 ("pause_relay", None), ("resume_relay", None),
                                                 ("drain_stop", "node")])
@pytest.mark.parametrize("confirm", [None, "", "no", "YES"], ids=["absent", "empty", "no", "upper"])
def test_a_csrf_valid_but_unconfirmed_control_post_changes_nothing(logged_in, runtime, command, target, confirm) -> None:
    # Given a running node and an operator with a valid CSRF token
    node_id = node_row(runtime, "worker", "host-7", 4242)
    token = csrf_token(logged_in, "/admin/")
    # When a control command is posted without confirm=yes
    response = post_control(logged_in, command, str(node_id) if target == "node" else target, token, confirm=confirm)
    # Then the answer is a page asking for the confirmation, and nothing was recorded or changed
    assert response.status_code == 200
    assert 'id="control-question"' in response.get_data(as_text=True)
    assert outbox_rows(runtime) == 0 and control_events(runtime) == []
    assert setting_values(runtime) == {}
    assert scalar(runtime, "SELECT stopped_at FROM ozzy_nodes WHERE id = :i", i=node_id) is None


def test_the_confirmation_page_names_the_node_and_its_form_sends_the_command(logged_in, runtime) -> None:
    # Given a running worker
    node_id = node_row(runtime, "worker", "host-7", 4242)
    token = csrf_token(logged_in, "/admin/")
    # When "drain and stop" is posted unconfirmed (a browser without JavaScript)
    asked = post_control(logged_in, "drain_stop", str(node_id), token, confirm=None).get_data(as_text=True)
    # Then the page names the node by kind, host and pid, not by its id
    question = re.search(r'<p id="control-question">(.*?)</p>', asked, re.S).group(1)
    assert "worker on host-7 (pid 4242)" in question and str(node_id) not in question
    # And its form carries confirm=yes; posting it records the command for that node
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"/>', asked))
    assert form["confirm"] == "yes" and form["command"] == "drain_stop" and form["target"] == str(node_id)
    done = logged_in.post("/admin/control/", data=form)
    assert done.status_code == 302
    assert control_events(runtime) == [({"command": "drain_stop", "target": str(node_id)}, "user:ops")]
    flashed = page(logged_in, "/admin/")
    assert "drain and stop the worker on host-7 (pid 4242)" in flashed


def test_drain_and_stop_of_an_unknown_node_is_refused(logged_in, runtime) -> None:
    token = csrf_token(logged_in, "/admin/")
    for target in (str(uuid.uuid4()), "not-a-node", None):
        assert post_control(logged_in, "drain_stop", target, token).status_code == 400
    assert outbox_rows(runtime) == 0


def test_every_dashboard_control_button_asks_a_question_naming_its_target(logged_in, runtime) -> None:
    # Given a running worker
    node_id = node_row(runtime, "worker", "host-7", 4242)
    # When the operator opens the dashboard
    html = page(logged_in, "/admin/")
    buttons = re.findall(r'<button [^>]*data-command="([^"]+)" data-target="([^"]*)" data-confirm="([^"]+)"', html)
    asked = {(c, t): htmllib.unescape(q) for c, t, q in buttons}
    # Then every control form starts unconfirmed, and each button asks first
    forms = re.findall(r'<form class="d-inline" method="post" action="/admin/control/">(.*?)</form>', html, re.S)
    assert forms and len(forms) == len(buttons)
    assert all('<input type="hidden" name="confirm" value=""/>' in f for f in forms)
    # naming the node by kind, host and pid (not its id), the handler, or the relays
    drain = asked[("drain_stop", str(node_id))]
    assert "worker on host-7 (pid 4242)" in drain and str(node_id) not in drain
    assert "test.audit" in asked[("pause_handler", "test.audit")]
    assert "relay" in asked[("pause_relay", "")]


def test_list_actions_and_retry_all_matching_say_what_they_touch(logged_in, runtime) -> None:
    seed_mixed(runtime)
    # The selected-rows actions' confirmations carry the number selected ({n}, filled in by the page)
    for path, name in [("/admin/deliveries/", "retry"), ("/admin/deliveries/", "resolve"),
                       ("/admin/deadletters/", "resolve"), ("/admin/scheduled/", "cancel"),
                       ("/admin/recurring/", "pause")]:
        html = page(logged_in, path)
        messages = json.loads(htmllib.unescape(
            re.search(r'<div id="actions-confirmation-data" class="d-none">(.*?)</div>', html, re.S).group(1)))
        assert "{n} selected" in messages[name], (path, messages)
    # Retry all matching names the filter and counts the rows
    confirm = page(logged_in, "/admin/deadletters/retry-matching/", flt0_handler_equals="test.audit")
    assert "Handler equals test.audit" in confirm and "2 deliveries match" in confirm


# --- links between ids --------------------------------------------------------------------------


def test_an_events_details_link_to_its_deliveries_and_each_delivery_back_to_its_event(logged_in, runtime) -> None:
    # Given deliveries of several events
    seeded = seed_mixed(runtime)
    one = next(i for i, r in seeded.items() if r["handler"] == "test.audit" and r["status"] == "pending")
    event_uuid = scalar(runtime, "SELECT event_id FROM ozzy_deliveries WHERE id = :i", i=one)
    event_pk = scalar(runtime, "SELECT id FROM ozzy_outbox WHERE event_id = :e", e=event_uuid)
    # When the operator opens the event's details and follows "its deliveries"
    details = page(logged_in, "/admin/events/details/", id=event_pk)
    link = hrefs(re.search(r'<a class="small" id="all-deliveries-link" href="[^"]+"', details).group(0))[0]
    assert urlsplit(link).path == "/admin/deliveries/"
    assert parse_qs(urlsplit(link).query) == {"flt0_event_id_equals": [str(event_uuid)]}
    # Then the deliveries list shows exactly that event's deliveries
    assert listed_rowids(page(logged_in, link)) == {one}
    # And in the deliveries list, each delivery's event id links to its event's details
    listed = page(logged_in, "/admin/deliveries/")
    for cell in cells(listed, "event_id"):
        full = re.search(r'title="([0-9a-f-]{36})"', cell).group(1)
        pk = scalar(runtime, "SELECT id FROM ozzy_outbox WHERE event_id = :e", e=uuid.UUID(full))
        assert f"/admin/events/details/?id={pk}" in hrefs(cell)
    # And so does the delivery's own details page
    delivery = page(logged_in, "/admin/deliveries/details/", id=one)
    assert f"/admin/events/details/?id={event_pk}" in hrefs(delivery)


def test_an_invalid_event_id_filter_is_ignored_not_an_error(logged_in, runtime) -> None:
    seeded = seed_mixed(runtime)
    html = page(logged_in, "/admin/deliveries/", flt0_event_id_equals="' OR 1=1 --")
    assert listed_rowids(html) == set(seeded)
    assert page(logged_in, "/admin/events/", flt0_correlation_id_equals="nope")


def test_correlation_and_causation_ids_link_to_the_conversation_and_the_cause(logged_in, runtime) -> None:
    # Given a conversation of two events (the second caused by the first) and an unrelated event
    first, second, other = (write_event(runtime, "test.account_opened") for _ in range(3))
    conversation = uuid.uuid4()
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE ozzy_outbox SET correlation_id = :c WHERE event_id IN (:a, :b)"),
                     {"c": conversation, "a": first, "b": second})
        conn.execute(text("UPDATE ozzy_outbox SET causation_id = :a WHERE event_id = :b"), {"a": first, "b": second})
        conn.execute(text("UPDATE ozzy_outbox SET correlation_id = :c WHERE event_id = :o"),
                     {"c": uuid.uuid4(), "o": other})
    pk = {e: scalar(runtime, "SELECT id FROM ozzy_outbox WHERE event_id = :e", e=e) for e in (first, second, other)}
    # When the operator reads the event log
    listed = page(logged_in, "/admin/events/")
    # Then each correlation id is short, with the full id in its title, and links to the log filtered by it
    link = f"/admin/events/?flt0_correlation_id_equals={conversation}"
    linked = [c for c in cells(listed, "correlation_id") if link in hrefs(c)]
    assert len(linked) == 2
    assert f'<code class="short-id" title="{conversation}">…{str(conversation)[-8:]}</code>' in linked[0]
    # And the filtered log shows exactly the conversation
    filtered = page(logged_in, link)
    shown = {int(i) for i in re.findall(r'<td class="col-id">\s*(\d+)\s*</td>', filtered)}
    assert shown == {pk[first], pk[second]}
    # And the second event's details link its cause and its conversation
    details = page(logged_in, "/admin/events/details/", id=pk[second])
    assert f"/admin/events/details/?id={pk[first]}" in hrefs(details)
    assert link in hrefs(details)


def test_a_sagas_history_links_each_step_to_its_event(logged_in, runtime) -> None:
    # Given a saga instance whose first step handled an event in the log
    event = write_event(runtime, "test.account_opened")
    event_pk = scalar(runtime, "SELECT id FROM ozzy_outbox WHERE event_id = :e", e=event)
    with runtime.engine.begin() as conn:
        conn.execute(text("INSERT INTO ozzy_sagas (saga_type, instance_key, status, steps, version, started_at,"
                          " updated_at) VALUES ('test.onboarding', 'k1', 'running', 1, 1, now(), now())"))
        conn.execute(text("INSERT INTO ozzy_saga_steps (saga_type, instance_key, seq, step, event_id, event_type,"
                          " status, at) VALUES ('test.onboarding', 'k1', 1, 'opened', :e, 'test.account_opened',"
                          " 'running', now())"), {"e": event})
    # When the operator opens the instance
    listed = page(logged_in, "/admin/sagas/")
    details_link = next(h for h in hrefs(listed) if h.startswith("/admin/sagas/details/"))
    details = page(logged_in, details_link)
    # Then the step's event links to the event's details
    history = re.search(r'<table class="table table-sm" id="saga-history">(.*?)</table>', details, re.S).group(1)
    assert f"/admin/events/details/?id={event_pk}" in hrefs(history)


# --- badges, short ids, compact timestamps -------------------------------------------------------


def test_delivery_statuses_are_coloured_badges(logged_in, runtime) -> None:
    seed_mixed(runtime)
    seed_delivery(runtime, "test.welcome", "resolved")
    html = page(logged_in, "/admin/deliveries/")
    shown = [re.search(r'<span class="badge badge-(\w+) status-(\w+)">(\w+)</span>', c).groups() for c in cells(html, "status")]
    assert {status for _, status, _ in shown} == {"done", "pending", "retrying", "dead", "resolved"}
    assert all(colour == BADGE_OF[status] and text_ == status for colour, status, text_ in shown)


def test_saga_and_scheduled_statuses_are_badges(logged_in, runtime) -> None:
    with runtime.engine.begin() as conn:
        for key, status in (("a", "running"), ("b", "completed")):
            conn.execute(text("INSERT INTO ozzy_sagas (saga_type, instance_key, status, steps, version, started_at,"
                              " updated_at) VALUES ('t', :k, :s, 0, 1, now(), now())"), {"k": key, "s": status})
        for status in ("scheduled", "fired", "cancelled"):
            conn.execute(text("INSERT INTO ozzy_scheduled (event_id, event_type, event_version, payload, metadata,"
                              " due_at, status) VALUES (:e, 'test.x', 1, '{}', '{}', now(), :s)"),
                         {"e": uuid.uuid4(), "s": status})
    for path, statuses in (("/admin/sagas/", {"running", "completed"}),
                           ("/admin/scheduled/", {"scheduled", "fired", "cancelled"})):
        shown = {re.search(r'badge-(\w+) status-(\w+)', c).groups() for c in cells(page(logged_in, path), "status")}
        assert shown == {(BADGE_OF[s], s) for s in statuses}, path


def test_ids_are_short_with_a_copy_button_and_list_times_are_compact(logged_in, runtime) -> None:
    seed_mixed(runtime)
    html = page(logged_in, "/admin/deliveries/")
    for cell in cells(html, "event_id"):
        full = re.search(r'<code class="short-id" title="([0-9a-f-]{36})">…([0-9a-f]{8})</code>', cell)
        assert full and full.group(1).endswith(full.group(2))
        assert f'data-copy="{full.group(1)}"' in cell and "copy-id" in cell
    # Compact timestamps: seconds, no microseconds, no "T" or offset in the visible text
    shown = [re.sub(r"<[^>]+>", "", c).strip() for c in cells(html, "enqueued_at")]
    assert shown and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", s) for s in shown), shown
    events = page(logged_in, "/admin/events/")
    occurred = [re.sub(r"<[^>]+>", "", c).strip() for c in cells(events, "occurred_at")]
    assert occurred and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", s) for s in occurred), occurred


# --- default sorting ----------------------------------------------------------------------------


def test_every_list_is_sorted_newest_first_by_default(logged_in, runtime) -> None:
    # Given rows written over time in each list
    seeded = seed_mixed(runtime)
    now = datetime.now(timezone.utc)
    with runtime.engine.begin() as conn:
        for i, status in enumerate(("running", "completed", "running")):
            conn.execute(text("INSERT INTO ozzy_sagas (saga_type, instance_key, status, steps, version, started_at,"
                              " updated_at) VALUES ('t', :k, :s, 0, 1, :at, :at)"),
                         {"k": f"k{i}", "s": status, "at": now - timedelta(minutes=10 * (i % 2) + i)})
        for minutes in (5, -30, 60):
            conn.execute(text("INSERT INTO ozzy_scheduled (event_id, event_type, event_version, payload, metadata,"
                              " due_at) VALUES (:e, 'test.x', 1, '{}', '{}', :due)"),
                         {"e": uuid.uuid4(), "due": now + timedelta(minutes=minutes)})
    for kind, ago in (("worker", 30), ("relay", 2), ("web", 12)):
        node_row(runtime, kind, "h", 1, seconds_ago=ago)
    # Then events and deliveries list the newest id first
    events = [int(i) for i in re.findall(r'<td class="col-id">\s*(\d+)\s*</td>', page(logged_in, "/admin/events/"))]
    assert len(events) == len(seeded) + 1 and events == sorted(events, reverse=True)  # + the login's audit event
    deliveries = [int(i) for i in re.findall(r'<td class="col-id">\s*(\d+)\s*</td>', page(logged_in, "/admin/deliveries/"))]
    assert deliveries == sorted(seeded, reverse=True)
    dead = [int(i) for i in re.findall(r'<td class="col-id">\s*(\d+)\s*</td>', page(logged_in, "/admin/deadletters/"))]
    assert dead == sorted((i for i, r in seeded.items() if r["status"] == "dead"), reverse=True)
    # Sagas by last change, nodes by last heartbeat, scheduled events by due time: latest first
    for path, column in (("/admin/sagas/", "updated_at"), ("/admin/nodes/", "heartbeat_at"),
                         ("/admin/scheduled/", "due_at")):
        shown = times(page(logged_in, path), column)
        assert len(shown) == 3 and shown == sorted(shown, reverse=True), (path, shown)


# --- the dashboard's words and node count --------------------------------------------------------


def test_the_dashboard_counts_only_live_nodes_in_plain_words(logged_in, runtime) -> None:
    # Given a live relay, a live worker and a worker that stopped (all seen in the last minute)
    node_row(runtime, "relay", "host-1", 10)
    node_row(runtime, "worker", "host-1", 11)
    stopped = node_row(runtime, "worker", "host-2", 12, stopped=True)
    # When the operator opens the dashboard
    html = page(logged_in, "/admin/")
    # Then it counts the two live nodes, by kind, in the singular where it is one
    assert re.search(r'<div class="h3 mb-0" id="live-nodes">2</div>', html)
    by_kind = re.search(r'<div class="small" id="live-nodes-by-kind">(.*?)</div>', html).group(1)
    assert by_kind == "1 relay, 1 worker"
    # And the fast channel speaks of one relay and of wake-ups by commits, not "drains by notification"
    detail = re.search(r'<div class="small" id="fast-channel-detail">(.*?)</div>', html, re.S).group(1)
    assert detail.startswith("1 relay ·") and "woken by commits" in detail
    assert "relays" not in detail and "notification" not in html
    # And the stopped node is listed as stopped, without a drain button
    assert f'data-target="{stopped}"' not in html and "badge-secondary\">stopped" in html
