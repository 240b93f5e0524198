"""The relay writes messages as JSON text; they must be exactly what Dramatiq and the worker read."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

from dramatiq import Message

from shared import Event
from shared.delivery.handlers import HandlerSpec
from shared.delivery.messages import message_body
from shared.model.stored import StoredEvent, decode, envelope_json


class Shipped(Event, name="unit.shipped"):
    order: str
    note: str


def row(**overrides):  # type: ignore[no-untyped-def]
    values = dict(
        id=42, event_id=uuid.uuid4(), event_type="unit.shipped", event_version=1,
        payload=json.dumps({"order": "A-1", "note": 'quote " backslash \\ ünïcode'}),
        metadata=json.dumps({"correlation_id": str(uuid.uuid4()), "causation_id": None}),
        occurred_at=datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=timezone.utc),
        aggregate_type="orders", aggregate_id='o"1',
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def test_the_envelope_text_decodes_to_the_stored_event() -> None:
    r = row()
    stored = StoredEvent.from_message(json.loads(envelope_json(r)))
    assert (stored.event_id, stored.type, stored.position, stored.aggregate_id) == (r.event_id, "unit.shipped", 42, 'o"1')
    assert decode(stored) == Shipped(order="A-1", note='quote " backslash \\ ünïcode')
    assert json.loads(envelope_json(row(aggregate_type=None, aggregate_id=None)))["aggregate_id"] is None


def test_the_message_body_is_what_dramatiq_encodes_for_the_same_fields() -> None:
    spec = HandlerSpec("unit.ship_it", Shipped, lambda e, u: None, "unit.ship_it")
    env = envelope_json(row())
    body = message_body(spec, env, "redis-id-1", 1_700_000_000_000)
    decoded = Message.decode(body)
    assert (decoded.queue_name, decoded.actor_name, decoded.kwargs) == ("unit.ship_it", "unit.ship_it", {})
    assert list(decoded.args) == [json.loads(env)]
    assert decoded.options == {"redis_message_id": "redis-id-1"}
    assert uuid.UUID(decoded.message_id).version == 4 and decoded.message_timestamp == 1_700_000_000_000
    assert Message.decode(decoded.encode()) == decoded


def test_random_ids_are_distinct_version_4_uuids() -> None:
    from shared.delivery.messages import random_ids

    ids = random_ids(2000)
    parsed = [uuid.UUID(i) for i in ids]
    assert [str(p) for p in parsed] == ids
    assert all(p.version == 4 and p.variant == uuid.RFC_4122 for p in parsed)
    assert len(set(ids)) == 2000 and random_ids(0) == []
