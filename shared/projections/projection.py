"""``Projection``: a read model fed by the event log, in the log's global (dispatch) order.

A projection declares the event types it reads and how each one changes its tables. The runner
(:mod:`shared.projections.runner`) hands it the events in batches, in dispatch order, inside one
transaction that also moves the projection's checkpoint: effects and position commit together, so
each event is applied effectively once, without an inbox. Like ``@handles``, declaring registers
nothing: the composition root collects the projections of ``OZZY_HANDLER_MODULES``.

>>> class LoanCounts(Projection, name="loans.counts", tables=("loan_counts",)):
...     @applies(LoanApproved)
...     def approved(self, event: LoanApproved, ctx: Applied) -> None:
...         ctx.conn.execute(text("UPDATE loan_counts SET n = n + 1 WHERE kind = 'approved'"))

A projection that can do better than one statement per event overrides :meth:`Projection.apply`,
which receives the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeVar, cast

from sqlalchemy import Connection, text

from shared.discovery import import_modules, marked
from shared.errors import HandlerError
from shared.model.events import Event
from shared.model.stored import StoredEvent, decode, from_row

#: The attribute a ``Projection`` subclass carries, for discovery.
MARK = "__ozzy_projection__"
_APPLIES = "__ozzy_applies__"

F = TypeVar("F", bound=Callable[..., None])


class Applied:
    """One event as a projection sees it, with the connection of the batch's transaction (write the
    projection's tables through it). ``type``, ``position``, ``occurred_at`` and ``aggregate_id``
    come straight from the log's row; ``stored`` (payload and metadata parsed) and ``event`` (typed,
    upcast, validated) are built on first use, so a projection that counts by type and time pays
    for neither."""

    __slots__ = ("_row", "conn", "_stored", "_event")

    def __init__(self, row: Any, conn: Connection) -> None:
        self._row = row
        self.conn = conn
        self._stored: StoredEvent | None = None
        self._event: Event | None = None

    @property
    def type(self) -> str:
        return str(self._row.event_type)

    @property
    def position(self) -> int:
        """The event's dispatch position in the log."""
        return int(self._row.dispatch_seq)

    @property
    def occurred_at(self) -> datetime:
        occurred: datetime = self._row.occurred_at
        return occurred

    @property
    def aggregate_id(self) -> str | None:
        return cast("str | None", self._row.aggregate_id)

    @property
    def stored(self) -> StoredEvent:
        if self._stored is None:
            self._stored = from_row(self._row, position=self.position)
        return self._stored

    @property
    def event(self) -> Event:
        """The typed event (upcast from older versions); a payload that does not validate raises
        here, which rolls the batch back (it is tried again: a projection never skips an event)."""
        if self._event is None:
            self._event = decode(self.stored)
        return self._event


def applies(*event_types: type[Event]) -> Callable[[F], F]:
    """Mark a method ``fn(self, event, applied)`` of a projection as how it applies ``event_types``."""
    if not event_types or not all(isinstance(t, type) and issubclass(t, Event) for t in event_types):
        raise HandlerError("@applies needs one or more Event subclasses")

    def mark(fn: F) -> F:
        setattr(fn, _APPLIES, tuple(event_types))
        return fn

    return mark


class Projection:
    """Base of a projection: subclass it with ``name=`` (its stable identity, the key of its
    checkpoint) and ``tables=`` (what :meth:`reset` empties before a rebuild)."""

    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]] = ()
    #: Event types read besides those of the ``@applies`` methods (for an :meth:`apply` override).
    event_types: ClassVar[tuple[type[Event], ...]] = ()
    _methods: ClassVar[dict[str, str]]

    def __init_subclass__(cls, *, name: str | None = None, tables: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not name:
            raise HandlerError(f"{cls.__qualname__} needs a stable name: class X(Projection, name='ctx.what')")
        cls.name = name
        cls.tables = tuple(tables)
        methods: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for event_type in getattr(value, _APPLIES, ()):
                    methods[event_type.event_type] = attr
        cls._methods = methods
        if not methods and not cls.event_types:
            raise HandlerError(f"projection {name!r} reads no event type: use @applies or event_types")
        setattr(cls, MARK, cls)

    @classmethod
    def type_names(cls) -> list[str]:
        """The event type names this projection reads, sorted."""
        return sorted(set(cls._methods) | {t.event_type for t in cls.event_types})

    def apply(self, batch: Sequence[Applied]) -> None:
        """Apply a batch of events, in order (default: each to its ``@applies`` method)."""
        for item in batch:
            getattr(self, self._methods[item.type])(item.event, item)

    def reset(self, conn: Connection) -> None:
        """Empty the projection's tables (a rebuild runs this, then replays the whole log)."""
        if self.tables:
            conn.execute(text(f"TRUNCATE {', '.join(self.tables)}"))


def projections_in(module_names: Iterable[str]) -> list[Projection]:
    """One instance of every projection declared in ``module_names`` (packages walked), by name."""
    found: dict[str, Projection] = {}
    for cls in marked(import_modules(module_names), MARK):
        existing = found.get(cls.name)
        if existing is not None and type(existing) is not cls:
            raise HandlerError(f"two projections are named {cls.name!r}")
        found[cls.name] = cls()
    return [found[n] for n in sorted(found)]
