"""Putting deliveries on Redis: used by the relay's drain, the redelivery sweep and the dead-letter
retry, so a message always has the same shape whoever sends it.

The relay is the hot path, so messages are written as JSON text directly around the envelope that
:func:`shared.model.stored.envelope_json` makes from an outbox row. The result is exactly what
``dramatiq.Message.encode`` produces for the same fields (a test holds the two together).
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence

import redis
from redis.typing import EncodableT, FieldT

from shared.channel.pubsub import queue_channel
from shared.delivery.handlers import HandlerSpec
from shared.model.stored import json_text


@functools.lru_cache(maxsize=1024)
def _message_head(queue: str, actor: str) -> str:
    return f'{{"queue_name":{json_text(queue)},"actor_name":{json_text(actor)},"args":['


def message_body(spec: HandlerSpec, env_json: str, redis_id: str, now_ms: int, message_id: str | None = None) -> bytes:
    """A fresh Dramatiq message (a full retry budget) running ``spec`` on the envelope, encoded."""
    return (
        f'{_message_head(spec.queue, spec.name)}{env_json}],'
        f'"kwargs":{{}},"options":{{"redis_message_id":"{redis_id}"}},'
        f'"message_id":"{message_id or uuid.uuid4()}","message_timestamp":{now_ms}}}'
    ).encode()


def random_ids(n: int) -> list[str]:
    """``n`` random version-4 UUIDs as text, from one read of the OS's random source: the relay
    needs two per message, and ``str(uuid.uuid4())`` one by one cost it 7 µs per message."""
    raw = bytearray(os.urandom(16 * n))
    for k in range(0, 16 * n, 16):
        raw[k + 6] = raw[k + 6] & 0x0F | 0x40  # version 4
        raw[k + 8] = raw[k + 8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]


def send(
    client: redis.Redis,
    namespace: str,
    deliveries: Iterable[tuple[HandlerSpec, str]],
    *,
    publish: Sequence[str] = (),
    channel: str | None = None,
    front: bool = False,
) -> None:
    """One pipeline, one round trip: enqueue one message per (handler, envelope JSON), wake each
    queue, and publish ``publish`` (envelope JSON texts) as one JSON array on ``channel``. With
    ``front``, the messages go to the head of their queues (in their order), ahead of any backlog.

    Per queue: one HSET of the bodies and one RPUSH of their ids, the keys Dramatiq's own enqueue
    script writes, a batch at a time. Raises if Redis did not take all of it."""
    pipe = client.pipeline(transaction=False)
    now = int(time.time() * 1000)
    by_queue: dict[str, dict[FieldT, EncodableT]] = defaultdict(dict)
    items = list(deliveries)
    ids = random_ids(2 * len(items))
    for k, (spec, env) in enumerate(items):
        redis_id = ids[2 * k]
        by_queue[spec.queue][redis_id] = message_body(spec, env, redis_id, now, ids[2 * k + 1])
    for queue_name, bodies in by_queue.items():
        key = f"{namespace}:{queue_name}"
        pipe.hset(f"{key}.msgs", mapping=bodies)
        if front:
            pipe.lpush(key, *reversed(list(bodies)))  # consumers pop from the head
        else:
            pipe.rpush(key, *bodies)
        pipe.publish(queue_channel(namespace, queue_name), b"1")
    if channel is not None and publish:
        pipe.publish(channel, "[" + ",".join(publish) + "]")
    if len(pipe):
        pipe.execute()
