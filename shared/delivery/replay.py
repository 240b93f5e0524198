"""Replay and backfill: run a handler again over events of the log, or for the first time over
events from before it existed.

A replay is a job row (``ozzy_replays``) that walks the log in dispatch order, a batch per
transaction, from its position up to the end of the log when it began. For each selected event:

* the handler's delivery is finished (``done``, ``resolved``) or ``dead``: its outcome is copied to
  ``ozzy_delivery_history`` and the delivery becomes ``pending`` again, marked with the replay, so
  the inbox runs it once more (a new attempt; the earlier one stays in the history);
* the handler never saw the event (no delivery): a pending delivery is created (backfill);
* the delivery is unfinished: it runs anyway and is left alone (counted as skipped).

The batch's changes and the job's new position commit together; its messages are sent after that
commit. A crash before the commit leaves the batch to the resumed job; after it, the resumed job
(or, later, the redelivery sweep) sends the replay's pending deliveries again, and the inbox runs
each once. So every selected (event, handler) runs exactly once more, however the job stops.

The throttle keeps live traffic's latency: a new batch is sent only once at most ``window`` of the
job's messages wait in the queue (live messages queue behind at most that many), and, with a
``rate``, no faster than that many events per second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select

from shared.db.sql import replay as sql
from shared.db.tables import REPLAY_CANCELLED, REPLAY_DONE, REPLAY_FAILED, REPLAY_RUNNING, replays
from shared.delivery import ordering
from shared.delivery.handlers import HandlerSpec
from shared.delivery.messages import send
from shared.delivery.wiring import Wiring
from shared.errors import OzzyError
from shared.model.stored import envelope_json

log = logging.getLogger(__name__)


class ReplayError(OzzyError):
    """The replay cannot be done as asked."""


@dataclass(frozen=True)
class Filters:
    """Which events of the handler's type a replay selects (all of them by default)."""

    since: datetime | None = None
    until: datetime | None = None
    from_position: int | None = None
    aggregate_id: str | None = None
    #: One event (a delivery replayed from its page).
    event_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Filters:
        values = dict(data)
        for name in ("since", "until"):
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)


def spec_for(wiring: Wiring, handler: str, event_type: str | None = None) -> HandlerSpec:
    """The handler to replay (one this process runs), checked against ``event_type`` if given."""
    if handler not in wiring.handlers:
        raise ReplayError(f"no handler named {handler!r} in this process (known: {', '.join(sorted(wiring.handlers))})")
    spec = wiring.handlers[handler]
    if event_type is not None and event_type != spec.event_type.event_type:
        raise ReplayError(f"{handler} handles {spec.event_type.event_type}, not {event_type}")
    return spec


def _params(spec: HandlerSpec, filters: Filters, after: int, upto: int) -> dict[str, Any]:
    return {
        "handler": spec.name, "event_type": spec.event_type.event_type, "after": after, "upto": upto,
        "since": filters.since, "until": filters.until, "aggregate_id": filters.aggregate_id,
        "event_id": filters.event_id,
    }


def _start_after(filters: Filters) -> int:
    return max((filters.from_position or 1) - 1, 0)


def count(wiring: Wiring, handler: str, filters: Filters, event_type: str | None = None) -> dict[str, int]:
    """The dry run: ``{"count", "again", "backfill"}`` for the events the replay would select now."""
    spec = spec_for(wiring, handler, event_type)
    with wiring.engine.connect() as conn:
        upto = conn.execute(sql.END_OF_LOG_NOW).scalar_one()
        row = conn.execute(sql.REPLAY_COUNT, _params(spec, filters, _start_after(filters), upto)).one()
    return {"count": row.total, "again": row.again, "backfill": row.total - row.again}


def create(wiring: Wiring, handler: str, filters: Filters, *, event_type: str | None = None,
           created_by: str | None = None) -> int:
    """A new replay job over the log as it is now; return its id (run it with :func:`run`)."""
    spec = spec_for(wiring, handler, event_type)
    with wiring.engine.begin() as conn:
        upto = conn.execute(sql.END_OF_LOG_NOW).scalar_one()
        total = conn.execute(sql.REPLAY_COUNT, _params(spec, filters, _start_after(filters), upto)).one().total
        job_id: int = conn.execute(
            insert(replays).values(handler=spec.name, filters=filters.to_json(), position=_start_after(filters),
                                   upto=upto, total=total, created_by=created_by).returning(replays.c.id)
        ).scalar_one()
    log.info("replay %d of %s created: %d events up to position %d", job_id, spec.name, total, upto)
    return job_id


def unfinished(wiring: Wiring, handler: str, filters: Filters) -> int | None:
    """The latest unfinished job of ``handler`` with exactly these filters (to resume), if any."""
    with wiring.engine.connect() as conn:
        return conn.execute(
            select(replays.c.id).where(replays.c.handler == handler, replays.c.status == REPLAY_RUNNING,
                                       replays.c.filters == filters.to_json())
            .order_by(replays.c.id.desc()).limit(1)
        ).scalar()


def get(wiring: Wiring, job_id: int) -> dict[str, Any] | None:
    with wiring.engine.connect() as conn:
        row = conn.execute(select(replays).where(replays.c.id == job_id)).mappings().first()
    return job_json(row) if row is not None else None


def job_json(row: Any) -> dict[str, Any]:
    data = dict(row)
    for name in ("created_at", "updated_at", "heartbeat_at", "finished_at"):
        data[name] = data[name].isoformat() if data.get(name) else None
    return data


def cancel(wiring: Wiring, job_id: int) -> bool:
    """Stop a running job at its next batch (what it sent still runs)."""
    with wiring.engine.begin() as conn:
        return bool(conn.execute(
            replays.update().where(replays.c.id == job_id, replays.c.status == REPLAY_RUNNING)
            .values(status=REPLAY_CANCELLED, finished_at=func.now(), updated_at=func.now())
        ).rowcount)


@dataclass
class Throttle:
    """How fast a job goes: its batch size, the most of its messages waiting in the queue, and an
    optional ceiling in events per second."""

    batch_size: int = 200
    window: int = 200
    rate: float | None = None
    #: How often the queue is looked at while the window is full.
    poll: float = 0.05


def run(wiring: Wiring, job_id: int, throttle: Throttle | None = None,
        progress: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run (or resume) job ``job_id`` to its end; ``progress(n)`` after each batch of ``n`` events.
    Returns the job as :func:`get` does. ``stop`` ends it early, resumable."""
    throttle = throttle or Throttle()
    job = get(wiring, job_id)
    if job is None:
        raise ReplayError(f"no replay {job_id}")
    spec = spec_for(wiring, job["handler"])
    filters = Filters.from_json(job["filters"])
    _resend_unsent(wiring, spec, job_id)
    try:
        while not (stop is not None and stop.is_set()):
            started = time.monotonic()
            done = _batch(wiring, spec, filters, job_id, throttle.batch_size)
            if done is None:
                break
            if progress is not None:
                progress(done)
            _wait(wiring, spec, job_id, throttle, started, done, stop)
    except Exception as exc:
        _finish(wiring, job_id, REPLAY_FAILED, f"{type(exc).__name__}: {exc}"[:500])
        raise
    return get(wiring, job_id) or {}


def _batch(wiring: Wiring, spec: HandlerSpec, filters: Filters, job_id: int, limit: int) -> int | None:
    """One batch in one transaction, its messages sent after commit; the number of events it
    covered, or None when the job is over (finished here, or cancelled)."""
    with wiring.engine.begin() as conn:
        job = conn.execute(sql.LOCK_JOB, {"id": job_id}).mappings().one()
        if job["status"] != REPLAY_RUNNING:
            return None
        rows = conn.execute(sql.REPLAY_BATCH, {**_params(spec, filters, job["position"], job["upto"]),
                                               "limit": limit}).all()
        if not rows:
            conn.execute(sql.FINISH_JOB, {"id": job_id, "status": REPLAY_DONE, "error": None})
            log.info("replay %d of %s done", job_id, spec.name)
            return None
        ids = [row.event_id for row in rows]
        reset = {r[0] for r in conn.execute(sql.REPLAY_RESET, {"handler": spec.name, "event_ids": ids,
                                                                "replay_id": job_id})}
        fresh = [row for row in rows if row.event_id not in reset]
        keys = [ordering.keys_for([spec], row)[0] if spec.ordered_by else None for row in fresh]
        added = {r[0] for r in conn.execute(sql.REPLAY_BACKFILL, {
            "handler": spec.name, "replay_id": job_id, "event_ids": [row.event_id for row in fresh],
            "keys": keys, "seqs": [row.dispatch_seq for row in fresh]})} if fresh else set()
        chosen = [row for row in rows if row.event_id in reset or row.event_id in added]
        conn.execute(sql.ADVANCE_JOB, {"id": job_id, "position": rows[-1].dispatch_seq, "sent": len(chosen),
                                       "skipped": len(rows) - len(chosen)})
    _send(wiring, spec, chosen)
    return len(rows)


def _send(wiring: Wiring, spec: HandlerSpec, rows: list[Any]) -> None:
    if not rows:
        return
    try:
        send(wiring.redis, wiring.config.redis_namespace, [(spec, envelope_json(row)) for row in rows])
    except Exception as exc:  # noqa: BLE001 - pending in PostgreSQL: the resume or the sweep sends them
        log.warning("replay: could not send %d deliveries of %s (resent later): %s", len(rows), spec.name, exc)


def _resend_unsent(wiring: Wiring, spec: HandlerSpec, job_id: int) -> None:
    """At a (re)start: the job's deliveries still pending may never have reached Redis (a crash
    between a batch's commit and its send); send them again (the inbox skips duplicates)."""
    with wiring.engine.connect() as conn:
        rows = list(conn.execute(sql.REPLAY_UNSENT, {"handler": spec.name, "replay_id": job_id}))
    if rows:
        log.info("replay %d: sending %d pending deliveries again", job_id, len(rows))
        _send(wiring, spec, rows)


def _wait(wiring: Wiring, spec: HandlerSpec, job_id: int, throttle: Throttle, started: float, done: int,
          stop: threading.Event | None) -> None:
    if throttle.rate:
        time.sleep(max(0.0, done / throttle.rate - (time.monotonic() - started)))
    while not (stop is not None and stop.is_set()):
        with wiring.engine.connect() as conn:
            waiting = conn.execute(sql.REPLAY_OUTSTANDING, {"handler": spec.name, "replay_id": job_id}).scalar_one()
        if waiting <= throttle.window:
            return
        time.sleep(throttle.poll)


def _finish(wiring: Wiring, job_id: int, status: str, error: str | None) -> None:
    try:
        with wiring.engine.begin() as conn:
            conn.execute(sql.FINISH_JOB, {"id": job_id, "status": status, "error": error})
    except Exception:  # noqa: BLE001 - the job stays running, resumable
        log.exception("could not record the end of replay %d", job_id)


def run_in_background(wiring: Wiring, job_id: int, throttle: Throttle | None = None) -> threading.Thread:
    """Run a job on a daemon thread of this process (the web process, for the back office and the
    API). If the process dies, the job stays ``running`` at its position: resume it."""

    def target() -> None:
        try:
            run(wiring, job_id, throttle)
        except Exception:  # noqa: BLE001 - recorded on the job row
            log.exception("replay %d failed", job_id)

    thread = threading.Thread(target=target, name=f"ozzy-replay-{job_id}", daemon=True)
    thread.start()
    return thread


def history(wiring: Wiring, delivery_id: int) -> list[dict[str, Any]]:
    """A delivery's earlier outcomes, oldest first (each replay adds one)."""
    from shared.db.tables import delivery_history as h

    with wiring.engine.connect() as conn:
        rows = conn.execute(select(h).where(h.c.delivery_id == delivery_id).order_by(h.c.id)).mappings().all()
    return [{k: (v.isoformat() if isinstance(v, datetime) else str(v) if k == "event_id" else v)
             for k, v in row.items()} for row in rows]


__all__ = ["Filters", "ReplayError", "Throttle", "cancel", "count", "create", "get", "history", "run",
           "run_in_background", "unfinished"]
