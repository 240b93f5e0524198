"""The unit-of-work port: what business code and handlers write against.

Two adapters implement it: :class:`shared.outbox.unit_of_work.SqlUnitOfWork` on PostgreSQL (state
and outbox rows in one transaction) and :class:`shared.testing.InMemoryUnitOfWork` for unit tests.
One contract test suite (``tests/contract``) holds them to the same behaviour.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, Self, TypeVar

from shared.model.aggregate import Aggregate, next_sequence
from shared.model.events import Event
from shared.model.stored import StoredEvent, to_stored

T = TypeVar("T")


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
