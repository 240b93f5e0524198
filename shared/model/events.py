"""Domain events: the ``Event`` base, its type registry, ids, and the causal metadata of new events.

An event type is known by a stable name given in its class statement (``name="loans.approved"``),
never by its Python import path, so moving a module does not orphan the event log. A ``version``
travels with every stored payload; a class may override :meth:`Event.upcast` to read old versions.
"""

from __future__ import annotations

import contextvars
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from shared.errors import DuplicateEventType, EventTypeError, UnknownEventType
from shared.observability import tracing

__all__ = ["Event", "causal_context", "event_class", "new_event_id", "new_metadata", "registered_event_types"]

#: Type name to class. The one registry filled as a side effect of a class statement: declaring an
#: event type *is* registering it (as with Python's own subclass machinery), so a stored event can
#: be decoded by any process that imported its class.
_registry: dict[str, type[Event]] = {}


class Event(BaseModel):
    """Base of every domain event: an immutable pydantic model with a registered type name.

    >>> class LoanApproved(Event, name="loans.approved", version=1):
    ...     application_id: uuid.UUID
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    event_version: ClassVar[int]

    def __init_subclass__(cls, *, name: str | None = None, version: int = 1, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            raise EventTypeError(f"{cls.__qualname__} needs a stable type name: class X(Event, name='ctx.x')")
        if not isinstance(version, int) or version < 1:
            raise EventTypeError(f"{name}: version must be a positive integer")
        cls.event_type = name
        cls.event_version = version
        _register(cls)

    @classmethod
    def upcast(cls, payload: dict[str, Any], version: int) -> dict[str, Any]:
        """Turn a payload stored at an older ``version`` into the current shape (default: as is)."""
        return payload


def _register(cls: type[Event]) -> None:
    existing = _registry.get(cls.event_type)
    if existing is not None and _origin(existing) != _origin(cls):
        raise DuplicateEventType(
            f"event type {cls.event_type!r} is declared by both {_origin(existing)} and {_origin(cls)}"
        )
    _registry[cls.event_type] = cls


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def event_class(type_name: str) -> type[Event]:
    """The class registered under ``type_name``; :class:`UnknownEventType` if this code lacks it."""
    try:
        return _registry[type_name]
    except KeyError:
        raise UnknownEventType(f"unknown event type {type_name!r}") from None


def registered_event_types() -> dict[str, type[Event]]:
    """A copy of the registry: type name to class."""
    return dict(_registry)


# --- metadata and causality -------------------------------------------------------------------

_correlation: contextvars.ContextVar[uuid.UUID | None] = contextvars.ContextVar("ozzy_correlation", default=None)
_causation: contextvars.ContextVar[uuid.UUID | None] = contextvars.ContextVar("ozzy_causation", default=None)
_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("ozzy_actor", default=None)


@contextmanager
def causal_context(
    correlation_id: uuid.UUID | None = None,
    causation_id: uuid.UUID | None = None,
    actor: str | None = None,
) -> Iterator[None]:
    """Within this block, new events carry these ids (a request, or the event a handler handles)."""
    correlation = _correlation.set(correlation_id)
    causation = _causation.set(causation_id)
    acting = _actor.set(actor if actor is not None else _actor.get())
    try:
        yield
    finally:
        _actor.reset(acting)
        _causation.reset(causation)
        _correlation.reset(correlation)


def current_cause() -> uuid.UUID | None:
    """The id of the event being handled right now (the cause of any event written here), if any."""
    return _causation.get()


def new_metadata(event_id: uuid.UUID) -> dict[str, Any]:
    """Metadata for an event being written now: correlation and causation from the context.

    An event written outside any context starts its own correlation (its own id)."""
    correlation = _correlation.get() or event_id
    causation = _causation.get()
    meta: dict[str, Any] = {"correlation_id": str(correlation), "causation_id": str(causation) if causation else None}
    actor = _actor.get()
    if actor is not None:
        meta["actor"] = actor
    tracing.add_context(meta)  # the trace this event belongs to (only while tracing is on)
    return meta


def new_event_id() -> uuid.UUID:
    """A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits.

    Event ids are keys of B-tree indexes on a table that only grows (the event id, and the
    correlation id, which defaults to it). Random version-4 ids land on a random leaf page each, so
    after every checkpoint nearly each insert writes a full page image to the WAL; time-ordered ids
    land on the newest pages. They stay unguessable and unique: 74 random bits per millisecond."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | (rand & (1 << 62) - 1)
    return uuid.UUID(int=value)


def forget_event_type(type_name: str) -> None:
    """Drop a type from the registry (tests that declare a type on the fly clean up with this)."""
    _registry.pop(type_name, None)
