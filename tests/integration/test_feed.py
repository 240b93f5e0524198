"""``GET /api/feed``: the log in dispatch order; a follower misses nothing that commits late, sees
nothing twice, and a long-poll returns as soon as something new is dispatched."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from services.app import create_app
from shared.delivery.relay import Relay
from shared.model.stored import to_stored
from shared.ops.accounts import create_token, create_user
from shared.outbox.write import write_events
from tests.domain import AccountOpened, Currency, Deposited, Money
from tests.integration.helpers import make_runtime, scalar

FIELDS = {"position", "event_id", "type", "version", "aggregate_id", "occurred_at", "payload", "metadata"}


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=[])
    yield rt
    rt.close()


@pytest.fixture
def client(runtime):
    app = create_app(runtime)
    with runtime.session_factory() as session:
        user = create_user(session, "feeder", "correct horse battery")
        session.flush()
        _, secret = create_token(session, user, "feed")
        session.commit()
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    yield c
    waiter = app.extensions.get("ozzy_feed_waiter")
    if waiter is not None:
        waiter.stop()


def write(runtime, events) -> list[str]:  # type: ignore[no-untyped-def]
    stored = [to_stored(e, aggregate_id=str(getattr(e, "account_id", ""))) for e in events]
    with runtime.session_factory() as session, session.begin():
        write_events(session, stored)
    return [str(s.event_id) for s in stored]


def opened(n: int) -> list[AccountOpened]:
    return [AccountOpened(account_id=uuid.uuid4(), owner=f"o{i}") for i in range(n)]


def test_a_page_has_the_documented_shape_and_cursor(runtime, client) -> None:
    # Given three dispatched events
    ids = write(runtime, opened(3))
    Relay(runtime).drain()
    # When the feed is read from the start, two at a time
    first = client.get("/api/feed?after=0&limit=2").get_json()
    second = client.get(f"/api/feed?after={first['next_after']}&limit=2").get_json()
    # Then the pages hold the events once each, in dispatch order, with exactly the documented fields
    assert set(first) == {"items", "next_after"}
    items = first["items"] + second["items"]
    assert [i["event_id"] for i in items] == ids
    assert all(set(i) == FIELDS for i in items)
    assert [i["position"] for i in items] == sorted(i["position"] for i in items)
    assert items[0]["type"] == "test.account_opened" and items[0]["version"] == 1
    assert items[0]["payload"]["owner"] == "o0" and "correlation_id" in items[0]["metadata"]
    assert second["next_after"] == items[-1]["position"]
    # ... and past the end, an empty page keeps the cursor
    assert client.get(f"/api/feed?after={second['next_after']}").get_json() == {"items": [],
                                                                                "next_after": second["next_after"]}


def test_types_filter_and_the_cursor_moves_past_other_types(runtime, client) -> None:
    deposit = Deposited(account_id=uuid.uuid4(), money=Money(amount=Decimal("5"), currency=Currency.EUR),
                        at=datetime.now(timezone.utc))
    write(runtime, opened(2) + [deposit] + opened(2))
    Relay(runtime).drain()
    page = client.get("/api/feed?types=test.deposited").get_json()
    assert [i["type"] for i in page["items"]] == ["test.deposited"]
    assert page["next_after"] == scalar(runtime, "SELECT max(dispatch_seq) FROM ozzy_outbox")


def test_bad_parameters_are_400(client) -> None:
    for query in ["after=-1", "after=x", "limit=0", "limit=501", "wait=31", "wait=nan", "wait=inf", "wait=x"]:
        response = client.get(f"/api/feed?{query}")
        assert response.status_code == 400, (query, response.get_data(as_text=True))
        assert response.get_json()["error"]["code"] == "bad_request"


def test_the_feed_needs_authentication(runtime) -> None:
    assert create_app(runtime).test_client().get("/api/feed").status_code == 401


def test_a_late_commit_with_a_lower_id_is_not_skipped(runtime, client) -> None:
    # Given a transaction that wrote an event (a lower id) and has not committed yet
    session = runtime.session_factory()
    session.begin()
    late = to_stored(opened(1)[0])
    write_events(session, [late])
    # ... while a later one (a higher id) commits and is dispatched and read
    early = write(runtime, opened(1))
    Relay(runtime).drain()
    page = client.get("/api/feed").get_json()
    assert [i["event_id"] for i in page["items"]] == early
    # When the first transaction commits at last and is dispatched
    session.commit()
    session.close()
    Relay(runtime).drain()
    # Then following the cursor finds it
    after = client.get(f"/api/feed?after={page['next_after']}").get_json()
    assert [i["event_id"] for i in after["items"]] == [str(late.event_id)]
    assert scalar(runtime, "SELECT id FROM ozzy_outbox WHERE event_id = :e", e=late.event_id) < scalar(
        runtime, "SELECT id FROM ozzy_outbox WHERE event_id = :e", e=early[0])


def test_a_follower_misses_nothing_and_sees_nothing_twice_while_rows_commit_out_of_order(runtime, client) -> None:
    # Given writers whose transactions stay open a random while (so ids commit out of order),
    # two relays dispatching, and a client following the feed with long-polls
    relays = [Relay(runtime), Relay(runtime)]
    for r in relays:
        r.start()
    written: list[str] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(25):
            session = runtime.session_factory()
            with session.begin():
                stored = [to_stored(e) for e in opened(rng.randrange(1, 6))]
                write_events(session, stored)
                time.sleep(rng.random() * 0.03)  # hold the transaction: later ids may commit first
            session.close()
            with lock:
                written.extend(str(s.event_id) for s in stored)
            runtime.wake_relays()

    seen: list[dict] = []
    done = threading.Event()

    def follower() -> None:
        after = 0
        while True:
            finished = done.is_set()
            page = client.get(f"/api/feed?after={after}&limit=37&wait=0.5").get_json()
            seen.extend(page["items"])
            after = page["next_after"]
            if finished and not page["items"]:
                return

    writers = [threading.Thread(target=writer, args=(s,)) for s in range(6)]
    reader = threading.Thread(target=follower)
    try:
        reader.start()
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        deadline = time.monotonic() + 30
        while scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatch_seq IS NULL") and time.monotonic() < deadline:
            time.sleep(0.05)
        done.set()
        reader.join(60)
    finally:
        for r in relays:
            r.stop()
    # Then it saw every event exactly once, in increasing positions
    ids = [i["event_id"] for i in seen]
    assert len(ids) == len(set(ids)), "an event was seen twice"
    assert set(ids) == set(written) and len(written) > 300
    positions = [i["position"] for i in seen]
    assert positions == sorted(positions)
    # ... and the commits really did come out of id order
    out_of_order = scalar(runtime, """SELECT count(*) FROM (SELECT id, lag(id) OVER (ORDER BY dispatch_seq) AS prev
                                       FROM ozzy_outbox) t WHERE id < prev""")
    assert out_of_order > 0


def test_a_long_poll_returns_as_soon_as_an_event_is_dispatched(runtime, client) -> None:
    # Given a relay and a long-poll waiting past the end of the log
    relay = Relay(runtime)
    relay.start()
    try:
        result: dict = {}

        def poll() -> None:
            started = time.monotonic()
            result["page"] = client.get("/api/feed?after=0&wait=20").get_json()
            result["took"] = time.monotonic() - started

        waiting = threading.Thread(target=poll)
        waiting.start()
        time.sleep(1.0)
        assert "page" not in result  # it waits
        # When an event is written and dispatched
        ids = write(runtime, opened(1))
        runtime.wake_relays()
        waiting.join(25)
        # Then the poll returns it well before its 20 s are up
        assert [i["event_id"] for i in result["page"]["items"]] == ids
        assert result["took"] < 10
    finally:
        relay.stop()


def test_a_long_poll_with_nothing_new_returns_empty_after_its_wait(runtime, client) -> None:
    started = time.monotonic()
    page = client.get("/api/feed?after=0&wait=1.5").get_json()
    took = time.monotonic() - started
    assert page == {"items": [], "next_after": 0} and 1.4 <= took < 10
