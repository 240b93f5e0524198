"""The unit of work on the real PostgreSQL: state and events are one atomic fact."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from shared import ConcurrencyError, causal_context
from tests.domain import Account, DepositAudited
from tests.integration.helpers import make_runtime, scalar


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=[])
    yield rt
    rt.close()


def test_commit_saves_state_and_events_in_order_with_aggregate_and_metadata(runtime) -> None:
    # Given a new account that opens and takes two deposits in one unit of work
    with runtime.unit_of_work() as uow:
        account = Account.open("ada")
        uow.add(account)
        account.deposit(Decimal("10.00"), datetime.now(timezone.utc))
        account.deposit(Decimal("2.50"), datetime.now(timezone.utc))
        written = uow.commit()
    # Then the row and three outbox rows exist, in recording order, tied to the aggregate
    assert [e.type for e in written] == ["test.account_opened", "test.deposited", "test.deposited"]
    with runtime.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT event_type, aggregate_type, aggregate_id, correlation_id, dispatched_at FROM ozzy_outbox ORDER BY id"
        ).all()
    assert [r.event_type for r in rows] == ["test.account_opened", "test.deposited", "test.deposited"]
    assert {(r.aggregate_type, r.aggregate_id) for r in rows} == {("test_accounts", str(account.id))}
    assert all(r.dispatched_at is None for r in rows)
    assert scalar(runtime, "SELECT balance FROM test_accounts WHERE id = :id", id=account.id) == Decimal("12.50")
    assert scalar(runtime, "SELECT version FROM test_accounts WHERE id = :id", id=account.id) == 1


def test_rollback_leaves_neither_state_nor_outbox_row(runtime) -> None:
    # Given a unit of work that records an event and then fails before committing
    with pytest.raises(RuntimeError):
        with runtime.unit_of_work() as uow:
            uow.add(Account.open("bob"))
            uow.flush()  # the rows reached PostgreSQL inside the transaction
            raise RuntimeError("business rule broken")
    # Then nothing was saved
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 0
    assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 0


def test_a_failing_statement_rolls_back_the_events_too(runtime) -> None:
    with runtime.unit_of_work() as uow:
        uow.add(Account.open("x" * 500))  # owner is VARCHAR(100)
        with pytest.raises(Exception):
            uow.commit()
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 0


def test_an_optimistic_concurrency_conflict_saves_no_event(runtime) -> None:
    # Given an account, loaded by two units of work at the same version
    with runtime.unit_of_work() as uow:
        account = Account.open("carol")
        uow.add(account)
        uow.commit()
    first, second = runtime.unit_of_work(), runtime.unit_of_work()
    a = first.get(Account, account.id)
    b = second.get(Account, account.id)
    # When both deposit and the first commits
    a.deposit(Decimal("5"), datetime.now(timezone.utc))
    first.commit()
    b.deposit(Decimal("7"), datetime.now(timezone.utc))
    # Then the second fails clearly and saved neither its state nor its event
    with pytest.raises(ConcurrencyError):
        second.commit()
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert scalar(runtime, "SELECT balance FROM test_accounts") == Decimal("5.00")
    assert scalar(runtime, "SELECT version FROM test_accounts") == 2
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type = 'test.deposited'") == 1


def test_recording_an_event_alone_still_bumps_the_version(runtime) -> None:
    # An event is a change: two writers that only record events must still conflict.
    with runtime.unit_of_work() as uow:
        account = Account.open("dan")
        uow.add(account)
        uow.commit()
    first, second = runtime.unit_of_work(), runtime.unit_of_work()
    first.get(Account, account.id).record(DepositAudited(account_id=account.id, amount=Decimal(0)))
    second.get(Account, account.id).record(DepositAudited(account_id=account.id, amount=Decimal(0)))
    first.commit()
    with pytest.raises(ConcurrencyError):
        second.commit()
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type = 'test.deposit_audited'") == 1


def test_events_carry_the_causal_context_of_the_caller(runtime) -> None:
    correlation = uuid.uuid4()
    with causal_context(correlation_id=correlation, actor="operator:eve"):
        with runtime.unit_of_work() as uow:
            uow.add(Account.open("eve"))
            uow.commit()
    with runtime.engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT correlation_id, metadata FROM ozzy_outbox").one()
    assert row.correlation_id == correlation
    assert row.metadata["actor"] == "operator:eve"


def returns_within(seconds: float, work: Callable[[], Any]) -> Any:
    """Run ``work`` and return its result, or fail if it has not returned after ``seconds``.

    A deadline for an outcome ("it returns rather than hangs"), not a speed: the caller picks a bound
    far above any plausible run, and the speed itself is measured by ``bench/latency.py``. The work
    runs in a daemon thread, so a hang fails the test instead of holding up the session."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="returns-within", daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s: it hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@contextmanager
def unreachable_redis(kind: str) -> Iterator[str]:
    """The URL of a Redis that refuses connections (``refused``: a closed port) or accepts them and
    never answers (``silent``: a listening socket nobody reads, as a hung server or a black-holed
    network looks)."""
    if kind == "refused":
        from tests.servers import free_port

        yield f"redis://127.0.0.1:{free_port()}/0"
        return
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)  # the kernel completes the handshakes; nothing ever reads or replies
        yield f"redis://127.0.0.1:{black_hole.getsockname()[1]}/0"


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_an_unreachable_redis_neither_fails_nor_holds_up_the_business_write(clean_db, kind) -> None:
    # Given a runtime whose Redis is unreachable, and whose after-commit wake-up may wait for it up to
    # a minute: a commit that waited for its wake-up would take a minute, a hang for any caller
    with unreachable_redis(kind) as url:
        runtime = make_runtime(clean_db, handlers=[], redis_url=url, notify_timeout=60.0)
        try:
            # When 20 units of work commit
            def commit_twenty() -> None:
                for i in range(20):
                    with runtime.unit_of_work() as uow:
                        uow.add(Account.open(f"offline-{i}"))
                        uow.commit()

            # Then every commit returned (well before a single wake-up could have timed out) ...
            returns_within(30, commit_twenty)
            # ... and all were saved
            assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 20
            assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 20
        finally:
            runtime.close()


def test_a_database_error_in_the_outbox_write_is_sqlalchemys_and_saves_nothing(runtime) -> None:
    # Given an event id that is already in the log
    from sqlalchemy.exc import IntegrityError

    from shared.model.stored import to_stored
    from shared.outbox.write import write_events
    from tests.domain import AccountOpened

    first = to_stored(AccountOpened(account_id=uuid.uuid4(), owner="a"))
    with runtime.unit_of_work() as uow:
        write_events(uow.session, [first])
        uow.commit()
    # When a unit of work writes state and the same event id again
    with pytest.raises(IntegrityError):
        with runtime.unit_of_work() as uow:
            uow.add(Account.open("dup"))
            uow.flush()
            write_events(uow.session, [first])
    # Then the error is SQLAlchemy's (as for any other statement) and the state rolled back with it
    assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 0
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 1
    # And the pooled connection is usable afterwards
    with runtime.unit_of_work() as uow:
        uow.add(Account.open("after"))
        uow.commit()
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 2


def test_a_failing_outbox_write_at_commit_fails_the_commit_and_saves_nothing(runtime, monkeypatch) -> None:
    # Given an event id that is already in the log, which the next event will be given again
    import shared.model.stored
    from sqlalchemy.exc import IntegrityError

    with runtime.unit_of_work() as uow:
        uow.add(Account.open("first"))
        (first,) = uow.commit()
    monkeypatch.setattr(shared.model.stored, "new_event_id", lambda: first.event_id)
    # When a unit of work commits state and that event (its INSERT travels with the COMMIT)
    with pytest.raises(IntegrityError):
        with runtime.unit_of_work() as uow:
            uow.add(Account.open("second"))
            uow.commit()
    # Then the commit failed as a whole: no state, no second event
    assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 1
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 1
    # And every pooled connection, the failed one included, serves the next units of work
    monkeypatch.undo()
    for i in range(2 * runtime.config.db_pool_size):
        with runtime.unit_of_work() as uow:
            uow.add(Account.open(f"next-{i}"))
            uow.commit()
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 1 + 2 * runtime.config.db_pool_size


def test_statements_of_before_commit_hooks_commit_with_the_state_and_events(runtime) -> None:
    # Given a session hook that writes SQL when the session commits (an audit trail, say)
    from sqlalchemy import event, text

    with runtime.engine.begin() as conn:
        conn.execute(text("CREATE TABLE hook_audit (note text)"))

    def audit(session) -> None:
        session.execute(text("INSERT INTO hook_audit VALUES ('committed')"))

    def commit_with_hook(hook, owner: str) -> None:
        with runtime.unit_of_work() as uow:
            event.listen(uow.session, "before_commit", hook)
            uow.add(Account.open(owner))
            uow.commit()

    commit_with_hook(audit, "hooked")
    # Then the hook's row, the state and the event were all committed
    assert scalar(runtime, "SELECT count(*) FROM hook_audit") == 1
    assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 1
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 1
    # And a hook that fails stops the commit before anything is saved, events included
    def refuse(session) -> None:
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        commit_with_hook(refuse, "refused")
    assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 1
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 1
    with runtime.unit_of_work() as uow:  # nothing the refused commit left behind is written later
        uow.add(Account.open("next"))
        uow.commit()
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 2


def test_a_session_joined_to_an_outer_transaction_writes_its_events_into_it(runtime) -> None:
    # Given a session bound to a connection whose transaction somebody else began (a test's
    # rollback-everything fixture, say), joined through a savepoint
    from sqlalchemy.orm import Session

    from shared.outbox.unit_of_work import SqlUnitOfWork as UnitOfWork

    with runtime.engine.connect() as conn:
        outer = conn.begin()
        with UnitOfWork(Session(bind=conn, join_transaction_mode="create_savepoint")) as uow:
            uow.add(Account.open("inner"))
            uow.commit()
        # Then the state and its event are both in the outer transaction ...
        assert conn.exec_driver_sql("SELECT count(*) FROM ozzy_outbox").scalar() == 1
        assert conn.exec_driver_sql("SELECT count(*) FROM test_accounts").scalar() == 1
        outer.rollback()
    # ... and leave with it
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 0
    assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 0
