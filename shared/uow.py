"""The unit of work: one transaction for state and the events that describe its change."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from itertools import chain
from types import TracebackType
from typing import Any, TypeVar
from weakref import WeakKeyDictionary, WeakSet

import psycopg
from sqlalchemy import Connection, Engine, event, inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from shared.aggregate import Aggregate, next_sequence
from shared.errors import ConcurrencyError, OzzyError
from shared.events import Event, StoredEvent, to_stored
from shared.sql import INSERT_EVENT

T = TypeVar("T")


class UnitOfWork:
    """A transaction over aggregates and events, rolled back unless committed.

    >>> with runtime.unit_of_work() as uow:
    ...     uow.add(LoanApplication.submit(...))
    ...     uow.commit()

    ``commit`` flushes the aggregates, writes every event they recorded (and every event given to
    :meth:`publish`) as outbox rows in the same transaction, commits, then wakes the relay.
    Inside a handler the framework owns the transaction: ``commit`` there only writes what is pending,
    and the handler's effects commit together with its inbox row when it returns.
    """

    def __init__(
        self,
        session: Session,
        *,
        on_commit: Callable[[], None] | None = None,
        managed: bool = False,
    ) -> None:
        self.session = session
        self._on_commit = on_commit
        self._managed = managed
        self._loose: list[tuple[int, Event]] = []
        self.written: list[StoredEvent] = []

    # --- state ----------------------------------------------------------------------------------

    def add(self, obj: Any) -> None:
        """Track a new aggregate (or any mapped object) in this transaction."""
        self.session.add(obj)

    def get(self, cls: type[T], ident: Any, *, for_update: bool = False) -> T | None:
        """Load an object by primary key, optionally locking its row until commit."""
        return self.session.get(cls, ident, with_for_update=for_update)

    def publish(self, event: Event) -> None:
        """Write ``event`` with this transaction although no aggregate recorded it."""
        self._loose.append((next_sequence(), event))

    # --- transaction ----------------------------------------------------------------------------

    def commit(self) -> list[StoredEvent]:
        """Save state and events atomically; return the events written by this call.

        The outbox rows travel with the COMMIT itself (see :func:`write_at_commit`): the event
        costs the transaction no round trip of its own."""
        if self._managed:
            return self.flush()
        stored = self.commit_transaction()
        if stored and self._on_commit is not None:
            self._on_commit()
        return stored

    def commit_transaction(self) -> list[StoredEvent]:
        """Flush, then commit the session with the pending outbox rows riding on its COMMIT.

        What :meth:`commit` does, without the wake-up; the worker commits a handler's transaction
        with it. A version conflict rolls back and raises :class:`ConcurrencyError`."""
        stored = self._flush_state()
        connection = self.session.connection() if stored else None
        if connection is not None:
            write_at_commit(connection, stored)
        try:
            self.session.commit()
        except StaleDataError as exc:
            self.session.rollback()
            raise ConcurrencyError() from exc
        finally:
            leftover = _awaiting_commit.pop(connection, None) if connection is not None else None
        if leftover is not None:
            _write_leftover(connection, leftover)
        self.written.extend(stored)
        return stored

    def flush(self) -> list[StoredEvent]:
        """Write pending state and outbox rows in the open transaction, without committing."""
        stored = self._flush_state()
        if stored:
            write_events(self.session, stored)
            self.written.extend(stored)
        return stored

    def _flush_state(self) -> list[StoredEvent]:
        """Flush the aggregates (checking their versions) and collect the events to write."""
        aggregates = self._touched_aggregates()
        for agg in aggregates:
            state = inspect(agg)
            # A new row starts at its version; a loaded one counts a change once per transaction.
            if state.persistent and state.modified and self.session.is_modified(agg):
                agg.bump_version()
        try:
            self.session.flush()
        except StaleDataError as exc:
            self.session.rollback()
            raise ConcurrencyError() from exc
        return self._collect(aggregates)

    def rollback(self) -> None:
        self.session.rollback()
        self._loose.clear()

    def _touched_aggregates(self) -> list[Aggregate]:
        seen: dict[int, Aggregate] = {}
        for obj in chain(self.session.new, self.session.identity_map.values()):
            if isinstance(obj, Aggregate):
                seen.setdefault(id(obj), obj)
        return list(seen.values())

    def _collect(self, aggregates: list[Aggregate]) -> list[StoredEvent]:
        recorded: list[tuple[int, Event, tuple[str | None, str | None]]] = []
        for agg in aggregates:
            pending = agg.pending_events()
            if pending:
                key = agg.aggregate_key()
                recorded.extend((seq, event, key) for seq, event in pending)
                pending.clear()
        recorded.extend((seq, event, (None, None)) for seq, event in self._loose)
        self._loose.clear()
        recorded.sort(key=lambda item: item[0])
        return [to_stored(e, aggregate_type=k[0], aggregate_id=k[1]) for _, e, k in recorded]

    def __enter__(self) -> UnitOfWork:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._managed:
            self.session.rollback()
            self.session.close()


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def write_events(session: Session, stored: Sequence[StoredEvent]) -> None:
    """Insert ``stored`` into the outbox in the session's transaction, now.

    This is the statement every business commit pays for, so it goes to the driver directly, as a
    statement psycopg prepares: through SQLAlchemy Core the same INSERT cost more Python time than
    the database took to run it (bench/pipeline.py, section 4). Driver errors are raised as
    SQLAlchemy's, like every other statement's, so callers see one kind of database error.
    """
    _insert(session.connection(), [event_params(s) for s in stored])


def _insert(connection: Connection, params: list[tuple[Any, ...]], *, then_commit: bool = False) -> None:
    """The outbox INSERT on ``connection``'s driver; with ``then_commit``, the INSERT and the COMMIT
    go out together in one pipeline and come back in one round trip."""
    driver = connection.connection.driver_connection
    try:
        with driver.cursor() as cursor:
            with driver.pipeline() if then_commit else nullcontext():
                if len(params) == 1:
                    cursor.execute(INSERT_EVENT, params[0], prepare=True)
                else:
                    cursor.executemany(INSERT_EVENT, params)
                if then_commit:
                    cursor.execute("COMMIT")
    except psycopg.Error as exc:
        disconnected = connection.dialect.is_disconnect(exc, driver, None)
        if then_commit and not disconnected:
            disconnected = not _end_failed_transaction(driver)
        if disconnected:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            INSERT_EVENT, params, exc, psycopg.Error, connection_invalidated=disconnected, dialect=connection.dialect
        ) from exc


def _end_failed_transaction(driver: psycopg.Connection) -> bool:
    """Roll back what a failed INSERT left aborted, as the server does when a COMMIT fails.

    SQLAlchemy treats its transaction as ended once the commit was attempted, and returns the
    connection to the pool without a rollback of its own. False if the connection is unusable."""
    try:
        driver.rollback()
    except psycopg.Error:
        return False
    return True


#: Outbox rows waiting for the COMMIT of their transaction, by the connection that will send it.
_awaiting_commit: WeakKeyDictionary[Connection, list[tuple[Any, ...]]] = WeakKeyDictionary()
_hooked_engines: WeakSet[Engine] = WeakSet()


def write_at_commit(connection: Connection, stored: Sequence[StoredEvent]) -> None:
    """Have ``stored`` inserted into the outbox right before ``connection`` commits, in the same
    pipeline as the COMMIT.

    A unit of work's transaction otherwise pays a round trip for its outbox INSERT alone. The rows
    are written from SQLAlchemy's ``commit`` event, which fires after the session's
    ``before_commit`` hooks and its last flush, immediately before the driver commits: they are
    still in the transaction they describe, and an error in the INSERT fails the commit (the
    server does not run a COMMIT queued after a failed statement)."""
    engine = connection.engine
    if engine not in _hooked_engines:
        event.listen(engine, "commit", _insert_awaiting)
        _hooked_engines.add(engine)
    _awaiting_commit.setdefault(connection, []).extend(event_params(s) for s in stored)


def _insert_awaiting(connection: Connection) -> None:
    params = _awaiting_commit.pop(connection, None)
    if params:
        _insert(connection, params, then_commit=True)  # the driver's commit that follows finds nothing to do


def _write_leftover(connection: Connection, params: list[tuple[Any, ...]]) -> None:
    """The session committed without committing the connection: it is bound to a transaction that
    somebody else began (a test's outer transaction, say). The rows go into that transaction now."""
    if not connection.in_transaction():
        raise OzzyError("the session committed, but its connection's COMMIT did not carry the outbox rows")
    _insert(connection, params)


def event_params(stored: StoredEvent) -> tuple[Any, ...]:
    """The parameters of :data:`shared.sql.INSERT_EVENT` for one event."""
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
