"""The PostgreSQL unit of work: one transaction for state and the events that describe its change."""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any, TypeVar

from sqlalchemy import Executable, Result, inspect, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from shared.errors import ConcurrencyError
from shared.model.aggregate import Aggregate
from shared.model.stored import StoredEvent
from shared.db.sql import CANCEL_SCHEDULED
from shared.model.unit_of_work import Cancel, UnitOfWork
from shared.observability import tracing
from shared.outbox.write import take_awaiting, write_at_commit, write_events, write_leftover, write_timer_ops

T = TypeVar("T")


class SqlUnitOfWork(UnitOfWork):
    """The unit of work on a SQLAlchemy session (see :class:`shared.model.unit_of_work.UnitOfWork`).

    ``commit`` flushes the aggregates (checking their versions), writes their events as outbox rows
    that travel with the COMMIT itself, commits, then calls ``on_commit`` (the relay's wake-up).
    With ``managed`` (inside a handler) the framework owns the transaction and ``commit`` only
    writes what is pending. ``session`` is there for queries the portable interface does not
    cover; code that uses it runs only on PostgreSQL, not on the in-memory unit of work.
    """

    def __init__(self, session: Session, *, on_commit: Callable[[], None] | None = None, managed: bool = False) -> None:
        super().__init__()
        self.session = session
        self._on_commit = on_commit
        self._managed = managed
        self._timers_written = False

    # --- state ----------------------------------------------------------------------------------

    def add(self, obj: Any) -> None:
        self.session.add(obj)

    def get(self, cls: type[T], ident: Any, *, for_update: bool = False) -> T | None:
        return self.session.get(cls, ident, with_for_update=for_update)

    def all(self, cls: type[T], **equal: Any) -> list[T]:
        statement = select(cls).filter_by(**equal).order_by(*inspect(cls).primary_key)
        return list(self.session.scalars(statement))

    def execute(self, statement: Executable, params: dict[str, Any] | None = None) -> Result[Any]:
        """Run a SQL statement in this transaction (PostgreSQL only)."""
        return self.session.execute(statement, params)

    # --- transaction ----------------------------------------------------------------------------

    def _cancel_saved(self, cancel: Cancel) -> bool:
        rows = self.session.execute(CANCEL_SCHEDULED, {"ids": [cancel.event_id] if cancel.event_id else [],
                                                       "keys": [cancel.key] if cancel.key else []}).all()
        self._timers_written = self._timers_written or bool(rows)
        return bool(rows)

    def commit(self) -> list[StoredEvent]:
        if self._managed:
            return self.flush()
        if tracing.active():  # the commit is a span of its own; its events carry its context
            with tracing.span("ozzy.commit"):
                stored = self.commit_transaction()
        else:
            stored = self.commit_transaction()
        if (stored or self._timers_written) and self._on_commit is not None:
            self._on_commit()  # new events to relay, or a timer that may be due before the others
        self._timers_written = False
        return stored

    def commit_transaction(self) -> list[StoredEvent]:
        """Flush, then commit the session with the pending outbox rows riding on its COMMIT.

        What :meth:`commit` does, without the wake-up; the worker commits a handler's transaction
        with it. A version conflict rolls back and raises :class:`ConcurrencyError`."""
        stored = self._flush_state()
        connection = self.session.connection() if stored else None
        # The connection is closed once the session committed; its per-connection dict lives on.
        info = write_at_commit(connection, stored) if connection is not None else None
        try:
            self.session.commit()
        except StaleDataError as exc:
            self.session.rollback()
            raise ConcurrencyError() from exc
        finally:
            leftover = take_awaiting(info) if info is not None else None
        if leftover and connection is not None:
            write_leftover(connection, leftover)
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
        ops = self.take_timer_ops()
        if ops:
            write_timer_ops(self.session, ops)
            self._timers_written = True
        return self.collect_events(aggregates)

    def rollback(self) -> None:
        # Recorded events live on the instances, which outlive the rollback: forget them too.
        for agg in self._touched_aggregates():
            agg.pending_events().clear()
        self.session.rollback()
        self.forget_pending()

    def close(self) -> None:
        if not self._managed:
            self.session.rollback()
            self.session.close()

    def _touched_aggregates(self) -> list[Aggregate]:
        seen: dict[int, Aggregate] = {}
        for obj in chain(self.session.new, self.session.identity_map.values()):
            if isinstance(obj, Aggregate):
                seen.setdefault(id(obj), obj)
        return list(seen.values())
