"""The test kit: unit-test aggregates, use cases and handlers without PostgreSQL or Redis.

:class:`InMemoryStore` is a real, in-memory implementation of the unit-of-work port (not a mock): it
keeps committed rows and the event log, checks aggregate versions, and runs handlers with the same
inbox rule as the worker (each (event, handler) pair once)::

    store = InMemoryStore()
    with store.unit_of_work() as uow:                      # a use case, as the web layer runs it
        application_id = submit_application(uow, "Ada", "ada@example.com", Decimal(500))
    store.run_until_idle([run_credit_check, decide_application, notify_approved])
    assert store.get(LoanApplication, application_id).status == "approved"

One contract test suite holds it to the PostgreSQL unit of work's behaviour. What it does not do:
SQL (``SqlUnitOfWork.execute``), relationships and database-side defaults are PostgreSQL's only.

For integration tests on the real servers, :func:`shared.testing.pipeline.run_until_idle` runs the
real relay and the real handlers synchronously in the test's process.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from shared.cluster.cache import installed
from shared.delivery.handlers import HandlerRegistry, HandlerSpec, specs_of
from shared.model.events import Event, causal_context
from shared.model.stored import StoredEvent, decode, to_stored
from shared.testing.memory import InMemoryUnitOfWork, Tables

__all__ = ["InMemoryStore", "InMemoryUnitOfWork", "InMemoryValues"]

T = TypeVar("T")
Handler = HandlerSpec | Callable[..., Any]


@dataclass
class InMemoryValues:
    """Runtime settings and feature flags for tests, as a dict each."""

    settings_by_key: dict[str, Any]
    flags_by_name: dict[str, bool]

    def settings(self) -> dict[str, Any]:
        return self.settings_by_key

    def flags(self) -> dict[str, bool]:
        return self.flags_by_name


class InMemoryStore:
    """Committed state, the event log and the inbox of an in-memory "database"."""

    def __init__(self, settings: dict[str, Any] | None = None, flags: dict[str, bool] | None = None) -> None:
        #: What ``shared.settings.get`` and ``shared.flags.is_enabled`` answer while the store runs
        #: handlers (change them between steps as an operator would).
        self.values = InMemoryValues(dict(settings or {}), dict(flags or {}))
        self.tables = Tables()
        #: Every committed event, in commit order (the outbox).
        self.log: list[StoredEvent] = []
        #: (event id, handler name) pairs already handled: the inbox.
        self.done: set[tuple[uuid.UUID, str]] = set()

    # --- writing and reading --------------------------------------------------------------------

    def unit_of_work(self) -> InMemoryUnitOfWork:
        """A unit of work over this store; commit it to save (as with ``runtime.unit_of_work()``)."""
        return InMemoryUnitOfWork(self.tables, self.log.extend)

    def get(self, cls: type[T], ident: Any) -> T | None:
        """A committed object by primary key (a fresh copy), or None."""
        with self.unit_of_work() as uow:
            return uow.get(cls, ident)

    def all(self, cls: type[T], **equal: Any) -> list[T]:
        """Committed objects of ``cls`` whose attributes equal ``equal``, in primary-key order."""
        with self.unit_of_work() as uow:
            return uow.all(cls, **equal)

    def events(self, *types: type[Event]) -> list[Event]:
        """The committed events (of ``types``, if given), decoded, in order."""
        names = {t.event_type for t in types}
        return [decode(s) for s in self.log if not names or s.type in names]

    # --- time -----------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The store's clock: real time plus however far the test moved it."""
        return self.tables.now()

    def advance(self, by: timedelta | float) -> int:
        """Move the clock forward (a timedelta or seconds) and fire what became due; return how
        many fired. Time never passes by itself: a test moves it."""
        self.tables.offset += by if isinstance(by, timedelta) else timedelta(seconds=by)
        return self.fire_due()

    def fire_due(self) -> int:
        """Move every due scheduled event into the log, earliest first, as a relay does."""
        due = sorted((t for t in self.tables.timers if t.status == "scheduled" and t.due_at <= self.now()),
                     key=lambda t: t.due_at)
        for timer in due:
            timer.status = "fired"
            meta = {**timer.stored.metadata, "due_at": timer.due_at.isoformat()}
            self.log.append(replace(timer.stored, metadata=meta, occurred_at=self.now()))
        return len(due)

    def scheduled(self, *types: type[Event]) -> list[tuple[datetime, Event]]:
        """The events still waiting (of ``types``, if given), with their due times, earliest first."""
        names = {t.event_type for t in types}
        waiting = [t for t in self.tables.timers if t.status == "scheduled" and (not names or t.stored.type in names)]
        return [(t.due_at, decode(t.stored)) for t in sorted(waiting, key=lambda t: t.due_at)]

    def publish(self, *events: Event) -> list[StoredEvent]:
        """Commit ``events`` to the log as a use case with no aggregate would."""
        with self.unit_of_work() as uow:
            for event in events:
                uow.publish(event)
            return uow.commit()

    # --- handling -------------------------------------------------------------------------------

    def handle(self, handler: Handler, event: Event | StoredEvent) -> list[Event]:
        """Run one handler on one event as a worker would: once per (event, handler), in one
        transaction with the events it raises (caused by this one); return those events.

        A typed event is first stored and decoded again, so a payload that does not survive the
        trip fails here as it would in production."""
        stored = event if isinstance(event, StoredEvent) else to_stored(event)
        specs = [s for s in specs_of(handler) if s.event_type.event_type == stored.type]
        if len(specs) != 1:
            raise ValueError(f"{handler!r} has {len(specs)} handlers of {stored.type}")
        return [decode(s) for s in self._deliver(specs[0], stored)]

    def run_until_idle(self, handlers: Iterable[Handler], *, max_deliveries: int = 10_000) -> int:
        """Deliver every event of the log to each of ``handlers`` that handles its type, including
        the events they raise, until nothing is left; return how many deliveries ran. A handler's
        exception propagates (its transaction is rolled back, as on a failed attempt)."""
        registry = HandlerRegistry(handlers)
        ran = 0
        position = 0
        while position < len(self.log):
            stored = self.log[position]
            position += 1
            for spec in registry.by_event_type.get(stored.type, ()):
                if (stored.event_id, spec.name) in self.done:
                    continue
                if ran >= max_deliveries:
                    raise RuntimeError(f"more than {max_deliveries} deliveries: do the handlers loop?")
                self._deliver(spec, stored)
                ran += 1
        return ran

    def _deliver(self, spec: HandlerSpec, stored: StoredEvent) -> list[StoredEvent]:
        if (stored.event_id, spec.name) in self.done:
            return []
        event = decode(stored)
        with installed(self.values), InMemoryUnitOfWork(self.tables, self.log.extend, managed=True) as uow:
            with causal_context(correlation_id=stored.correlation_id, causation_id=stored.event_id):
                spec.fn(event, uow)
                written = uow.commit_transaction()
        self.done.add((stored.event_id, spec.name))
        return written
