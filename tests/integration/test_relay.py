"""The relay on the real PostgreSQL and Redis: every event once per handler, whatever the order."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import redis
from dramatiq import Message
from sqlalchemy import text

from shared import handles
from shared.db import sql
from shared.delivery.relay import Relay
from shared.outbox.write import write_events
from shared.model.stored import to_stored
from tests.domain import Account, AccountOpened, DepositAudited
from tests.integration.helpers import make_runtime, scalar, wait_until


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=["test.welcome", "test.count_deposit", "test.audit"])
    yield rt
    rt.close()


def queued(runtime, queue: str) -> list[Message]:
    """The Dramatiq messages waiting on ``queue``, decoded."""
    ns = runtime.config.redis_namespace
    return [Message.decode(raw) for raw in runtime.redis.hvals(f"{ns}:{queue}.msgs")]


def open_accounts(runtime, n: int) -> None:
    with runtime.unit_of_work() as uow:
        for i in range(n):
            uow.add(Account.open(f"owner-{i}"))
        uow.commit()


def test_a_drain_dispatches_every_row_records_pending_deliveries_and_marks_rows(runtime) -> None:
    # Given 1,200 opened accounts (more than two batches) with one handler for AccountOpened
    open_accounts(runtime, 1200)
    # When the relay drains
    sent = Relay(runtime).drain()
    # Then every row is dispatched, one message per event waits on the handler's queue ...
    assert sent == 1200
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL") == 0
    messages = queued(runtime, "test.welcome")
    assert len(messages) == 1200
    assert len({m.args[0]["event_id"] for m in messages}) == 1200
    # ... and PostgreSQL knows each delivery is pending
    assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'pending'") == 1200
    # ... and the rows were numbered in id order, one position each, without gaps across batches
    steps = "SELECT dispatch_seq - lag(dispatch_seq) OVER (ORDER BY id) AS step FROM ozzy_outbox"
    assert scalar(runtime, f"SELECT array_agg(DISTINCT step) FROM ({steps}) s WHERE step IS NOT NULL") == [1]
    assert Relay(runtime).drain() == 0


def test_events_without_handlers_are_marked_dispatched_and_stay_in_the_log(runtime) -> None:
    bare = make_runtime(runtime.config, handlers=[])
    try:
        relay = Relay(bare)
        open_accounts(runtime, 3)
        assert relay.drain() == 3
        assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL") == 3
        assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 3
        assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries") == 0
    finally:
        bare.close()


def dispatch_lock_key() -> int:
    """The advisory lock a relay takes after sending a batch to Redis, to mark it dispatched."""
    return int(re.fullmatch(r"SELECT pg_advisory_xact_lock\((\d+)\)", str(sql.DISPATCH_LOCK)).group(1))


@contextmanager
def dispatch_lock_held(engine) -> Iterator[None]:
    """Hold the relays' dispatch lock on a connection of our own. A relay that drains meanwhile claims
    a batch, sends it to Redis and then waits for the lock with its batch still claimed: its rows
    locked, its deliveries uncommitted, nothing marked dispatched. Released on leaving."""
    conn = engine.connect()
    try:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": dispatch_lock_key()})
        yield
    finally:
        conn.rollback()  # ends the transaction, which releases the lock
        conn.close()


def relays_waiting_to_mark(engine) -> int:
    """Connections of this database waiting for the dispatch lock: relays holding a claimed batch."""
    key = dispatch_lock_key()
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
            " AND l.classid::bigint = :hi AND l.objid::bigint = :lo AND l.objsubid = 1"
        ), {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalar()


def claimed_rows(engine) -> int:
    """Undispatched rows that another transaction holds locked, i.e. rows of a claimed batch."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT (SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL)"
            " - (SELECT count(*) FROM (SELECT 1 FROM ozzy_outbox WHERE dispatched_at IS NULL"
            "    FOR KEY SHARE SKIP LOCKED) free)"
        )).scalar()


def test_two_relays_at_once_dispatch_every_event_exactly_once_per_handler(runtime) -> None:
    # Given 4,000 events and two relays with batches of 100, each with its own connections
    open_accounts(runtime, 4000)
    runtimes = [make_runtime(runtime.config, handlers=["test.welcome"], batch_size=100) for _ in range(2)]
    relays = [Relay(rt) for rt in runtimes]
    counts = [0, 0]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            counts[i] = relays[i].drain()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"relay-{i}", daemon=True) for i in range(2)]
    try:
        # When both drain while the dispatch lock is held ...
        with dispatch_lock_held(runtime.engine):
            for t in threads:
                t.start()
            # ... each claims a batch of its own, sends it and waits to mark it: both relays hold a
            # claimed batch at the same moment, and SKIP LOCKED gave them different rows
            wait_until(lambda: relays_waiting_to_mark(runtime.engine) == 2, timeout=30)
            assert claimed_rows(runtime.engine) == 2 * 100
            assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL") == 0
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a relay is still draining after two minutes"
        assert not errors, errors
        # Then together they sent each event once, and each sent a share in batches of its own
        assert sum(counts) == 4000
        assert all(r.stats.batches >= 1 and r.stats.dispatched == c > 0 for r, c in zip(relays, counts)), (
            counts, [r.stats for r in relays])
        ids = Counter(m.args[0]["event_id"] for m in queued(runtime, "test.welcome"))
        assert len(ids) == 4000 and set(ids.values()) == {1}
        assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'pending'") == 4000
        # ... and each row has its own dispatch position, the batches' blocks leaving no gap
        positions = "SELECT count(DISTINCT dispatch_seq), max(dispatch_seq) - min(dispatch_seq) + 1 FROM ozzy_outbox"
        with runtime.engine.connect() as conn:
            assert tuple(conn.execute(text(positions)).one()) == (4000, 4000)
    finally:
        for t in threads:
            if t.ident is not None:
                t.join(60)
        for rt in runtimes:
            rt.close()


def test_a_row_that_commits_late_with_a_lower_id_is_still_dispatched(runtime) -> None:
    relay = Relay(runtime)
    # Given a transaction that takes an id and stays open ...
    slow = runtime.session_factory()
    late = to_stored(AccountOpened(account_id=uuid.uuid4(), owner="late"))
    write_events(slow, [late])
    # ... while a later one commits and is dispatched
    open_accounts(runtime, 1)
    assert relay.drain() == 1
    # When the slow transaction commits, with an id below the one already dispatched
    slow.commit()
    slow.close()
    # Then the next drain still finds and sends it
    assert relay.drain() == 1
    with runtime.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, dispatched_at FROM ozzy_outbox ORDER BY id")).all()
    assert rows[0].id < rows[1].id and all(r.dispatched_at for r in rows)
    assert str(late.event_id) in {m.args[0]["event_id"] for m in queued(runtime, "test.welcome")}


def test_if_redis_refuses_the_batch_nothing_is_marked_dispatched(clean_db) -> None:
    from tests.servers import free_port

    broken = make_runtime(clean_db, handlers=["test.welcome"], redis_url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        open_accounts(broken, 5)
        with pytest.raises(redis.ConnectionError):
            Relay(broken).drain()
        assert scalar(broken, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL") == 5
        assert scalar(broken, "SELECT count(*) FROM ozzy_deliveries") == 0
    finally:
        broken.close()


def test_no_ghost_messages_a_rolled_back_write_never_reaches_redis(runtime) -> None:
    """Lesson 15: a message announced but never saved is impossible; only committed rows travel."""
    pubsub = runtime.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{runtime.config.redis_namespace}:events")
    with runtime.unit_of_work() as uow:
        uow.add(Account.open("ghost"))
        uow.flush()
        uow.rollback()
    open_accounts(runtime, 1)
    assert Relay(runtime).drain() == 1
    published = []
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message:
            published.extend(json.loads(message["data"]))  # one JSON array per dispatched batch
    pubsub.close()
    assert [m["payload"]["owner"] for m in published] == ["owner-0"]
    assert [m.args[0]["payload"]["owner"] for m in queued(runtime, "test.welcome")] == ["owner-0"]


def test_one_relay_sends_each_aggregates_events_in_commit_order(runtime) -> None:
    """Lesson 3, the boundary of what is promised: the log and one relay keep per-aggregate order
    on every handler queue; running handlers concurrently (several threads or workers) does not."""
    with runtime.unit_of_work() as uow:
        account = Account.open("ordered")
        uow.add(account)
        uow.commit()
    for i in range(1, 30):
        with runtime.unit_of_work() as uow:
            uow.get(Account, account.id).deposit(Decimal(i), datetime.now(timezone.utc))
            uow.commit()
    Relay(runtime).drain()
    ns = runtime.config.redis_namespace
    ids = runtime.redis.lrange(f"{ns}:test.count_deposit", 0, -1)
    raw = runtime.redis.hmget(f"{ns}:test.count_deposit.msgs", ids)
    amounts = [Message.decode(r).args[0]["payload"]["money"]["amount"] for r in raw]
    assert amounts == [str(i) for i in range(1, 30)]


@handles(AccountOpened, name="relaytest.second_welcome")
def _second_welcome(event: AccountOpened, uow) -> None:  # type: ignore[no-untyped-def]
    """A second handler of the same event type (not in the default "test." handler set)."""


def test_the_claim_records_one_pending_delivery_per_routed_handler_and_none_for_parked_rows(clean_db) -> None:
    # Given a relay routing AccountOpened to two handlers and Deposited to one
    rt = make_runtime(clean_db, handlers=["test.welcome", _second_welcome, "test.count_deposit"])
    try:
        with rt.unit_of_work() as uow:
            account = Account.open("ada")
            uow.add(account)
            account.deposit(Decimal("1.00"), datetime.now(timezone.utc))
            uow.commit()
        # ... an event of a type this code does not know, and one of a type nobody handles
        unknown = dataclasses.replace(to_stored(AccountOpened(account_id=uuid.uuid4(), owner="x")), type="test.future")
        unhandled = to_stored(DepositAudited(account_id=uuid.uuid4(), amount=Decimal("2.00")))
        with rt.session_factory() as session:
            write_events(session, [unknown, unhandled])
            session.commit()
        # When the relay drains
        assert Relay(rt).drain() == 4
        # Then each routed (event, handler) pair has exactly one pending delivery, and nothing else does
        with rt.engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT o.event_type, d.handler FROM ozzy_deliveries d JOIN ozzy_outbox o USING (event_id)"
                " ORDER BY 1, 2")).all()
        assert [tuple(r) for r in rows] == [
            ("test.account_opened", "relaytest.second_welcome"),
            ("test.account_opened", "test.welcome"),
            ("test.deposited", "test.count_deposit"),
        ]
        assert scalar(rt, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'pending'") == 3
        assert scalar(rt, "SELECT count(*) FROM ozzy_outbox WHERE parked_at IS NOT NULL AND dispatched_at IS NULL") == 1
        assert scalar(rt, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NOT NULL") == 3
        assert len(queued(rt, "relaytest.second_welcome")) == 1 and len(queued(rt, "test.welcome")) == 1
    finally:
        rt.close()
