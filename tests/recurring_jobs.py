"""A recurring job for the end-to-end tests (tests/e2e/test_workflows.py): a tick every second and a
handler that records each occurrence it handles in ``test_side_effects``.

Processes load it with ``OZZY_HANDLER_MODULES='["tests.handlers", "tests.recurring_jobs"]'``: the
relays keep the next occurrence scheduled, the workers run :func:`record_tick`.
"""

from __future__ import annotations

from datetime import datetime

from shared import Event, UnitOfWork, handles, recurring
from tests.domain import SideEffect


class E2ETick(Event, name="e2e.tick", version=1):
    """One occurrence of the job: ``at`` is the occurrence's (whole-second) time."""

    at: datetime


#: Every second, aligned to the epoch: every relay computes the same occurrence times.
EVERY_SECOND = recurring(E2ETick, name="e2e.every_second", every=1)


@handles(E2ETick, name="e2e.tick_recorded", min_backoff=50, max_backoff=200)
def record_tick(event: E2ETick, uow: UnitOfWork) -> None:
    """One row per occurrence handled: counts prove each ran once."""
    uow.add(SideEffect(handler="tick", event_key=event.at.isoformat(), account_id=None))
