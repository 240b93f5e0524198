"""Replay and backfill (#14) through the CLI, /api and the back office; blocked ordered deliveries
as /api and the back office show them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from services.app import create_app
from shared.cli import main
from shared.delivery import replay
from shared.delivery.relay import Relay
from shared.ops.accounts import create_token, create_user
from shared.testing.pipeline import run_until_idle
from tests.integration.helpers import make_runtime, scalar
from tests.ordered_handlers import TRACKER, Keyed, ordered, replayed, unordered


@pytest.fixture
def runtime(clean_db):
    TRACKER.reset()
    rt = make_runtime(clean_db, handlers=[replayed, unordered, ordered])
    yield rt
    rt.close()
    TRACKER.reset()


@pytest.fixture
def token(runtime):
    with runtime.session_factory() as session:
        user = create_user(session, "ops", "correct horse battery", role="admin")
        session.flush()
        _, secret = create_token(session, user, "tests")
        session.commit()
    return {"Authorization": f"Bearer {secret}"}


def publish(runtime, events) -> None:
    with runtime.unit_of_work() as uow:
        for event in events:
            uow.publish(event)
        uow.commit()


def runs(runtime, handler: str = "replayed") -> Counter[str]:
    with runtime.engine.connect() as conn:
        return Counter(r[0] for r in conn.exec_driver_sql(
            "SELECT event_key FROM test_side_effects WHERE handler = %(h)s", {"h": handler}))


def replay_threads_ended() -> None:
    """Jobs started from /api or the back office run on threads: let them end before the runtime
    closes (a connection they hold would outlive its pool)."""
    import threading

    from tests.integration.helpers import wait_until

    wait_until(lambda: not any(t.name.startswith("ozzy-replay-") for t in threading.enumerate()))


def finish(runtime, job_id: int) -> dict:
    """Run the job in this thread and every message it sent."""
    job = replay.run(runtime, job_id, replay.Throttle(batch_size=7, window=10_000))
    run_until_idle(runtime)
    return job


def test_filters_select_by_time_position_and_aggregate_and_the_dry_run_counts_them(runtime) -> None:
    # Given 10 events of key a then 10 of key b (the aggregate id is the key here)
    publish(runtime, [Keyed(key="a", n=n) for n in range(10)])
    publish(runtime, [Keyed(key="b", n=n) for n in range(10)])
    run_until_idle(runtime)
    with runtime.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE ozzy_outbox SET aggregate_id = payload->>'key',"
                             " occurred_at = now() - interval '1 day' WHERE payload->>'key' = 'a'")
        conn.exec_driver_sql("UPDATE ozzy_outbox SET aggregate_id = payload->>'key'")
        first_b = conn.exec_driver_sql("SELECT min(dispatch_seq) FROM ozzy_outbox WHERE payload->>'key' = 'b'").scalar()
    hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    count = lambda **f: replay.count(runtime, "test.replayed", replay.Filters(**f))["count"]  # noqa: E731
    # Then each filter selects what it says
    assert count() == 20
    assert count(since=hour_ago) == 10 and count(until=hour_ago) == 10
    assert count(aggregate_id="a") == 10
    assert count(from_position=first_b) == 10 and count(from_position=first_b + 5) == 5
    assert replay.count(runtime, "test.replayed", replay.Filters()) == {"count": 20, "again": 20, "backfill": 0}
    with pytest.raises(replay.ReplayError):
        replay.count(runtime, "test.replayed", replay.Filters(), event_type="test.account_opened")
    # When a replay runs for one aggregate, only its events run again, each once
    job = finish(runtime, replay.create(runtime, "test.replayed", replay.Filters(aggregate_id="b")))
    assert job["status"] == "done" and job["sent"] == 10
    assert runs(runtime) == Counter({**{f"a/{n}": 1 for n in range(10)}, **{f"b/{n}": 2 for n in range(10)}})
    # ... and the delivery keeps its earlier outcome in the history
    assert scalar(runtime, "SELECT count(*) FROM ozzy_delivery_history WHERE status = 'done'") == 10


def test_backfill_gives_a_new_handler_the_older_events_and_replays_an_ordered_handler_in_order(runtime) -> None:
    # Given events dispatched while only the unordered handler existed
    before = make_runtime(runtime.config, handlers=[unordered])
    try:
        publish(before, [Keyed(key=k, n=n) for n in range(6) for k in ("x", "y")])
        Relay(before).drain()
    finally:
        before.close()
    assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE handler <> 'test.unordered'") == 0
    # When the ordered handler is backfilled (in batches of 7: keys span batches)
    assert replay.count(runtime, "test.ordered", replay.Filters())["backfill"] == 12
    finish(runtime, replay.create(runtime, "test.ordered", replay.Filters()))
    # Then it ran each event once, each key in dispatch order
    with runtime.engine.connect() as conn:
        order = {k: [r[0] for r in conn.exec_driver_sql(
            "SELECT event_id FROM ozzy_outbox WHERE payload->>'key' = %(k)s ORDER BY dispatch_seq", {"k": k})]
            for k in ("x", "y")}
    assert dict(TRACKER.runs) == order
    # When it is replayed, it runs each once more, still in order per key
    TRACKER.reset()
    finish(runtime, replay.create(runtime, "test.ordered", replay.Filters()))
    assert dict(TRACKER.runs) == order
    assert runs(runtime, "ordered") == Counter({f"{k}/{n}": 2 for n in range(6) for k in ("x", "y")})


def test_the_cli_dry_run_prints_the_count_and_a_run_replays(runtime, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", runtime.config.database_url)
    monkeypatch.setenv("REDIS_URL", runtime.config.redis_url)
    monkeypatch.setenv("OZZY_REDIS_NAMESPACE", runtime.config.redis_namespace)
    monkeypatch.setenv("OZZY_HANDLER_MODULES", '["tests.ordered_handlers"]')
    publish(runtime, [Keyed(key="c", n=n) for n in range(5)])
    run_until_idle(runtime)
    dry = CliRunner().invoke(main, ["replay", "--handler", "test.replayed", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("5 events would be replayed for test.replayed")
    assert scalar(runtime, "SELECT count(*) FROM ozzy_replays") == 0
    unknown = CliRunner().invoke(main, ["replay", "--handler", "nope", "--dry-run"])
    assert unknown.exit_code == 2 and "no handler named 'nope'" in unknown.output
    done = CliRunner().invoke(main, ["replay", "--handler", "test.replayed", "--since", "2000-01-01",
                                     "--window", "100"])
    assert done.exit_code == 0, done.output
    assert "5 deliveries sent" in done.output
    audited = scalar(runtime, "SELECT payload->>'actor' || ' ' || (payload->>'action') FROM ozzy_outbox"
                              " WHERE event_type = 'ozzy.audit'")
    assert audited.startswith("cli:") and audited.endswith(" replay.started")
    run_until_idle(runtime)
    assert runs(runtime) == Counter({f"c/{n}": 2 for n in range(5)})


def test_api_counts_starts_and_shows_replays_and_a_done_delivery_replays_from_its_id(runtime, token) -> None:
    client = create_app(runtime).test_client()
    publish(runtime, [Keyed(key="d", n=n) for n in range(4)])
    run_until_idle(runtime)
    body = {"handler": "test.replayed", "since": "2000-01-01T00:00:00+00:00"}
    counted = client.post("/api/replays", json={**body, "dry_run": True}, headers=token)
    assert counted.status_code == 200 and counted.get_json() == {"count": 4, "again": 4, "backfill": 0}
    assert client.post("/api/replays", json={"handler": "test.replayed", "since": "yesterday"},
                       headers=token).status_code == 400
    assert client.post("/api/replays", json={"handler": "nope"}, headers=token).status_code == 400
    started = client.post("/api/replays", json=body, headers=token)
    assert started.status_code == 202 and started.get_json()["total"] == 4
    job_id = started.get_json()["id"]
    from tests.integration.helpers import wait_until

    wait_until(lambda: client.get(f"/api/replays/{job_id}", headers=token).get_json()["status"] == "done")
    replay_threads_ended()
    run_until_idle(runtime)
    assert runs(runtime) == Counter({f"d/{n}": 2 for n in range(4)})
    assert [j["id"] for j in client.get("/api/replays", headers=token).get_json()["items"]] == [job_id]
    # A done delivery is replayed from its id; its earlier runs are its history
    delivery = scalar(runtime, "SELECT min(id) FROM ozzy_deliveries WHERE handler = 'test.replayed'")
    again = client.post(f"/api/deliveries/{delivery}/replay", headers=token)
    assert again.status_code == 202 and again.get_json()["total"] == 1
    wait_until(lambda: client.get(f"/api/replays/{again.get_json()['id']}", headers=token).get_json()["status"] == "done")
    replay_threads_ended()
    run_until_idle(runtime)
    assert sum(runs(runtime).values()) == 9
    history = client.get(f"/api/deliveries/{delivery}/history", headers=token).get_json()["items"]
    assert [h["status"] for h in history] == ["done", "done"]
    assert client.post("/api/deliveries/999999/replay", headers=token).status_code == 404
    assert client.post("/api/replays", json=body).status_code == 401
    # Both starts are on the audit trail under their own names, with the token that acted
    trail = client.get("/api/audit?action=replay.started", headers=token).get_json()["items"]
    assert [(e["actor"], e["target"], e["details"]["count"]) for e in trail] == [("token:tests", f"replay:{job_id}", 4)]
    replayed = client.get("/api/audit?action=delivery.replayed", headers=token).get_json()["items"]
    assert [(e["target"], e["details"]["handler"]) for e in replayed] == [(str(delivery), "test.replayed")]


def test_a_blocked_delivery_names_its_blocker_in_the_api_and_the_back_office(runtime, token) -> None:
    TRACKER.poison.add(("k", 0))
    publish(runtime, [Keyed(key="k", n=n) for n in range(2)])
    run_until_idle(runtime, raise_errors=False)
    dead = scalar(runtime, "SELECT id FROM ozzy_deliveries WHERE status = 'dead'")
    blocked = scalar(runtime, "SELECT id FROM ozzy_deliveries WHERE status = 'blocked'")
    app = create_app(runtime)
    client = app.test_client()
    items = client.get("/api/deliveries?status=blocked", headers=token).get_json()["items"]
    assert [(d["id"], d["blocked_by"], d["order_key"]) for d in items] == [(blocked, dead, "k")]
    # The back office: the blocked delivery's page names the dead one; a done delivery can be replayed
    from tests.integration.test_back_office import csrf_token, https_client

    office = https_client(app)
    office.post("/admin/login", data={"csrf_token": csrf_token(office), "username": "ops",
                                      "password": "correct horse battery"})
    page = office.get(f"/admin/deliveries/details/?id={blocked}").get_data(as_text=True)
    assert 'id="blocked-by"' in page and f"delivery {dead}" in page
    assert 'id="replay-delivery"' not in page
    dead_page = office.get(f"/admin/deliveries/details/?id={dead}").get_data(as_text=True)
    assert 'id="replay-delivery"' in dead_page
    # The replay page: a count first, then the start
    form = {"csrf_token": csrf_token(office, "/admin/replays/"), "handler": "test.unordered", "since": "",
            "until": "", "from_position": "", "aggregate_id": ""}
    confirm = office.post("/admin/replays/confirm/", data=form).get_data(as_text=True)
    assert 'id="replay-confirm-count"><strong>2</strong>' in confirm
    office.post("/admin/replays/start/", data=form)  # no confirmed count: nothing starts
    assert scalar(runtime, "SELECT count(*) FROM ozzy_replays") == 0
    started = office.post("/admin/replays/start/", data={**form, "confirmed_count": "2"}, follow_redirects=True)
    assert "started over 2 events" in started.get_data(as_text=True)
    # (its thread is done before the runtime closes)
    from tests.integration.helpers import wait_until

    wait_until(lambda: scalar(runtime, "SELECT count(*) FROM ozzy_replays WHERE status = 'done'") == 1)
    replay_threads_ended()
