"""Recurring jobs: an event raised on a schedule (cron or a fixed interval), declared in code.

    class NightlyReportDue(Event, name="reports.nightly_due"):
        at: datetime                                   # the occurrence's time

    nightly = recurring(NightlyReportDue, name="reports.nightly", cron="0 2 * * *", missed="run_once")

Each occurrence is a scheduled event (:mod:`shared.delivery.timers`) whose id is derived from the
job's name and the occurrence's time, and whose key names the job: however many relays run, one
occurrence is scheduled at a time and each enters the event log once. When it fires, the relay
schedules the next one; handlers of the event type then run like any others.

Occurrences missed while no relay ran (the one waiting was due more than ``missed_after`` seconds
before a relay started): ``missed="run_once"`` fires it once at start (one run, however many were
missed); ``missed="skip"`` cancels it and waits for the next occurrence in the future.

Interval jobs are aligned to the Unix epoch (every 15 minutes means :00, :15, ...), so every relay
computes the same occurrence times. An operator can pause a job (its waiting occurrence is
cancelled) and resume it (the next future occurrence is scheduled).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from sqlalchemy import Connection, Engine

from shared.db import sql
from shared.discovery import import_modules
from shared.errors import HandlerError
from shared.model.events import Event

log = logging.getLogger(__name__)

Missed = Literal["run_once", "skip"]
_IDS = uuid.UUID("6f7a1c1e-6b1f-4c55-9a51-0f5e4c1a9d2e")


@dataclass(frozen=True)
class RecurringJob:
    """A declared job: its name, the event it raises, its schedule and its missed-run policy."""

    name: str
    event_type: type[Event]
    cron: str | None = None
    every: timedelta | None = None
    missed: Missed = "run_once"
    missed_after: float = 60.0

    @property
    def key(self) -> str:
        """The scheduled-event key of this job's waiting occurrence."""
        return f"recurring:{self.name}"

    @property
    def schedule(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {self.every}"

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after ``moment``."""
        if self.every is not None:
            step = self.every.total_seconds()
            return datetime.fromtimestamp((math.floor(moment.timestamp() / step) + 1) * step, timezone.utc)
        from apscheduler.triggers.cron import CronTrigger  # the process side only; declaring is light

        fields = (self.cron or "").split()
        if len(fields) != 5:
            raise HandlerError(f"recurring job {self.name!r}: a cron schedule has five fields, got {self.cron!r}")
        minute, hour, day, month, weekdays = fields
        trigger = CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=_weekdays(weekdays),
                              timezone=timezone.utc)
        found: datetime | None = trigger.get_next_fire_time(None, moment + timedelta(microseconds=1))
        if found is None:
            raise HandlerError(f"recurring job {self.name!r}: {self.cron!r} never occurs again")
        return found

    def occurrence(self, at: datetime) -> tuple[uuid.UUID, Event]:
        """The event of the occurrence at ``at``, with an id every relay derives alike."""
        return uuid.uuid5(_IDS, f"{self.name}@{at.isoformat()}"), self.event_type.model_validate({"at": at})


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 is Sunday, 1 Monday) as APScheduler's day names: its
    own numbers start at Monday, so ``from_crontab("... 1")`` would mean Tuesday."""
    if field == "*":
        return field
    days: list[str] = []
    for part in field.split(","):
        body, _, step = part.partition("/")
        if body == "*":
            first, last = 0, 6
        elif "-" in body:
            a, b = body.split("-")
            first, last = _day(a), _day(b)
        else:
            first = last = _day(body)
            if step:
                last = 6
        days.extend(_DAYS[d] for d in range(first, last + 1, int(step or 1)))
    return ",".join(dict.fromkeys(days))


def _day(token: str) -> int:
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    if token.lower()[:3] in _DAYS:
        return _DAYS.index(token.lower()[:3])
    raise HandlerError(f"not a day of the week: {token!r}")


def recurring(event_type: type[Event], *, name: str, cron: str | None = None, every: timedelta | float | None = None,
              missed: Missed = "run_once", missed_after: float = 60.0) -> RecurringJob:
    """Declare a job that raises ``event_type`` (which must have an ``at: datetime`` field) on a
    ``cron`` schedule (five fields, UTC) or ``every`` interval (a timedelta or seconds)."""
    if (cron is None) == (every is None):
        raise HandlerError(f"recurring job {name!r}: give exactly one of cron= or every=")
    if "at" not in event_type.model_fields:
        raise HandlerError(f"recurring job {name!r}: {event_type.__name__} needs an 'at: datetime' field")
    if missed not in ("run_once", "skip"):
        raise HandlerError(f"recurring job {name!r}: missed must be 'run_once' or 'skip'")
    interval = every if isinstance(every, timedelta) or every is None else timedelta(seconds=every)
    if interval is not None and interval.total_seconds() <= 0:
        raise HandlerError(f"recurring job {name!r}: every= must be positive")
    job = RecurringJob(name, event_type, cron, interval, missed, missed_after)
    if cron is not None:
        job.next_after(datetime.now(timezone.utc))  # a malformed expression fails at declaration
    return job


def jobs_in(module_names: Iterable[str]) -> list[RecurringJob]:
    """Every recurring job declared at module level in ``module_names`` (packages are walked)."""
    found: dict[str, RecurringJob] = {}
    for module in import_modules(module_names):
        for value in vars(module).values():
            if isinstance(value, RecurringJob):
                found.setdefault(value.name, value)
    return list(found.values())


# --- keeping the next occurrence scheduled (run by the relays) --------------------------------------


def ensure_scheduled(engine: Engine, jobs: Iterable[RecurringJob], *, at_start: bool = False) -> int:
    """Make sure each job that is not paused has its next occurrence waiting; return how many
    occurrences were scheduled. Safe on any number of relays at once: the job's row is locked."""
    scheduled = 0
    for job in jobs:
        with engine.begin() as conn:
            scheduled += _ensure(conn, job, at_start)
    return scheduled


def _ensure(conn: Connection, job: RecurringJob, at_start: bool) -> int:
    conn.execute(sql.UPSERT_RECURRING, {"name": job.name, "schedule": job.schedule, "missed": job.missed})
    row = conn.execute(sql.LOCK_RECURRING, {"name": job.name}).one()
    if row.paused:
        return 0
    now = datetime.now(timezone.utc)
    waiting = conn.execute(sql.WAITING_BY_KEY, {"key": job.key}).scalar()
    if waiting is not None:
        if not (at_start and job.missed == "skip" and waiting < now - timedelta(seconds=job.missed_after)):
            return 0
        conn.execute(sql.CANCEL_SCHEDULED, {"ids": [], "keys": [job.key]})
        log.info("recurring job %s: skipped the occurrence of %s, missed while no relay ran", job.name, waiting)
    due = job.next_after(max(now, row.next_due_at or now))
    for _ in range(100):  # an occurrence cancelled by a pause keeps its id: take the one after it
        event_id, event = job.occurrence(due)
        meta = {"correlation_id": str(event_id), "causation_id": None, "recurring": job.name}
        params = {"event_id": event_id, "event_type": event.event_type, "event_version": event.event_version,
                  "payload": event.model_dump_json(), "metadata": json.dumps(meta), "due_at": due, "key": job.key}
        if conn.execute(sql.INSERT_OCCURRENCE, params).first() is not None:
            conn.execute(sql.RECURRING_SCHEDULED, {"name": job.name, "next_due_at": due, "key": job.key})
            return 1
        due = job.next_after(due)
    raise HandlerError(f"recurring job {job.name!r}: no free occurrence in 100 tries")


def pause(engine: Engine, name: str) -> bool:
    """Pause a job: its waiting occurrence is cancelled and no other is scheduled; False if unknown."""
    with engine.begin() as conn:
        found = conn.execute(sql.SET_RECURRING_PAUSED, {"name": name, "paused": True}).first() is not None
        if found:
            conn.execute(sql.CANCEL_SCHEDULED, {"ids": [], "keys": [f"recurring:{name}"]})
    return found


def resume(engine: Engine, name: str, jobs: Iterable[RecurringJob] = ()) -> bool:
    """Resume a paused job; its next future occurrence is scheduled (by ``jobs``, this process's
    declarations, or else by the relays within a sweep). False if unknown."""
    with engine.begin() as conn:
        found = conn.execute(sql.SET_RECURRING_PAUSED, {"name": name, "paused": False}).first() is not None
    ensure_scheduled(engine, [j for j in jobs if j.name == name])
    return found


__all__ = ["RecurringJob", "ensure_scheduled", "jobs_in", "pause", "recurring", "resume"]
