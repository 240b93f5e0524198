"""Rolling deploys: an event version newer than this worker knows is parked, not dead.

During a rolling deploy, new code may write ``loans.approved`` version 2 while an old worker, which
knows only version 1, still consumes the queue. Decoding it there would fail (or, worse, drop
fields), and the delivery would die as an invalid payload. Instead the old worker parks the
delivery (status ``parked``, reason recorded, no retry used) and acknowledges the message. Every
worker, at start and every ``OZZY_SWEEP_INTERVAL``, sends on the parked deliveries of its handlers
whose version it knows: once a new worker is up, they run there. (An old worker that picks one up
again parks it again; nothing is lost and no retry budget is spent.)
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from shared.db import sql
from shared.delivery.handlers import HandlerSpec
from shared.delivery.messages import send
from shared.delivery.wiring import Wiring
from shared.errors import UnknownEventType
from shared.model.events import event_class
from shared.model.stored import StoredEvent, envelope_json

log = logging.getLogger(__name__)


def known_version(type_name: str) -> int | None:
    """The newest version of ``type_name`` this code knows (None: the type is unknown here)."""
    try:
        return event_class(type_name).event_version
    except UnknownEventType:
        return None


def too_new(stored: StoredEvent) -> bool:
    """True if ``stored`` was written by newer code: a version above the one this code knows."""
    known = known_version(stored.type)
    return known is not None and stored.version > known


def park(wiring: Wiring, spec: HandlerSpec, stored: StoredEvent) -> None:
    """Park the delivery of ``stored`` to ``spec``; it waits for a worker that knows its version."""
    reason = f"event version {stored.version} of {stored.type} is newer than this worker knows ({known_version(stored.type)})"
    with wiring.engine.begin() as conn:
        conn.execute(sql.PARK_DELIVERY, {"event_id": stored.event_id, "handler": spec.name, "reason": reason})
    log.warning("%s parked %s %s: %s", spec.name, stored.type, stored.event_id, reason)


def send_parked_known(wiring: Wiring, batch_size: int = 500) -> int:
    """Send on every parked delivery of this worker's handlers whose event version it knows;
    return how many. Safe to run from any number of workers at once."""
    handlers = [spec for spec in wiring.handlers.values()]
    params = {"handlers": [s.name for s in handlers], "versions": [s.event_type.event_version for s in handlers],
              "limit": batch_size}
    total = 0
    try:
        while True:
            with wiring.engine.connect() as conn, conn.begin():
                rows = conn.execute(sql.CLAIM_PARKED_KNOWN, params).all()
                if not rows:
                    break
                send(wiring.redis, wiring.config.redis_namespace,
                     [(wiring.handlers[r.handler], envelope_json(r)) for r in rows])
                conn.execute(sql.UNPARK_DELIVERIES, {"ids": [r.delivery_id for r in rows]})
            total += len(rows)
            if len(rows) < batch_size:
                break
    except SQLAlchemyError as exc:  # the next sweep tries again
        log.warning("could not send parked deliveries on: %s", exc)
    if total:
        log.info("sent on %d parked deliveries whose event version this worker knows", total)
    return total
