"""The outbox rows a COMMIT carries (one simple query, ``INSERT ... VALUES (...); COMMIT``):
every value arrives exactly as written, and every failure saves nothing and leaves the
connection usable."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared import causal_context
from shared.db.engine import make_engine
from shared.model.stored import StoredEvent, to_stored
from shared.outbox.write import write_at_commit
from tests.domain import Account, AccountOpened
from tests.integration.helpers import make_runtime, scalar

AWKWARD = "o'brien \\ \"quoted\" ünïcödé 🚀 $1 %s ; COMMIT; --"


@pytest.fixture
def runtime(clean_db):
    rt = make_runtime(clean_db, handlers=[])
    yield rt
    rt.close()


@pytest.fixture
def one_connection(runtime) -> Iterator[sessionmaker[Session]]:
    """Sessions that all use the same pooled connection, one after the other."""
    engine = make_engine(runtime.config, pool_size=1, max_overflow=0)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


def awkward_event(**overrides: Any) -> StoredEvent:
    values: dict[str, Any] = {"aggregate_type": AWKWARD, "aggregate_id": AWKWARD} | overrides
    return to_stored(AccountOpened(account_id=uuid.uuid4(), owner=AWKWARD), **values)


def commit_rows(session: Session, stored: list[StoredEvent], *, statement: str | None = None) -> None:
    """What the unit of work does at commit: the rows ride on the session's COMMIT."""
    try:
        if statement is not None:
            session.execute(text(statement))
        write_at_commit(session.connection(), stored)
        session.commit()
    finally:
        session.close()


def outbox_rows(runtime) -> list[Any]:
    with runtime.engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT event_id, event_type, event_version, aggregate_type, aggregate_id, payload::text,"
            " metadata::text, correlation_id, causation_id, occurred_at FROM ozzy_outbox ORDER BY id"
        ).all()


def test_every_value_arrives_exactly_as_written(runtime) -> None:
    # Given events with quotes, backslashes, unicode and SQL-looking text in every text column,
    # a causal context (correlation and causation ids) and microsecond timestamps
    cause = uuid.uuid4()
    with causal_context(correlation_id=uuid.uuid4(), causation_id=cause, actor=AWKWARD):
        stored = [awkward_event(), awkward_event(aggregate_type=None, aggregate_id=None)]
    # When they ride on a COMMIT of a session that ran no statement yet (no transaction open)
    commit_rows(runtime.session_factory(), stored)
    # Then each row holds exactly the event's values
    rows = outbox_rows(runtime)
    assert len(rows) == 2
    for row, event in zip(rows, stored):
        assert row.event_id == event.event_id
        assert (row.event_type, row.event_version) == (event.type, event.version)
        assert (row.aggregate_type, row.aggregate_id) == (event.aggregate_type, event.aggregate_id)
        assert json.loads(row.payload) == event.payload
        assert json.loads(row.metadata) == event.metadata
        assert row.correlation_id == event.correlation_id
        assert row.causation_id == cause == event.causation_id
        assert row.occurred_at == event.occurred_at
    assert json.loads(rows[0].payload)["owner"] == AWKWARD


def test_state_and_many_events_commit_together(runtime) -> None:
    # Given a unit of work with state and 50 events recorded on it
    with runtime.unit_of_work() as uow:
        accounts = [Account.open(f"{AWKWARD}-{i}") for i in range(50)]
        for account in accounts:
            uow.add(account)
        written = uow.commit()
    # Then the rows, the state and the events are all saved, in recording order
    assert [row.event_id for row in outbox_rows(runtime)] == [e.event_id for e in written]
    assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 50


@pytest.mark.parametrize("open_transaction", [True, False], ids=["after-a-statement", "first-statement"])
def test_a_failing_row_fails_the_commit_saves_nothing_and_frees_the_connection(
    runtime, one_connection, open_transaction
) -> None:
    # Given an event already in the log
    first = awkward_event()
    commit_rows(one_connection(), [first])
    # When a commit carries state and a row with the same event id (after a good row)
    session = one_connection()
    if open_transaction:
        session.add(Account.open("lost"))
        session.flush()
    with pytest.raises(IntegrityError):
        commit_rows(session, [awkward_event(), first])
    # Then nothing of that transaction was saved
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 1
    assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 0
    # And the same connection commits the next rows
    commit_rows(one_connection(), [awkward_event()])
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 2


def test_a_nul_in_a_text_value_is_refused_as_before_and_saves_nothing(runtime, one_connection) -> None:
    # When a row holds a NUL (PostgreSQL text cannot), which libpq's quoting would cut short
    with pytest.raises(DataError):
        commit_rows(one_connection(), [awkward_event(aggregate_id="a\x00b")])
    # Then the driver refused it (the parameterised path), nothing was saved, the connection works
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 0
    commit_rows(one_connection(), [awkward_event()])
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 1


@pytest.mark.parametrize("statement", ["DEALLOCATE ALL", "DROP TABLE IF EXISTS not_there"])
def test_a_session_that_dropped_its_prepared_statements_still_commits_its_rows(
    runtime, one_connection, statement
) -> None:
    # Given a connection that committed rows before (psycopg prepared its statements on it)
    commit_rows(one_connection(), [awkward_event()])
    # When its prepared statements are dropped (psycopg itself sends DEALLOCATE ALL after a DROP,
    # an ALTER or a ROLLBACK it sees), then a commit carries state and rows on it
    session = one_connection()
    session.execute(text(statement))
    session.commit()
    session = one_connection()
    session.add(Account.open("kept"))
    session.flush()
    commit_rows(session, [awkward_event()])
    # Then everything was saved
    assert scalar(runtime, "SELECT count(*) FROM test_accounts") == 1
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox") == 2
