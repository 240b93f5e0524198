"""Plain Dramatiq, as a user would set it up: a Redis broker and one actor doing the handler's work.

``python -m dramatiq bench.peer_dramatiq --processes 1 --threads 8`` (started by ``bench/peers.py``).
Settings: ``OZZY_PEER_REDIS_URL``, ``OZZY_PEER_REDIS_NAMESPACE``, ``OZZY_PEER_DATABASE_URL``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peer_tasks import record_effect

broker = RedisBroker(url=os.environ["OZZY_PEER_REDIS_URL"], namespace=os.environ["OZZY_PEER_REDIS_NAMESPACE"])
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.peer_record", max_retries=3, min_backoff=100, max_backoff=1000)
def peer_record(item_id: str, seq: int) -> None:
    record_effect(item_id, seq)
