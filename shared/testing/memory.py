"""The in-memory adapter of the unit-of-work port: committed rows as plain values, and a unit of
work that loads copies of them, checks aggregate versions at commit and writes events with state.

Objects are the application's own mapped classes, created transient (no session, no SQL): the
column attributes are the state, as in a table. Each unit of work sees its own copies, so a change
is visible to others only once committed, and a rollback forgets it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper

from shared.errors import ConcurrencyError, OzzyError
from shared.model.aggregate import Aggregate
from shared.model.stored import StoredEvent
from shared.model.unit_of_work import Cancel, Scheduled, UnitOfWork

T = TypeVar("T")
Row = dict[str, Any]
Key = tuple[Any, ...]


@dataclass
class Timer:
    """A scheduled event in memory, as a row of ``ozzy_scheduled``."""

    stored: StoredEvent
    due_at: datetime
    key: str | None
    status: str = "scheduled"


class Tables:
    """Committed rows: class to primary key to column values; integer keys counted per class; the
    scheduled events; and the clock they are due by (moved by the test, never by itself)."""

    def __init__(self) -> None:
        self.rows: dict[type, dict[Key, Row]] = {}
        self._counters: dict[type, itertools.count[int]] = {}
        self.timers: list[Timer] = []
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def waiting(self, cancel: Cancel) -> bool:
        return any(t.status == "scheduled" and (t.stored.event_id == cancel.event_id or
                                                (cancel.key is not None and t.key == cancel.key))
                   for t in self.timers)

    def apply_timer(self, op: Any) -> None:
        """Schedule or cancel, as the SQL does (a key names one waiting event at a time)."""
        waiting = [t for t in self.timers if t.status == "scheduled"]
        if isinstance(op, Scheduled):
            if op.key is not None and any(t.key == op.key for t in waiting):
                raise OzzyError(f"a scheduled event named {op.key!r} is already waiting")
            self.timers.append(Timer(op.stored, op.due_at, op.key))
            return
        for timer in waiting:
            if timer.stored.event_id == op.event_id or (op.key is not None and timer.key == op.key):
                timer.status = "cancelled"

    def of(self, cls: type) -> dict[Key, Row]:
        return self.rows.setdefault(cls, {})

    def next_id(self, cls: type) -> int:
        return next(self._counters.setdefault(cls, itertools.count(1)))


def _mapper(cls: type) -> Mapper[Any]:
    mapper: Mapper[Any] = inspect(cls)
    return mapper


def key_of(obj: Any) -> Key:
    return tuple(_mapper(type(obj)).primary_key_from_instance(obj))


def snapshot(obj: Any) -> Row:
    """The column values of ``obj``, as a table row holds them."""
    return {attr.key: getattr(obj, attr.key) for attr in _mapper(type(obj)).column_attrs}


def materialize(cls: type[T], row: Row) -> T:
    """A new transient instance of ``cls`` with the row's values (its ``__init__`` is not run)."""
    obj: T = _mapper(cls).class_manager.new_instance()
    for name, value in row.items():
        setattr(obj, name, value)
    return obj


def apply_defaults(obj: Any, tables: Tables) -> None:
    """Fill what an INSERT would: Python-side column defaults, and a counted integer primary key."""
    mapper = _mapper(type(obj))
    for attr in mapper.column_attrs:
        column = attr.columns[0]
        if getattr(obj, attr.key) is not None:
            continue
        default = column.default
        if default is not None and getattr(default, "is_scalar", False):
            setattr(obj, attr.key, default.arg)
        elif default is not None and getattr(default, "is_callable", False):
            setattr(obj, attr.key, default.arg(None))  # SQLAlchemy wraps it to take a context
        elif column.primary_key and column.type.python_type is int:
            setattr(obj, attr.key, tables.next_id(type(obj)))


class InMemoryUnitOfWork(UnitOfWork):
    """The unit of work on :class:`Tables` (see :class:`shared.model.unit_of_work.UnitOfWork`)."""

    def __init__(self, tables: Tables, append_events: Callable[[list[StoredEvent]], None], *,
                 managed: bool = False) -> None:
        super().__init__()
        self._tables = tables
        self._append_events = append_events
        self._managed = managed
        self._identity: dict[tuple[type, Key], Any] = {}
        self._loaded: dict[tuple[type, Key], Row] = {}
        self._new: list[Any] = []
        #: Events a handler's ``commit`` collected, saved when the framework commits.
        self._flushed: list[StoredEvent] = []

    # --- state ----------------------------------------------------------------------------------

    def add(self, obj: Any) -> None:
        if any(o is obj for o in self._new) or any(o is obj for o in self._identity.values()):
            return
        self._new.append(obj)

    def get(self, cls: type[T], ident: Any, *, for_update: bool = False) -> T | None:
        key = ident if isinstance(ident, tuple) else (ident,)
        found: T | None = self._identity.get((cls, key))
        if found is not None:
            return found
        for obj in self._new:
            if isinstance(obj, cls) and key_of(obj) == key:
                return obj
        row = self._tables.of(cls).get(key)
        if row is None:
            return None
        obj = materialize(cls, row)
        self._identity[(cls, key)] = obj
        self._loaded[(cls, key)] = dict(row)
        return obj

    def all(self, cls: type[T], **equal: Any) -> list[T]:
        loaded = [self.get(cls, key) for key in list(self._tables.of(cls))]
        candidates = [o for o in loaded if o is not None] + [o for o in self._new if isinstance(o, cls)]
        chosen = [o for o in candidates if all(getattr(o, k) == v for k, v in equal.items())]
        return sorted(chosen, key=key_of)

    def now(self) -> datetime:
        return self._tables.now()

    def _cancel_saved(self, cancel: Cancel) -> bool:
        waiting = self._tables.waiting(cancel)
        if waiting:
            self._timer_ops.append(cancel)  # applied at commit, forgotten on rollback
        return waiting

    # --- transaction ----------------------------------------------------------------------------

    def commit(self) -> list[StoredEvent]:
        if self._managed:  # inside a handler the framework commits when the handler returns
            stored = self._collect()
            self._flushed.extend(stored)
            return stored
        return self.commit_transaction()

    def _collect(self) -> list[StoredEvent]:
        aggregates = [o for o in [*self._identity.values(), *self._new] if isinstance(o, Aggregate)]
        return self.collect_events(aggregates)

    def commit_transaction(self) -> list[StoredEvent]:
        """Check versions, then save every row and every event at once (all or nothing)."""
        for obj in self._new:
            apply_defaults(obj, self._tables)
        self._check_versions()
        self._count_versions()
        stored = [*self._flushed, *self._collect()]
        for op in self.take_timer_ops():
            self._tables.apply_timer(op)
        for obj in [*self._identity.values(), *self._new]:
            self._tables.of(type(obj))[key_of(obj)] = snapshot(obj)
        self._append_events(stored)
        self.written.extend(stored)
        # The objects stay usable, as after a session's commit: they are now the loaded state.
        for obj in self._new:
            self._identity[(type(obj), key_of(obj))] = obj
        self._new.clear()
        self._flushed.clear()
        for (cls, key), obj in self._identity.items():
            self._loaded[(cls, key)] = snapshot(obj)
        return stored

    def _check_versions(self) -> None:
        """A loaded aggregate whose committed version moved on since it was loaded: nothing saved."""
        for (cls, key), obj in self._identity.items():
            current = self._tables.of(cls).get(key)
            loaded = self._loaded[(cls, key)]
            if isinstance(obj, Aggregate) and (current is None or current["version"] != loaded["version"]):
                self.rollback()
                raise ConcurrencyError()
        for obj in self._new:
            if key_of(obj) in self._tables.of(type(obj)):
                self.rollback()
                raise OzzyError(f"{type(obj).__name__} {key_of(obj)} already exists")

    def _count_versions(self) -> None:
        """A loaded aggregate counts one change per commit (a new one starts at its column default, 1)."""
        for (cls, key), obj in self._identity.items():
            changed = snapshot(obj) != self._loaded[(cls, key)]
            if isinstance(obj, Aggregate) and (changed or obj.pending_events()):
                obj.version = self._loaded[(cls, key)]["version"] + 1

    def rollback(self) -> None:
        for obj in [*self._identity.values(), *self._new]:
            if isinstance(obj, Aggregate):
                obj.pending_events().clear()
        self.forget_pending()
        self._forget()

    def _forget(self) -> None:
        self._identity.clear()
        self._loaded.clear()
        self._new.clear()
        self._flushed.clear()
