"""``ozzy replay``: run a handler again over events it handled, or give it the events from before it
existed (backfill), batch by batch, resumable. See :mod:`shared.delivery.replay`."""

from __future__ import annotations

import signal
import sys
import threading
from datetime import datetime, timezone
from typing import Any

import click

from shared.config import load_config


def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("an ISO 8601 time, e.g. 2026-12-01T00:00:00+00:00") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


@click.command()
@click.option("--handler", help="The handler to run again (one this process loads).")
@click.option("--event-type", help="Only events of this type (the handler's own type).")
@click.option("--since", callback=_moment, help="Only events that occurred at or after this time (ISO 8601; UTC if no zone).")
@click.option("--until", callback=_moment, help="Only events that occurred before this time.")
@click.option("--from-position", type=click.IntRange(min=1), help="Only events at or after this dispatch position.")
@click.option("--aggregate-id", help="Only the events of this aggregate.")
@click.option("--dry-run", is_flag=True, help="Print how many events would be replayed, and do nothing.")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=200, show_default=True)
@click.option("--window", type=click.IntRange(min=1), default=None,
              help="At most this many replayed messages wait in the queue (default: the batch size).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="At most this many events per second.")
@click.option("--resume", "resume_id", type=int, default=None, help="Resume this replay job (after a crash or a stop).")
def replay(handler: str | None, event_type: str | None, since: datetime | None, until: datetime | None,
           from_position: int | None, aggregate_id: str | None, dry_run: bool, batch_size: int,
           window: int | None, rate: float | None, resume_id: int | None) -> None:
    """Run HANDLER again over the events it handled, or backfill the ones it never saw.

    Each selected event runs once more as a new attempt (the earlier outcome stays in the delivery's
    history). Batches are throttled so live traffic keeps its latency. Stopped or crashed, the same
    command (same filters) or --resume ID goes on from where the job was."""
    from shared.delivery import replay as replays
    from shared.runtime.root import bootstrap

    if handler is None and resume_id is None:
        raise click.UsageError("say which handler: --handler NAME (or --resume ID)")
    runtime = bootstrap(load_config())
    try:
        filters = replays.Filters(since=since, until=until, from_position=from_position, aggregate_id=aggregate_id)
        try:
            if resume_id is not None:
                job = _resumed(runtime, resume_id)
            elif dry_run:
                counts = replays.count(runtime, str(handler), filters, event_type)
                click.echo(f"{counts['count']} events would be replayed for {handler}: {counts['again']} it handled"
                           f" (run again), {counts['backfill']} it never saw (backfill)")
                return
            else:
                job = _job(runtime, str(handler), filters, event_type)
            throttle = replays.Throttle(batch_size=batch_size, window=window or batch_size, rate=rate)
            final = _run_with_bar(runtime, job, throttle)
        except replays.ReplayError as exc:
            raise click.UsageError(str(exc)) from None
    finally:
        runtime.close()
    click.echo(f"replay {final['id']} {final['status']}: {final['sent']} deliveries sent,"
               f" {final['skipped']} skipped (still unfinished), position {final['position']}")


def _resumed(runtime: Any, job_id: int) -> dict[str, Any]:
    from shared.delivery import replay as replays

    job = replays.get(runtime, job_id)
    if job is None:
        raise replays.ReplayError(f"no replay {job_id}")
    if job["status"] != "running":
        raise replays.ReplayError(f"replay {job_id} is {job['status']}; only a running one can be resumed")
    click.echo(f"resuming replay {job_id} of {job['handler']} at position {job['position']}", err=True)
    return job


def _job(runtime: Any, handler: str, filters: Any, event_type: str | None) -> dict[str, Any]:
    from shared.delivery import replay as replays
    from shared.ops.audit import cli_actor, record_in_session

    existing = replays.unfinished(runtime, handler, filters)
    if existing is not None:
        return _resumed(runtime, existing)
    actor = cli_actor()
    job = replays.get(runtime, replays.create(runtime, handler, filters, event_type=event_type, created_by=actor))
    assert job is not None
    with runtime.session_factory() as session:
        record_in_session(session, "replay.started", actor, target=f"replay:{job['id']}", handler=handler,
                          count=job["total"], filters=job["filters"])
        session.commit()
    click.echo(f"replay {job['id']} of {handler}: {job['total']} events up to position {job['upto']}", err=True)
    return job


def _run_with_bar(runtime: Any, job: dict[str, Any], throttle: Any) -> dict[str, Any]:
    """Run the job under a progress bar; Ctrl-C or SIGTERM stop it after the current batch."""
    from shared.delivery import replay as replays

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    covered = _covered(runtime, job)
    try:
        with click.progressbar(length=max(job["total"], 1), label=f"replaying {job['handler']}",
                               file=sys.stderr, show_pos=True) as bar:
            bar.update(covered)
            try:
                return replays.run(runtime, job["id"], throttle, progress=bar.update, stop=stop)
            except KeyboardInterrupt:
                stop.set()
                click.echo(f"\nstopped; resume with: ozzy replay --resume {job['id']}", err=True)
                return replays.get(runtime, job["id"]) or job
    finally:
        signal.signal(signal.SIGTERM, previous)


def _covered(runtime: Any, job: dict[str, Any]) -> int:
    """How far a resumed job already is (for the bar): the events it sent or skipped."""
    return int(job["sent"]) + int(job["skipped"])
