"""Scheduled events fire here: the relay moves due rows of ``ozzy_scheduled`` into the event log.

A unit of work schedules an event (``uow.schedule(event, at=..., after=...)``); the row waits in
PostgreSQL, never in Redis. Every relay keeps a timer for the earliest waiting row and fires what is
due (:data:`shared.db.sql.FIRE_DUE`: claimed with ``SKIP LOCKED``, marked fired and written to the
outbox in one statement, so each fires once across relays and crashes). Its drain then dispatches
the new rows like any event. A commit that schedules something wakes the relays through the fast
channel, so a timer earlier than the one they wait for is re-armed at once; their poll is the
fallback. A relay reads the earliest due time in the pipeline of each pass's first claim (no round
trip of its own) and calls :func:`fire_due` only when that time has come, so a wake-up for
committed events costs the timers nothing.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from shared.db import sql

log = logging.getLogger(__name__)

#: The longest a relay's timer waits before it asks the database again (a safety net only: a
#: commit that schedules something wakes the relay at once).
MAX_WAIT = 60.0
#: How long a relay waits before asking again for a due row it could not claim (locked elsewhere).
LOCKED_BACKOFF = 0.1


def fire_due(engine: Engine, limit: int = 1000) -> int:
    """Fire every due event, a batch of ``limit`` at a time; return how many fired.

    Each batch is one statement run on its own (autocommit): one round trip, atomic as a
    transaction of its own would be, without the BEGIN and COMMIT round trips."""
    total = 0
    while True:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            fired, logged = conn.execute(sql.FIRE_DUE, {"limit": limit}).one()
        if fired != logged:  # the event id is already in the log: it fired before (a replay of a restore)
            log.warning("%d scheduled events were already in the event log", fired - logged)
        total += int(fired)
        if fired < limit:
            return total


def seconds_until_next(engine: Engine) -> float | None:
    """Seconds until the earliest waiting event is due (0 if overdue); None if nothing waits."""
    with engine.connect() as conn:
        seconds = conn.execute(sql.NEXT_DUE).scalar()
    return None if seconds is None else max(0.0, float(seconds))
