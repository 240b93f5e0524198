"""An ordered handler for the framework's own tests (and bench/ordered.py): it records, per key,
the order it ran in and whether two runs of one key ever overlapped."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import defaultdict

from shared import Event, PermanentError, UnitOfWork, handles
from shared.model.events import current_cause
from tests.domain import SideEffect


class Keyed(Event, name="test.keyed", version=1):
    key: str
    n: int


class Tracker:
    """Run order per key, overlaps seen, and the events that fail on purpose (poison)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.runs: dict[str, list[uuid.UUID]] = defaultdict(list)
            self.running: set[str] = set()
            self.overlaps: list[str] = []
            self.poison: set[tuple[str, int]] = set()
            self.max_delay = 0.0

    def enter(self, key: str) -> None:
        with self.lock:
            if key in self.running:
                self.overlaps.append(key)
            self.running.add(key)

    def leave(self, key: str, event_id: uuid.UUID | None) -> None:
        with self.lock:
            self.running.discard(key)
            if event_id is not None:
                self.runs[key].append(event_id)


TRACKER = Tracker()


def _run(event: Keyed, uow: UnitOfWork, handler: str) -> None:
    TRACKER.enter(event.key)
    ran = None
    try:
        if TRACKER.max_delay:
            time.sleep(random.uniform(0, TRACKER.max_delay))
        if (event.key, event.n) in TRACKER.poison:
            raise PermanentError(f"poison {event.key}/{event.n}")
        uow.add(SideEffect(handler=handler, event_key=f"{event.key}/{event.n}"))
        ran = current_cause()
    finally:
        # Recorded before commit: a run that then fails to commit would show up (none should).
        TRACKER.leave(event.key, ran)


@handles(Keyed, name="test.ordered", ordered_by="key", min_backoff=20, max_backoff=50)
def ordered(event: Keyed, uow: UnitOfWork) -> None:
    _run(event, uow, "ordered")


@handles(Keyed, name="test.unordered", min_backoff=20, max_backoff=50)
def unordered(event: Keyed, uow: UnitOfWork) -> None:
    """The same work without ordering (the bench's baseline)."""
    if TRACKER.max_delay:
        time.sleep(random.uniform(0, TRACKER.max_delay))
    uow.add(SideEffect(handler="unordered", event_key=f"{event.key}/{event.n}"))


@handles(Keyed, name="test.replayed", min_backoff=20, max_backoff=50)
def replayed(event: Keyed, uow: UnitOfWork) -> None:
    """Counts its runs (replay and backfill tests); slowed by OZZY_TEST_REPLAY_DELAY."""
    uow.add(SideEffect(handler="replayed", event_key=f"{event.key}/{event.n}"))
    delay = float(os.environ.get("OZZY_TEST_REPLAY_DELAY", "0"))
    if delay:
        time.sleep(delay)
