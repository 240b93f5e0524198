"""A cluster-wide listener that raises: it tries the same event again with backoff and never skips
it; after its last try it stops, shows as failed in ``/api/status`` and the back office, and an
operator retries it or skips that one event."""

from __future__ import annotations

import uuid

import pytest

from services.app import create_app
from shared.cluster.listeners import listener
from shared.cluster.nodes import Node
from shared.cluster.reader import ClusterListener
from shared.delivery.relay import Relay
from shared.ops.accounts import create_token, create_user
from tests.domain import AccountOpened
from tests.integration.helpers import make_runtime, wait_until


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=[], listener_max_attempts=3, listener_min_backoff=0.05,
                      listener_max_backoff=0.2, poll_interval=0.2)
    yield rt
    rt.close()


def open_accounts(runtime, owners: list[str]) -> None:
    with runtime.unit_of_work() as uow:
        for owner in owners:
            uow.publish(AccountOpened(account_id=uuid.uuid4(), owner=owner))
        uow.commit()
    Relay(runtime).drain()


class Flaky:
    """Records what it saw, in order; raises on the owner ``bad`` while ``failures_left`` lasts."""

    def __init__(self, failures: int) -> None:
        self.failures_left = failures
        self.seen: list[str] = []
        self.tries = 0

    def __call__(self, event: AccountOpened) -> None:
        if event.owner == "bad":
            self.tries += 1
            if self.failures_left:
                self.failures_left -= 1
                raise RuntimeError("listener bug")
        self.seen.append(event.owner)


def start_reader(runtime, *specs, node_id: str | None = None) -> ClusterListener:
    reader = ClusterListener(runtime.engine, runtime.redis, runtime.config, "test-node", specs, node_id=node_id)
    reader.start()
    assert reader.ready.wait(10)
    return reader


def test_a_failing_listener_retries_the_same_event_and_never_skips_it(runtime) -> None:
    # Given a listener that fails twice on one event (within its three tries) and one that never fails
    flaky, steady = Flaky(failures=2), Flaky(failures=0)
    reader = start_reader(runtime, listener(flaky, AccountOpened, name="test.flaky"),
                          listener(steady, AccountOpened, name="test.steady"))
    try:
        # When events before and after the bad one are dispatched
        open_accounts(runtime, ["a", "b", "bad", "c", "d"])
        # Then the flaky one gets everything in order, the bad event once it works, after three tries
        wait_until(lambda: flaky.seen == ["a", "b", "bad", "c", "d"], 20)
        assert flaky.tries == 3
        assert steady.seen == ["a", "b", "bad", "c", "d"]
        assert reader.failures == {}
    finally:
        reader.stop()


def test_out_of_tries_it_stops_and_the_others_go_on(runtime) -> None:
    flaky, steady = Flaky(failures=100), Flaky(failures=0)
    reader = start_reader(runtime, listener(flaky, AccountOpened, name="test.flaky"),
                          listener(steady, AccountOpened, name="test.steady"))
    try:
        open_accounts(runtime, ["a", "bad", "c"])
        wait_until(lambda: "test.flaky" in reader.failures and reader.failures["test.flaky"].failed, 20)
        open_accounts(runtime, ["d"])
        wait_until(lambda: steady.seen == ["a", "bad", "c", "d"], 20)
        # It stopped after its three tries, before "c": nothing after the bad event reached it
        failure = reader.status()["failures"]["test.flaky"]
        assert failure["attempts"] == 3 and failure["failed"] and failure["event_type"] == "test.account_opened"
        assert failure["error"] == "RuntimeError: listener bug"
        reader.catch_up()
        assert flaky.seen == ["a"] and flaky.tries == 3
        # When an operator retries it (the bug being fixed), it resumes on the bad event, in order
        flaky.failures_left = 0
        assert reader.retry("test.flaky")
        wait_until(lambda: flaky.seen == ["a", "bad", "c", "d"], 20)
        assert reader.failures == {}
    finally:
        reader.stop()


@pytest.fixture
def api(runtime):
    app = create_app(runtime)
    with runtime.session_factory() as session:
        user = create_user(session, "ops", "correct horse battery")
        session.flush()
        _, secret = create_token(session, user, "t")
        session.commit()
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client


def test_an_operator_sees_it_failed_in_the_status_and_skips_the_event_through_the_api(runtime, api) -> None:
    # Given a node whose listener stopped on an event
    flaky = Flaky(failures=100)
    node = Node(runtime.engine, "worker")
    reader = start_reader(runtime, listener(flaky, AccountOpened, name="test.flaky"), node_id=str(node.id))
    node._info = lambda: {"listeners": reader.status()}
    try:
        open_accounts(runtime, ["a", "bad", "c"])
        wait_until(lambda: "test.flaky" in reader.failures and reader.failures["test.flaky"].failed, 20)
        node.heartbeat()
        # Then /api/status shows it failed, with the event and where
        stuck = api.get("/api/status").get_json()["listener_failures"]
        assert len(stuck) == 1 and stuck[0]["listener"] == "test.flaky" and stuck[0]["failed"]
        assert stuck[0]["node"] == str(node.id) and stuck[0]["attempts"] == 3
        position = stuck[0]["position"]
        # ... and the back office lists it
        # When an operator skips it at another position, or an unknown listener, nothing is sent
        assert api.post("/api/listeners/test.flaky/skip", json={"position": position + 1}).status_code == 404
        assert api.post("/api/listeners/test.nope/retry").status_code == 404
        assert api.post("/api/listeners/test.flaky/skip", json={}).status_code == 400
        # When the operator skips that event
        response = api.post("/api/listeners/test.flaky/skip", json={"position": position, "node": str(node.id)})
        assert response.status_code == 202, response.get_json()
        Relay(runtime).drain()  # the command travels through the log
        # Then the listener goes on after it, and never ran on it
        wait_until(lambda: flaky.seen == ["a", "c"], 20)
        assert "test.flaky" not in reader.failures
        node.heartbeat()
        assert api.get("/api/status").get_json()["listener_failures"] == []
    finally:
        reader.stop()


def test_retry_through_the_api_resumes_the_listener(runtime, api) -> None:
    flaky = Flaky(failures=100)
    node = Node(runtime.engine, "worker")
    reader = start_reader(runtime, listener(flaky, AccountOpened, name="test.flaky"), node_id=str(node.id))
    node._info = lambda: {"listeners": reader.status()}
    try:
        open_accounts(runtime, ["a", "bad", "c"])
        wait_until(lambda: "test.flaky" in reader.failures and reader.failures["test.flaky"].failed, 20)
        node.heartbeat()
        flaky.failures_left = 0  # the fix is deployed
        assert api.post("/api/listeners/test.flaky/retry").status_code == 202
        Relay(runtime).drain()
        wait_until(lambda: flaky.seen == ["a", "bad", "c"], 20)
    finally:
        reader.stop()


def test_the_back_office_and_the_cli_show_it_and_the_back_office_retries_it(runtime, monkeypatch) -> None:
    import json

    from click.testing import CliRunner

    from shared.cli import main
    from tests.integration.test_back_office import csrf_token, https_client

    # Given a node whose listener stopped on an event, and a logged-in operator
    flaky = Flaky(failures=100)
    node = Node(runtime.engine, "worker")
    reader = start_reader(runtime, listener(flaky, AccountOpened, name="test.flaky"), node_id=str(node.id))
    node._info = lambda: {"listeners": reader.status()}
    app = create_app(runtime)
    with runtime.session_factory() as session:
        create_user(session, "ops", "correct horse battery")
        session.commit()
    client = https_client(app)
    client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": "ops",
                                      "password": "correct horse battery"})
    try:
        open_accounts(runtime, ["a", "bad", "c"])
        wait_until(lambda: "test.flaky" in reader.failures and reader.failures["test.flaky"].failed, 20)
        node.heartbeat()
        position = reader.failures["test.flaky"].position
        # Then the dashboard warns and links to the listeners page, which names it as failed
        dashboard = client.get("/admin/").get_data(as_text=True)
        assert 'id="listener-failures"' in dashboard and "test.flaky" in dashboard
        page = client.get("/admin/listeners/").get_data(as_text=True)
        assert "test.flaky" in page and "failed" in page and str(position) in page
        # ... and so does the CLI
        monkeypatch.setenv("DATABASE_URL", runtime.config.database_url)
        monkeypatch.setenv("REDIS_URL", runtime.config.redis_url)
        monkeypatch.setenv("OZZY_REDIS_NAMESPACE", runtime.config.redis_namespace)
        listed = CliRunner().invoke(main, ["listeners", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        [row] = json.loads(listed.output)
        assert row["listener"] == "test.flaky" and row["state"] == "failed" and row["position"] == position
        assert CliRunner().invoke(main, ["listeners", "skip", "test.flaky", "--position", str(position + 1)]).exit_code == 1
        # When the operator retries it from the back office (it asks first)
        flaky.failures_left = 0
        form = {"csrf_token": csrf_token(client, "/admin/listeners/"), "verb": "retry", "listener": "test.flaky",
                "node": str(node.id), "position": str(position)}
        asked = client.post("/admin/listeners/command/", data=form).get_data(as_text=True)
        assert 'id="confirm-listener"' in asked
        assert client.post("/admin/listeners/command/", data={**form, "confirm": "yes"}).status_code == 302
        Relay(runtime).drain()
        # Then it runs on the event, and on the ones after it
        wait_until(lambda: flaky.seen == ["a", "bad", "c"], 20)
    finally:
        reader.stop()
