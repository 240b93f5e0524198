"""Putting events and deliveries on Redis: used by the relay's drain, the redelivery sweep and
the dead-letter retry, so a message always has the same shape whoever sends it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from dramatiq import Message

from shared.broker import OzzyBroker, enqueue_pipelined
from shared.handlers import HandlerSpec


def envelope(row: Any) -> dict[str, Any]:
    """The message form of an outbox row (what handlers and live subscribers receive)."""
    return {
        "event_id": str(row.event_id),
        "type": row.event_type,
        "version": row.event_version,
        "payload": row.payload,
        "metadata": row.metadata,
        "occurred_at": row.occurred_at.isoformat(),
        "aggregate_type": row.aggregate_type,
        "aggregate_id": row.aggregate_id,
        "position": row.id,
    }


def handler_message(spec: HandlerSpec, env: dict[str, Any], now_ms: int) -> Message:
    """A fresh Dramatiq message (a full retry budget) running ``spec`` on ``env``."""
    return Message(
        queue_name=spec.queue,
        actor_name=spec.name,
        args=(env,),
        kwargs={},
        options={},
        message_id=str(uuid.uuid4()),
        message_timestamp=now_ms,
    )


def send(
    broker: OzzyBroker,
    deliveries: Iterable[tuple[HandlerSpec, dict[str, Any]]],
    *,
    publish: Sequence[dict[str, Any]] = (),
    channel: str | None = None,
) -> None:
    """One pipeline, one round trip: publish each of ``publish`` on ``channel``, enqueue one
    message per delivery, wake each queue. Raises if Redis did not take all of it."""
    pipe = broker.client.pipeline(transaction=False)
    if channel is not None:
        for env in publish:
            pipe.publish(channel, json.dumps(env, separators=(",", ":")))
    now = int(time.time() * 1000)
    enqueue_pipelined(broker, pipe, [handler_message(spec, env, now) for spec, env in deliveries])
    if len(pipe):
        pipe.execute()
