"""Writing events into the outbox: now, or with the COMMIT of their transaction.

This is the statement every business commit pays for, so it goes to the driver directly, as a
statement psycopg prepares: through SQLAlchemy Core the same INSERT cost more Python time than the
database took to run it (bench/pipeline.py, section 4). Driver errors are raised as SQLAlchemy's,
like every other statement's, so callers see one kind of database error.

At a unit of work's COMMIT the rows go out with the COMMIT as one simple query,
``INSERT ... VALUES (...); COMMIT``, run by libpq itself, the values written as literals libpq
quoted (``PQescapeLiteral``): the same single round trip as a psycopg pipeline, for less client CPU
(docs/benchmarks.md, "Outbox write cost (#16)").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import psycopg
from psycopg.pq import Escaping, ExecStatus, PipelineStatus, TransactionStatus
from sqlalchemy import Connection, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared.db.sql import INSERT_EVENT, INSERT_EVENT_TYPES, INSERT_EVENT_VALUES, INSERT_SCHEDULED
from shared.errors import OzzyError
from shared.model.stored import StoredEvent
from shared.model.unit_of_work import Scheduled, TimerOp

_dumps = json.JSONEncoder(separators=(",", ":")).encode

#: Where a connection keeps the outbox rows waiting for its COMMIT (SQLAlchemy's per-connection
#: ``info`` dict, which lives and dies with the pooled DBAPI connection).
_AWAITING = "ozzy_outbox_awaiting_commit"

#: The casts of the literal values, in the order of :data:`INSERT_EVENT`'s parameters.
_CASTS = tuple(f"::{name}".encode() for name in INSERT_EVENT_TYPES)
_INSERT_VALUES = INSERT_EVENT_VALUES.encode()


def write_events(session: Session, stored: Sequence[StoredEvent]) -> None:
    """Insert ``stored`` into the outbox in the session's transaction, now."""
    _insert(session.connection(), [event_params(s) for s in stored])


def _insert(connection: Connection, params: list[tuple[Any, ...]], *, then_commit: bool = False) -> None:
    """The outbox INSERT on ``connection``'s driver; with ``then_commit``, the INSERT and the COMMIT
    go out together and come back in one round trip (one simple query, or one pipeline)."""
    driver: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
    try:
        if then_commit and driver.pgconn.pipeline_status == PipelineStatus.OFF and _quotable(params):
            _execute_and_commit(driver, params)
            return
        with driver.cursor() as cursor:
            with driver.pipeline() if then_commit else nullcontext():
                if len(params) == 1:
                    cursor.execute(INSERT_EVENT, params[0], prepare=True)
                else:
                    cursor.executemany(INSERT_EVENT, params)
                if then_commit:
                    cursor.execute("COMMIT")
    except psycopg.Error as exc:
        disconnected = connection.dialect.is_disconnect(exc, driver, None)  # type: ignore[arg-type]
        if then_commit and not disconnected:
            disconnected = not _end_failed_transaction(driver)
        if disconnected:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            INSERT_EVENT, params, exc, psycopg.Error, connection_invalidated=disconnected, dialect=connection.dialect
        ) from exc


def _quotable(params: list[tuple[Any, ...]]) -> bool:
    """False if a value holds a NUL, which libpq's quoting would cut short: those rows take the
    parameterised path, where psycopg refuses them as it always did."""
    return not any(isinstance(value, str) and "\x00" in value for row in params for value in row)


def _execute_and_commit(driver: psycopg.Connection[Any], params: list[tuple[Any, ...]]) -> None:
    """Insert ``params`` and commit, in one simple query and one round trip.

    After a failed statement the server skips the rest of the query, COMMIT included, and leaves
    the transaction aborted, as in a pipeline. An open transaction is continued; on a connection
    with none yet, the query begins its own."""
    pgconn = driver.pgconn
    encoding = driver.info.encoding
    escape = Escaping(pgconn).escape_literal
    rows = b",".join(
        b"(" + b",".join(b"NULL" if v is None else escape(str(v).encode(encoding)) + cast
                         for v, cast in zip(row, _CASTS)) + b")"
        for row in params
    )
    begin = b"BEGIN;" if pgconn.transaction_status == TransactionStatus.IDLE else b""
    result = pgconn.exec_(begin + _INSERT_VALUES + rows + b";COMMIT")  # waits with the GIL released
    if result.status != ExecStatus.COMMAND_OK:
        raise psycopg.errors.error_from_result(result, encoding)


def _end_failed_transaction(driver: psycopg.Connection[Any]) -> bool:
    """Roll back what a failed INSERT left aborted, as the server does when a COMMIT fails.

    SQLAlchemy treats its transaction as ended once the commit was attempted, and returns the
    connection to the pool without a rollback of its own. False if the connection is unusable."""
    try:
        driver.rollback()
    except psycopg.Error:
        return False
    return True


def write_at_commit(connection: Connection, stored: Sequence[StoredEvent]) -> dict[Any, Any]:
    """Have ``stored`` inserted into the outbox right before ``connection`` commits, in the same
    pipeline as the COMMIT.

    A unit of work's transaction otherwise pays a round trip for its outbox INSERT alone. The rows
    are written from SQLAlchemy's ``commit`` event, which fires after the session's
    ``before_commit`` hooks and its last flush, immediately before the driver commits: they are
    still in the transaction they describe, and an error in the INSERT fails the commit (the
    server does not run a COMMIT queued after a failed statement).

    Returns the connection's ``info`` dict, where the caller finds (with :func:`take_awaiting`) any
    rows the COMMIT did not carry: they must never stay there for the connection's next user."""
    engine = connection.engine
    if not event.contains(engine, "commit", _insert_awaiting):
        event.listen(engine, "commit", _insert_awaiting)
    info = connection.info
    info.setdefault(_AWAITING, []).extend(event_params(s) for s in stored)
    return info


def take_awaiting(info: dict[Any, Any]) -> list[tuple[Any, ...]] | None:
    """The rows still waiting in a connection's ``info`` (none once its COMMIT carried them)."""
    awaiting: list[tuple[Any, ...]] | None = info.pop(_AWAITING, None)
    return awaiting


def _insert_awaiting(connection: Connection) -> None:
    params = take_awaiting(connection.info)
    if params:
        _insert(connection, params, then_commit=True)  # the driver's commit that follows finds nothing to do


def write_leftover(connection: Connection, params: list[tuple[Any, ...]]) -> None:
    """The session committed without committing the connection: it is bound to a transaction that
    somebody else began (a test's outer transaction, say). The rows go into that transaction now."""
    if not connection.in_transaction():
        raise OzzyError("the session committed, but its connection's COMMIT did not carry the outbox rows")
    _insert(connection, params)


def write_timer_ops(session: Session, ops: Sequence[TimerOp]) -> None:
    """Write the events scheduled in this transaction (cancellations were run when asked for)."""
    rows = [{
        "event_id": op.stored.event_id, "event_type": op.stored.type, "event_version": op.stored.version,
        "aggregate_type": op.stored.aggregate_type, "aggregate_id": op.stored.aggregate_id,
        "payload": _dumps(op.stored.payload), "metadata": _dumps(op.stored.metadata), "due_at": op.due_at,
        "key": op.key,
    } for op in ops if isinstance(op, Scheduled)]
    if rows:
        session.execute(INSERT_SCHEDULED, rows)


def event_params(stored: StoredEvent) -> tuple[Any, ...]:
    """The parameters of :data:`shared.db.sql.INSERT_EVENT` for one event."""
    meta = stored.metadata
    return (
        stored.event_id,
        stored.type,
        stored.version,
        stored.aggregate_type,
        stored.aggregate_id,
        _dumps(stored.payload),
        _dumps(meta),
        meta.get("correlation_id"),
        meta.get("causation_id"),
        stored.occurred_at,
    )
