"""Events: stable names, registry errors, lossless round trips, causal metadata."""

from __future__ import annotations

import enum
import json
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError

from shared import DuplicateEventType, Event, UnknownEventType, causal_context
from shared.errors import EventDecodeError, EventTypeError
from shared.model.events import event_class
from shared.model.stored import StoredEvent, decode, to_stored


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Line(BaseModel, frozen=True):
    sku: str
    qty: int
    price: Decimal


class Everything(Event, name="unit.everything", version=3):
    id: uuid.UUID
    amount: Decimal
    at: datetime
    color: Color
    lines: tuple[Line, ...]
    note: str | None = None
    count: int = 0
    ratio: float = 0.5
    flag: bool = False


def _sample() -> Everything:
    return Everything(
        id=uuid.uuid4(),
        amount=Decimal("12345678.90"),
        at=datetime(2026, 11, 26, 13, 0, 1, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        color=Color.BLUE,
        lines=(Line(sku="A-1", qty=2, price=Decimal("0.10")), Line(sku="B", qty=1, price=Decimal("1E+2"))),
        note="ünïcode ✓",
        count=-7,
        ratio=0.1,
        flag=True,
    )


def test_round_trip_through_json_keeps_every_field_type_exactly() -> None:
    # Given an event with UUID, Decimal, aware datetime, enum, nested models and optionals
    event = _sample()
    # When it is stored, sent as JSON and decoded again
    wire = json.loads(json.dumps(to_stored(event).to_message()))
    back = decode(StoredEvent.from_message(wire))
    # Then it is equal, with the same types and the same time zone offset ...
    assert back == event
    assert isinstance(back.id, uuid.UUID) and back.id == event.id
    assert back.at == event.at and back.at.utcoffset() == timedelta(hours=5, minutes=30)
    assert back.color is Color.BLUE
    # ... and the decimals keep their exact digits and exponent (equality alone ignores them:
    # Decimal("12345678.9") == Decimal("12345678.90"))
    assert isinstance(back.amount, Decimal)
    assert [str(d) for d in (back.amount, back.lines[0].price, back.lines[1].price)] == ["12345678.90", "0.10", "1E+2"]


def test_type_name_and_version_come_from_the_class_statement_not_the_module_path() -> None:
    stored = to_stored(_sample())
    assert (stored.type, stored.version) == ("unit.everything", 3)
    assert event_class("unit.everything") is Everything


def test_events_are_immutable_and_reject_unknown_fields() -> None:
    event = _sample()
    with pytest.raises(ValidationError):
        event.count = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Everything.model_validate({**event.model_dump(mode="json"), "surprise": 1})


def test_registering_the_same_name_twice_fails_at_class_creation() -> None:
    with pytest.raises(DuplicateEventType, match="unit.everything"):

        class Impostor(Event, name="unit.everything"):
            x: int


def test_an_event_class_needs_a_name_and_a_positive_version() -> None:
    with pytest.raises(EventTypeError):

        class Nameless(Event):
            x: int

    with pytest.raises(EventTypeError):

        class BadVersion(Event, name="unit.bad_version", version=0):
            x: int


def test_unknown_type_and_invalid_payload_raise_framework_errors() -> None:
    good = to_stored(_sample())
    unknown = StoredEvent(**{**_fields(good), "type": "unit.nope"})
    with pytest.raises(UnknownEventType):
        decode(unknown)
    broken = StoredEvent(**{**_fields(good), "payload": {**good.payload, "amount": "lots"}})
    with pytest.raises(EventDecodeError, match="unit.everything"):
        decode(broken)


def test_old_versions_are_upcast_before_validation() -> None:
    class Renamed(Event, name="unit.renamed", version=2):
        full_name: str

        @classmethod
        def upcast(cls, payload: dict, version: int) -> dict:
            if version == 1:
                payload["full_name"] = payload.pop("name")
            return payload

    old = StoredEvent(
        event_id=uuid.uuid4(), type="unit.renamed", version=1, payload={"name": "Ada"},
        metadata={}, occurred_at=datetime.now(timezone.utc),
    )
    assert decode(old) == Renamed(full_name="Ada")


def test_metadata_takes_correlation_and_causation_from_the_context() -> None:
    # Outside any context an event starts its own correlation
    alone = to_stored(_sample())
    assert alone.metadata["correlation_id"] == str(alone.event_id)
    assert alone.metadata["causation_id"] is None
    # Inside a handler's context it joins the conversation and names its cause
    correlation, cause = uuid.uuid4(), uuid.uuid4()
    with causal_context(correlation_id=correlation, causation_id=cause, actor="alice"):
        child = to_stored(_sample())
    assert child.metadata == {"correlation_id": str(correlation), "causation_id": str(cause), "actor": "alice"}
    assert to_stored(_sample()).metadata["causation_id"] is None  # the context was restored


def _fields(stored: StoredEvent) -> dict:
    return {f: getattr(stored, f) for f in StoredEvent.__dataclass_fields__ if f != "extra"}


def test_event_ids_are_rfc_9562_version_7_and_ordered_by_millisecond(monkeypatch) -> None:
    import time

    from shared.model.events import new_event_id

    clock = iter([1_800_000_000_000_000_000 + k * 1_000_000 for k in range(1000)])  # ns, 1 ms apart
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    ids = [new_event_id() for _ in range(1000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert ids[0].int >> 80 == 1_800_000_000_000  # the first 48 bits are the Unix time in ms
    # Within one millisecond the 74 random bits keep them distinct
    monkeypatch.setattr(time, "time_ns", lambda: 1_800_000_000_000_000_000)
    assert len({new_event_id() for _ in range(10_000)}) == 10_000
    assert to_stored(_sample()).event_id.version == 7
