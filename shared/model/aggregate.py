"""Aggregates: mapped classes that change state and record the domain events of that change."""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

from sqlalchemy import Integer, inspect
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from shared.model.base import Base
from shared.model.events import Event

# A process-wide counter keeps the events of several aggregates in one commit in recording order.
_sequence = itertools.count()


def next_sequence() -> int:
    return next(_sequence)


class Aggregate(Base):
    """Base of an aggregate root table.

    ``version`` gives optimistic concurrency: the unit of work increments it on every commit that
    records an event or changes the row, and an UPDATE that finds another version fails with
    :class:`shared.errors.ConcurrencyError`, saving nothing.
    """

    __abstract__ = True
    #: The name stored as ``aggregate_type`` in the event log; defaults to the table name.
    aggregate_type: ClassVar[str | None] = None

    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        # The application sets the version (see UnitOfWork), SQLAlchemy checks it in the UPDATE.
        return {"version_id_col": cls.__table__.c.version, "version_id_generator": False}

    def record(self, event: Event) -> None:
        """Record ``event`` to be written to the outbox when the unit of work commits."""
        self.pending_events().append((next_sequence(), event))
        # Bumping now also makes the instance "modified", which its session holds strongly: an
        # aggregate that only records an event (``uow.get(A, id).record(e)``) is not lost to the GC.
        self.bump_version()

    def bump_version(self) -> None:
        """Count one change of a persistent aggregate (once per transaction)."""
        state = inspect(self)
        if state.persistent and not state.attrs.version.history.has_changes():
            self.version = self.version + 1

    def pending_events(self) -> list[tuple[int, Event]]:
        # Instances loaded by the ORM skip __init__, so the list is created on first use.
        pending: list[tuple[int, Event]] = self.__dict__.setdefault("_ozzy_pending_events", [])
        return pending

    def aggregate_key(self) -> tuple[str, str | None]:
        """(aggregate type, aggregate id) as the event log stores them."""
        name = self.aggregate_type or str(self.__tablename__)
        identity = inspect(type(self)).primary_key_from_instance(self)
        if any(part is None for part in identity):
            return name, None
        return name, ",".join(str(part) for part in identity)
