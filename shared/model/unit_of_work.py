"""The unit-of-work port: what business code and handlers write against.

Two adapters implement it: :class:`shared.outbox.unit_of_work.SqlUnitOfWork` on PostgreSQL (state
and outbox rows in one transaction) and :class:`shared.testing.InMemoryUnitOfWork` for unit tests.
One contract test suite (``tests/contract``) holds them to the same behaviour.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Self, TypeVar

from shared.model.aggregate import Aggregate, next_sequence
from shared.model.events import Event
from shared.model.stored import StoredEvent, to_stored

T = TypeVar("T")


@dataclass(frozen=True)
class Scheduled:
    """An event to be delivered at ``due_at``, written with the transaction that schedules it."""

    stored: StoredEvent
    due_at: datetime
    key: str | None = None


@dataclass(frozen=True)
class Cancel:
    """Cancel the waiting event with this id, or the one this key names."""

    event_id: uuid.UUID | None = None
    key: str | None = None


TimerOp = Scheduled | Cancel


def due_time(at: datetime | None, after: timedelta | float | None, now: datetime) -> datetime:
    """``at`` (time-zone aware), or ``now`` plus ``after`` (a timedelta or seconds)."""
    if (at is None) == (after is None):
        raise ValueError("give exactly one of at= or after=")
    if at is not None:
        if at.tzinfo is None:
            raise ValueError("at= needs a time zone (datetime.now(timezone.utc), say)")
        return at
    assert after is not None
    return now + (after if isinstance(after, timedelta) else timedelta(seconds=after))


class UnitOfWork(ABC):
    """A transaction over aggregates and events, rolled back unless committed.

    >>> with runtime.unit_of_work() as uow:
    ...     uow.add(LoanApplication.submit(...))
    ...     uow.commit()

    ``commit`` saves the aggregates and writes every event they recorded (and every event given to
    :meth:`publish`) with them, atomically. Inside a handler the framework owns the transaction:
    ``commit`` there only writes what is pending, and the handler's effects commit together with
    its idempotency record when it returns.
    """

    def __init__(self) -> None:
        self._loose: list[tuple[int, Event]] = []
        self._timer_ops: list[TimerOp] = []
        #: Every event this unit of work has written so far, in order.
        self.written: list[StoredEvent] = []

    # --- state ----------------------------------------------------------------------------------

    @abstractmethod
    def add(self, obj: Any) -> None:
        """Track a new aggregate (or any mapped object) in this transaction."""

    @abstractmethod
    def get(self, cls: type[T], ident: Any, *, for_update: bool = False) -> T | None:
        """Load an object by primary key, optionally locking it until commit; None if absent."""

    @abstractmethod
    def all(self, cls: type[T], **equal: Any) -> list[T]:
        """Every object of ``cls`` whose attributes equal ``equal``, in primary-key order."""

    def publish(self, event: Event) -> None:
        """Write ``event`` with this transaction although no aggregate recorded it."""
        self._loose.append((next_sequence(), event))

    def schedule(
        self, event: Event, *, at: datetime | None = None, after: timedelta | float | None = None,
        key: str | None = None, replace: bool = False,
    ) -> uuid.UUID:
        """Have ``event`` delivered at ``at`` or ``after`` a delay (seconds or a timedelta), if not
        cancelled first; return its event id. It is saved with this transaction, and waits in the
        database (not in Redis) for as long as it takes. ``key`` names it, for cancelling by name;
        a key names one waiting event at a time (``replace`` cancels the one it named before)."""
        stored = to_stored(event)
        if replace and key is not None:
            self.cancel_scheduled(key=key)
        elif key is not None and any(isinstance(op, Scheduled) and op.key == key for op in self._timer_ops):
            raise ValueError(f"this unit of work already schedules an event named {key!r} (use replace=True)")
        self._timer_ops.append(Scheduled(stored, due_time(at, after, self.now()), key))
        return stored.event_id

    def cancel_scheduled(self, event_id: uuid.UUID | None = None, *, key: str | None = None) -> bool:
        """Cancel a scheduled event that has not fired yet, by id or by key, with this transaction
        (a rollback undoes it). True if one was waiting; False if none was, or it already fired: a
        relay firing it at this moment wins or loses the race whole, so the answer is exact."""
        if (event_id is None) == (key is None):
            raise ValueError("give exactly one of event_id or key=")
        pending = [op for op in self._timer_ops
                   if isinstance(op, Scheduled) and (op.stored.event_id == event_id or (key and op.key == key))]
        self._timer_ops = [op for op in self._timer_ops if op not in pending]
        return self._cancel_saved(Cancel(event_id, key)) or bool(pending)

    @abstractmethod
    def _cancel_saved(self, cancel: Cancel) -> bool:
        """Cancel a waiting event saved by an earlier transaction; True if there was one."""

    def now(self) -> datetime:
        """The time ``schedule(after=...)`` counts from (the in-memory adapter's clock can be moved)."""
        return datetime.now(timezone.utc)

    def forget_pending(self) -> None:
        """Drop the loose events and timer changes not yet written (on rollback)."""
        self._loose.clear()
        self._timer_ops.clear()

    def take_timer_ops(self) -> list[TimerOp]:
        """The schedules and cancellations recorded since the last call, in order (for adapters)."""
        ops, self._timer_ops = self._timer_ops, []
        return ops

    # --- transaction ----------------------------------------------------------------------------

    @abstractmethod
    def commit(self) -> list[StoredEvent]:
        """Save state and events atomically; return the events written by this call.

        A version conflict saves nothing and raises :class:`shared.errors.ConcurrencyError`."""

    @abstractmethod
    def rollback(self) -> None:
        """Forget every change since the last commit."""

    def close(self) -> None:
        """Roll back what was not committed and release the connection (if any)."""
        self.rollback()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- shared by the adapters -----------------------------------------------------------------

    def collect_events(self, aggregates: list[Aggregate]) -> list[StoredEvent]:
        """Take the events recorded by ``aggregates`` and published loose, in recording order."""
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
