"""Domain events: the ``Event`` base, its type registry, metadata and the stored form.

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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import DuplicateEventType, EventDecodeError, EventTypeError, UnknownEventType

__all__ = [
    "Event",
    "StoredEvent",
    "causal_context",
    "decode",
    "event_class",
    "new_metadata",
    "registered_event_types",
    "to_stored",
]

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
    tokens = [
        (_correlation, _correlation.set(correlation_id)),
        (_causation, _causation.set(causation_id)),
        (_actor, _actor.set(actor if actor is not None else _actor.get())),
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def new_metadata(event_id: uuid.UUID) -> dict[str, Any]:
    """Metadata for an event being written now: correlation and causation from the context.

    An event written outside any context starts its own correlation (its own id)."""
    correlation = _correlation.get() or event_id
    causation = _causation.get()
    meta: dict[str, Any] = {"correlation_id": str(correlation), "causation_id": str(causation) if causation else None}
    actor = _actor.get()
    if actor is not None:
        meta["actor"] = actor
    return meta


# --- stored form ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the outbox stores it and as messages carry it: plain data, one mapper both ways."""

    event_id: uuid.UUID
    type: str
    version: int
    payload: dict[str, Any]
    metadata: dict[str, Any]
    occurred_at: datetime
    aggregate_type: str | None = None
    aggregate_id: str | None = None
    position: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def correlation_id(self) -> uuid.UUID | None:
        value = self.metadata.get("correlation_id")
        return uuid.UUID(value) if value else None

    def to_message(self) -> dict[str, Any]:
        """The JSON-ready dict a Dramatiq message or a pub/sub publication carries."""
        return {
            "event_id": str(self.event_id),
            "type": self.type,
            "version": self.version,
            "payload": self.payload,
            "metadata": self.metadata,
            "occurred_at": self.occurred_at.isoformat(),
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "position": self.position,
        }

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> StoredEvent:
        return cls(
            event_id=uuid.UUID(data["event_id"]),
            type=data["type"],
            version=int(data["version"]),
            payload=data["payload"],
            metadata=data.get("metadata") or {},
            occurred_at=datetime.fromisoformat(data["occurred_at"]),
            aggregate_type=data.get("aggregate_type"),
            aggregate_id=data.get("aggregate_id"),
            position=data.get("position"),
        )


def new_event_id() -> uuid.UUID:
    """A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits.

    Event ids are keys of B-tree indexes on a table that only grows (the event id, and the
    correlation id, which defaults to it). Random version-4 ids land on a random leaf page each, so
    after every checkpoint nearly each insert writes a full page image to the WAL; time-ordered ids
    land on the newest pages. They stay unguessable and unique: 74 random bits per millisecond."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | (rand & (1 << 62) - 1)
    return uuid.UUID(int=value)


def to_stored(
    event: Event,
    *,
    aggregate_type: str | None = None,
    aggregate_id: str | None = None,
    event_id: uuid.UUID | None = None,
) -> StoredEvent:
    """Serialize ``event`` with fresh metadata from the current causal context."""
    eid = event_id or new_event_id()
    return StoredEvent(
        event_id=eid,
        type=event.event_type,
        version=event.event_version,
        payload=event.model_dump(mode="json"),
        metadata=new_metadata(eid),
        occurred_at=datetime.now(timezone.utc),
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
    )


def decode(stored: StoredEvent) -> Event:
    """The typed event of a stored one; :class:`UnknownEventType` or :class:`EventDecodeError`."""
    cls = event_class(stored.type)
    payload = stored.payload
    if stored.version != cls.event_version:
        payload = cls.upcast(dict(payload), stored.version)
    try:
        return cls.model_validate(payload)
    except ValidationError as exc:
        raise EventDecodeError(f"{stored.type} v{stored.version} {stored.event_id}: {exc}") from exc
