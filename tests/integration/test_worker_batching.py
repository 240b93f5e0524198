"""Several deliveries per transaction (shared/delivery/batching.py), on the real PostgreSQL and Redis:
each (event, handler) once, a failing handler rolled back alone and retried as always, and a lost
transaction run again one delivery at a time."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from shared import PermanentError, UnitOfWork, handles
from shared.delivery import batching, worker
from shared.delivery.relay import Relay
from tests.domain import Account, AccountOpened, DepositAudited, SideEffect
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until


@pytest.fixture
def batches(monkeypatch):
    """What each batch held when it ended: (deliveries committed, deliveries to run again)."""
    seen: list[tuple[int, int]] = []
    finish = batching.Batch.finish

    def spy(self):  # type: ignore[no-untyped-def]
        held = len(self.pending)
        again = finish(self)
        seen.append((held - len(again & set(self.pending)), len(again)))
        return again

    monkeypatch.setattr(batching.Batch, "finish", spy)
    return seen


def open_backlog(runtime, owners: list[str]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Accounts opened in one commit and relayed before any worker runs: queued together."""
    with runtime.unit_of_work() as uow:
        accounts = [Account.open(owner) for owner in owners]
        for account in accounts:
            uow.add(account)
        uow.commit()
    assert Relay(runtime).drain() == len(owners)
    return {a.owner: str(a.id) for a in accounts}


def effects(runtime, handler: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with runtime.engine.connect() as conn:
        rows = conn.execute(text("SELECT event_key, count(*) FROM test_side_effects WHERE handler = :h GROUP BY 1"),
                            {"h": handler}).all()
    return {r[0]: r[1] for r in rows}


def deliveries(runtime, handler: str) -> dict[str, tuple[str, int, str | None]]:  # type: ignore[no-untyped-def]
    with runtime.engine.connect() as conn:
        rows = conn.execute(text("SELECT o.aggregate_id, d.status, d.attempts, d.last_error FROM ozzy_deliveries d"
                                 " JOIN ozzy_outbox o ON o.event_id = d.event_id WHERE d.handler = :h"),
                            {"h": handler}).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def finished(runtime, handler: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE handler = :h AND status IN ('done', 'dead')",
                  h=handler) == n


def in_a_batch_after_others() -> bool:
    """This delivery runs in a batch, after others whose effects wait for its COMMIT."""
    batch = batching.current()
    return batch is not None and bool(batch.pending)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_backlog_runs_several_deliveries_per_transaction_each_once_with_its_events(clean_db, batches) -> None:
    @handles(AccountOpened, name="batch.welcome")
    def welcome(event: AccountOpened, uow: UnitOfWork) -> None:
        uow.add(SideEffect(handler="batch.welcome", event_key=str(event.account_id), account_id=event.account_id))
        uow.publish(DepositAudited(account_id=event.account_id, amount=Decimal("0")))

    runtime = make_runtime(clean_db, handlers=[welcome], worker_idle_ms=100, worker_batch=8)
    handled = sample("ozzy_handler_duration_seconds_count", handler="batch.welcome")
    try:
        # Given 40 events queued before the worker starts
        ids = open_backlog(runtime, [f"b-{i}" for i in range(40)])
        # When one worker thread drains them
        with running_worker(runtime, threads=1):
            wait_until(lambda: finished(runtime, "batch.welcome", 40))
        # Then the deliveries shared transactions, and each ran once with its effect and its event
        assert max(committed for committed, _ in batches) > 1, batches
        assert effects(runtime, "batch.welcome") == {i: 1 for i in ids.values()}
        assert {s for s, _, _ in deliveries(runtime, "batch.welcome").values()} == {"done"}
        assert {a for _, a, _ in deliveries(runtime, "batch.welcome").values()} == {1}
        assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type = 'test.deposit_audited'") == 40
        # And each delivery was timed on its own
        assert sample("ozzy_handler_duration_seconds_count", handler="batch.welcome") == handled + 40
        # And every message was acknowledged (the batches' acks went out in pipelines): none left in Redis
        queue = runtime.handlers["batch.welcome"].queue
        assert runtime.redis.hlen(f"{runtime.config.redis_namespace}:{queue}.msgs") == 0
    finally:
        runtime.close()


def test_a_failing_handler_in_a_batch_is_rolled_back_alone_and_retried_or_dead_as_always(clean_db, batches) -> None:
    failed: set[str] = set()
    undone: list[int] = []
    real_undo = worker._undo

    def counting_undo(batch, connection):  # type: ignore[no-untyped-def]
        undone.append(len(batch.pending))
        real_undo(batch, connection)

    @handles(AccountOpened, name="batch.flaky", max_retries=3, min_backoff=10, max_backoff=20)
    def flaky(event: AccountOpened, uow: UnitOfWork) -> None:
        # Its effect is written first: a failure must take it back
        uow.add(SideEffect(handler="batch.flaky", event_key=str(event.account_id), account_id=event.account_id))
        uow.flush()
        if event.owner.startswith("dead"):
            raise PermanentError("this can never work")
        if event.owner not in failed and event.owner.startswith(("raise", "sql")):
            failed.add(event.owner)
            if event.owner.startswith("sql"):
                uow.execute(text("SELECT 1 / 0"))  # aborts the transaction: only its savepoint saves the batch
            raise RuntimeError(f"first attempt of {event.owner} fails")

    owners = [f"{kind}-{i}" for i in range(6) for kind in ("ok", "raise", "ok", "sql", "dead")]
    runtime = make_runtime(clean_db, handlers=[flaky], worker_idle_ms=100, worker_batch=8)
    retries = sample("ozzy_handler_failures_total", handler="batch.flaky", kind="retry")
    dead = sample("ozzy_handler_failures_total", handler="batch.flaky", kind="dead")
    try:
        ids = open_backlog(runtime, owners)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(worker, "_undo", counting_undo)
            with running_worker(runtime, threads=1):
                wait_until(lambda: finished(runtime, "batch.flaky", len(owners)))
        rows = deliveries(runtime, "batch.flaky")
        done = effects(runtime, "batch.flaky")
        # Then failures were rolled back inside batches that committed their other deliveries
        assert any(n > 0 for n in undone), undone
        assert max(committed for committed, _ in batches) > 1, batches
        for owner, account in ids.items():
            status, attempts, error = rows[account]
            if owner.startswith("ok"):
                assert (status, attempts, done.get(account)) == ("done", 1, 1), owner
            elif owner.startswith("dead"):
                # dead at the first failure, its effect rolled back, the failure recorded
                assert (status, attempts, done.get(account)) == ("dead", 1, None), owner
                assert error is not None and "PermanentError" in error
            else:
                # failed once (recorded), retried, done once
                assert (status, attempts, done.get(account)) == ("done", 2, 1), owner
                expected = "division by zero" if owner.startswith("sql") else f"first attempt of {owner} fails"
                assert error is not None and expected in error, owner
        assert sample("ozzy_handler_failures_total", handler="batch.flaky", kind="retry") == retries + 12
        assert sample("ozzy_handler_failures_total", handler="batch.flaky", kind="dead") == dead + 6
    finally:
        runtime.close()


def test_a_batch_whose_commit_fails_runs_its_deliveries_again_one_at_a_time(clean_db, batches, monkeypatch) -> None:
    calls: list[str] = []

    @handles(AccountOpened, name="batch.counted")
    def counted(event: AccountOpened, uow: UnitOfWork) -> None:
        calls.append(event.owner)
        uow.add(SideEffect(handler="batch.counted", event_key=str(event.account_id), account_id=event.account_id))

    commit = batching.Batch._commit
    failures: list[int] = []

    def failing_once(self):  # type: ignore[no-untyped-def]
        if not failures and len(self.pending) > 1:
            failures.append(len(self.pending))
            raise OperationalError("COMMIT", {}, Exception("connection lost at commit"))
        return commit(self)

    monkeypatch.setattr(batching.Batch, "_commit", failing_once)
    runtime = make_runtime(clean_db, handlers=[counted], worker_idle_ms=100, worker_batch=8)
    try:
        ids = open_backlog(runtime, [f"c-{i}" for i in range(20)])
        with running_worker(runtime, threads=1):
            wait_until(lambda: finished(runtime, "batch.counted", 20))
        # Then the batch that could not commit was run again, and every event has its effect once
        assert failures and failures[0] > 1
        assert len(calls) == 20 + failures[0]
        assert effects(runtime, "batch.counted") == {i: 1 for i in ids.values()}
        assert {(s, a) for s, a, _ in deliveries(runtime, "batch.counted").values()} == {("done", 1)}
    finally:
        runtime.close()


def test_a_connection_lost_in_a_batch_costs_no_retry_and_loses_nothing(clean_db, batches) -> None:
    killed: list[str] = []

    @handles(AccountOpened, name="batch.killer", max_retries=0)
    def killer(event: AccountOpened, uow: UnitOfWork) -> None:
        uow.add(SideEffect(handler="batch.killer", event_key=str(event.account_id), account_id=event.account_id))
        if not killed and in_a_batch_after_others():
            killed.append(event.owner)
            uow.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))  # the batch's connection dies

    runtime = make_runtime(clean_db, handlers=[killer], worker_idle_ms=100, worker_batch=8)
    try:
        ids = open_backlog(runtime, [f"k-{i}" for i in range(12)])
        with running_worker(runtime, threads=1):
            wait_until(lambda: finished(runtime, "batch.killer", 12))
        # Then the deliveries the dead transaction held ran again, the killer's too, none failed
        assert len(killed) == 1
        assert any(again > 0 for _, again in batches), batches
        assert effects(runtime, "batch.killer") == {i: 1 for i in ids.values()}
        assert {(s, a) for s, a, _ in deliveries(runtime, "batch.killer").values()} == {("done", 1)}
    finally:
        runtime.close()


def test_a_handler_that_rolls_back_the_whole_session_does_not_take_the_batch_with_it(clean_db, batches) -> None:
    rolled: list[str] = []

    @handles(AccountOpened, name="batch.rollback", max_retries=3, min_backoff=10, max_backoff=20)
    def rollback(event: AccountOpened, uow: UnitOfWork) -> None:
        uow.add(SideEffect(handler="batch.rollback", event_key=str(event.account_id), account_id=event.account_id))
        if not rolled and in_a_batch_after_others():
            rolled.append(event.owner)
            uow.flush()  # the session now takes part in the batch's transaction
            uow.rollback()  # the whole transaction, with the deliveries before it in the batch
            raise RuntimeError("rolled back")

    runtime = make_runtime(clean_db, handlers=[rollback], worker_idle_ms=100, worker_batch=8)
    try:
        ids = open_backlog(runtime, [f"r-{i}" for i in range(12)])
        with running_worker(runtime, threads=1):
            wait_until(lambda: finished(runtime, "batch.rollback", 12))
        assert len(rolled) == 1
        assert any(again > 0 for _, again in batches), batches
        assert effects(runtime, "batch.rollback") == {i: 1 for i in ids.values()}
        rows = deliveries(runtime, "batch.rollback")
        assert rows[ids[rolled[0]]][:2] == ("done", 2)
        assert {rows[i][:2] for o, i in ids.items() if o != rolled[0]} == {("done", 1)}
    finally:
        runtime.close()


def test_batch_size_one_runs_each_delivery_in_its_own_transaction(clean_db, batches) -> None:
    @handles(AccountOpened, name="batch.single")
    def single(event: AccountOpened, uow: UnitOfWork) -> None:
        uow.add(SideEffect(handler="batch.single", event_key=str(event.account_id), account_id=event.account_id))

    runtime = make_runtime(clean_db, handlers=[single], worker_idle_ms=100, worker_batch=1)
    try:
        ids = open_backlog(runtime, [f"s-{i}" for i in range(10)])
        with running_worker(runtime, threads=1):
            wait_until(lambda: finished(runtime, "batch.single", 10))
        assert batches == []
        assert effects(runtime, "batch.single") == {i: 1 for i in ids.values()}
    finally:
        runtime.close()


def test_ordered_handlers_are_not_batched(clean_db, batches) -> None:
    @handles(AccountOpened, name="batch.ordered", ordered_by="owner")
    def ordered(event: AccountOpened, uow: UnitOfWork) -> None:
        uow.add(SideEffect(handler="batch.ordered", event_key=str(event.account_id), account_id=event.account_id))

    runtime = make_runtime(clean_db, handlers=[ordered], worker_idle_ms=100, worker_batch=8)
    try:
        ids = open_backlog(runtime, [f"o-{i}" for i in range(10)])
        with running_worker(runtime, threads=1):
            wait_until(lambda: finished(runtime, "batch.ordered", 10))
        assert batches == []
        assert effects(runtime, "batch.ordered") == {i: 1 for i in ids.values()}
    finally:
        runtime.close()


def test_a_handler_over_its_time_limit_in_a_batch_is_stopped_and_retried_the_others_commit(clean_db, batches) -> None:
    slow: list[str] = []

    @handles(AccountOpened, name="batch.slow", time_limit=300, max_retries=3, min_backoff=10, max_backoff=20)
    def slow_once(event: AccountOpened, uow: UnitOfWork) -> None:
        uow.add(SideEffect(handler="batch.slow", event_key=str(event.account_id), account_id=event.account_id))
        uow.flush()
        if not slow and in_a_batch_after_others():
            slow.append(event.owner)
            for _ in range(200):  # 10 s in short sleeps: the time limit interrupts it between two
                time.sleep(0.05)

    runtime = make_runtime(clean_db, handlers=[slow_once], worker_idle_ms=100, worker_batch=8)
    # Dramatiq's TimeLimit watches deadlines from a thread it starts at "process_boot", which
    # Dramatiq's own CLI emits (``ozzy worker`` and running_worker do not)
    runtime.broker.emit_after("process_boot")
    try:
        ids = open_backlog(runtime, [f"t-{i}" for i in range(10)])
        with running_worker(runtime, threads=1):
            wait_until(lambda: finished(runtime, "batch.slow", 10))
        # Then the slow one was stopped, rolled back and retried; the others of its batch committed once
        assert len(slow) == 1
        assert effects(runtime, "batch.slow") == {i: 1 for i in ids.values()}
        rows = deliveries(runtime, "batch.slow")
        status, attempts, error = rows[ids[slow[0]]]
        assert (status, attempts) == ("done", 2) and error is not None and "TimeLimitExceeded" in error
        assert {rows[i][:2] for o, i in ids.items() if o != slow[0]} == {("done", 1)}
        assert max(committed for committed, _ in batches) > 1, batches
    finally:
        runtime.close()
