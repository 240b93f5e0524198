"""The stored form of an event, and the one mapper between its three shapes.

An event lives as a typed :class:`~shared.model.events.Event` in business code, as a row of the
outbox (the event log) in PostgreSQL, and as a JSON *envelope* inside Dramatiq messages and pub/sub
publications. :class:`StoredEvent` is the plain data between them; every conversion is here:

=======================  ======================================================================
typed event → stored     :func:`to_stored` (fresh id and causal metadata)
stored → typed event     :func:`decode` (upcasting older versions)
outbox row → stored      :func:`from_row`
outbox row → envelope    :func:`envelope_json` (the relay's hot path: JSON text, no re-encoding)
stored ↔ envelope        :meth:`StoredEvent.to_message`, :meth:`StoredEvent.from_message`
=======================  ======================================================================
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from shared.errors import EventDecodeError
from shared.model.events import Event, event_class, new_event_id, new_metadata

__all__ = ["StoredEvent", "decode", "envelope_json", "from_row", "json_text", "to_stored", "with_dispatch_seq"]

_quote = json.encoder.encode_basestring_ascii  # what json.dumps does to a str, without its wrapper


def json_text(value: str | None) -> str:
    """A JSON string or ``null``, as ``json.dumps`` writes it (ASCII-escaped)."""
    return "null" if value is None else _quote(value)


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
    #: The row's id in the outbox (insertion order); None before it is written.
    position: int | None = None

    @property
    def correlation_id(self) -> uuid.UUID | None:
        value = self.metadata.get("correlation_id")
        return uuid.UUID(value) if value else None

    @property
    def causation_id(self) -> uuid.UUID | None:
        value = self.metadata.get("causation_id")
        return uuid.UUID(value) if value else None

    def to_message(self) -> dict[str, Any]:
        """The JSON-ready envelope a Dramatiq message or a pub/sub publication carries."""
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
        """The inverse of :meth:`to_message` (and of :func:`envelope_json`)."""
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


def from_row(row: Any, *, position: int | None = None) -> StoredEvent:
    """A stored event from an outbox row (payload and metadata as JSON values or JSON text)."""
    payload, metadata = row.payload, row.metadata
    return StoredEvent(
        event_id=row.event_id if isinstance(row.event_id, uuid.UUID) else uuid.UUID(str(row.event_id)),
        type=row.event_type,
        version=row.event_version,
        payload=json.loads(payload) if isinstance(payload, str) else payload,
        metadata=json.loads(metadata) if isinstance(metadata, str) else metadata,
        occurred_at=row.occurred_at,
        aggregate_type=row.aggregate_type,
        aggregate_id=row.aggregate_id,
        position=row.id if position is None else position,
    )


def envelope_json(row: Any) -> str:
    """The envelope of an outbox row as JSON text, what :meth:`StoredEvent.to_message` gives for it.

    The relay's hot path: ``row.payload`` and ``row.metadata`` must be JSON text (selected as
    ``payload::text``) and are spliced in without being decoded and encoded again."""
    return (
        f'{{"event_id":"{row.event_id}","type":{_quote(row.event_type)},"version":{int(row.event_version)},'
        f'"payload":{row.payload},"metadata":{row.metadata},"occurred_at":"{row.occurred_at.isoformat()}",'
        f'"aggregate_type":{json_text(row.aggregate_type)},"aggregate_id":{json_text(row.aggregate_id)},'
        f'"position":{int(row.id)}}}'
    )


def with_dispatch_seq(envelope: str, position: int) -> str:
    """An envelope from :func:`envelope_json` with its dispatch position added (what the relay
    announces to live subscribers once the position is committed)."""
    return f'{envelope[:-1]},"dispatch_seq":{position}}}'


def to_stored(
    event: Event,
    *,
    aggregate_type: str | None = None,
    aggregate_id: str | None = None,
    event_id: uuid.UUID | None = None,
) -> StoredEvent:
    """Serialize ``event`` with a fresh id and metadata from the current causal context."""
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
        # Field names and reasons only: pydantic's own message repeats the input (personal data).
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                             for e in exc.errors(include_input=False, include_url=False))
        raise EventDecodeError(f"{stored.type} v{stored.version} {stored.event_id}: {problems}") from None
