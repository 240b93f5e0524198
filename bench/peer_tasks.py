"""The work every peer's task does, the same as our handler ``bench.record_item``: one
``bench_effects`` row holding ``time.time()`` taken as the task body starts, written through a
SQLAlchemy session and committed (no outbox, no inbox).

Loaded by ``bench/peers.py`` and by the peer worker processes it starts
(``bench/peer_dramatiq.py``, ``bench/peer_procrastinate.py``); the database is
``OZZY_PEER_DATABASE_URL`` (a SQLAlchemy URL), read when the first task runs.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from bench.bench_app import BenchEffect

_engine: Engine | None = None
_lock = threading.Lock()


def engine() -> Engine:
    global _engine
    with _lock:
        if _engine is None:
            # As many connections as a worker has threads (both peers run 8, like ``ozzy worker``).
            _engine = create_engine(os.environ["OZZY_PEER_DATABASE_URL"], pool_size=10, max_overflow=10)
        return _engine


def record_effect(item_id: str, seq: int) -> None:
    started = time.time()
    with Session(engine()) as session:
        session.add(BenchEffect(item_id=uuid.UUID(item_id), seq=seq, started_at=started))
        session.commit()
