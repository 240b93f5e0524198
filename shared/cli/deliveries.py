"""``ozzy deadletters`` and ``ozzy outbox``: dead deliveries and parked events."""

from __future__ import annotations

import click

from shared.cli.failures import OzzyGroup
from shared.cli.output import _show_listing, _unknown
from shared.config import load_config


@click.group(cls=OzzyGroup)
def deadletters() -> None:
    """Dead deliveries: list and retry them."""


DEAD_COLUMNS = ("id", "handler", "event_type", "event_id", "attempts", "reason", "first_failed", "last_failed",
                "last_error")


@deadletters.command("list")
@click.option("--handler", help="Only this handler.")
@click.option("--event-type", help="Only events of this type.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--traceback/--no-traceback", "show_traceback", default=False, help="Print each last error in full.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON (each last error in full).")
def deadletters_list(handler: str | None, event_type: str | None, limit: int, show_traceback: bool,
                     as_json: bool) -> None:
    """List dead deliveries, most recent failure first."""
    from shared.delivery.deadletters import list_dead
    from shared.runtime.root import bootstrap

    runtime = bootstrap(load_config())
    try:
        rows = list_dead(runtime, handler=handler, event_type=event_type, limit=limit)
    finally:
        runtime.close()
    table = []
    for row in rows:
        last_line = ((row.last_error or "").strip().splitlines()[-1:] or [""])[0]
        table.append((row.id, row.handler, row.event_type, row.event_id, row.attempts, row.dead_reason,
                      row.first_failed_at, row.last_failed_at, row.last_error if as_json else last_line))
    lines = [
        f"{row.id}\t{row.handler}\t{row.event_type}\t{row.event_id}\tattempts={row.attempts}"
        f"\t{row.dead_reason}\tfirst={row.first_failed_at:%Y-%m-%d %H:%M:%S}"
        f"\tlast={row.last_failed_at:%Y-%m-%d %H:%M:%S}\t{entry[-1]}"
        for row, entry in zip(rows, table)
    ]
    after = [row.last_error or "" for row in rows] if show_traceback else None
    _show_listing(DEAD_COLUMNS, table, as_json=as_json, lines=lines, after=after)
    if not as_json:
        click.echo(f"{len(rows)} dead deliveries", err=True)


@deadletters.command("retry")
@click.option("--handler", help="Only this handler (one this process loads).")
@click.option("--event-type", help="Only events of this type.")
@click.option("--id", "ids", type=int, multiple=True, help="Only this delivery id (repeatable).")
@click.option("--all", "retry_all", is_flag=True, help="Every dead delivery.")
def deadletters_retry(handler: str | None, event_type: str | None, ids: tuple[int, ...], retry_all: bool) -> None:
    """Enqueue dead deliveries again with a fresh retry budget."""
    from shared.delivery.deadletters import retry_dead
    from shared.runtime.root import bootstrap

    if not (handler or event_type or ids or retry_all):
        raise click.UsageError("say which: --handler, --event-type, --id or --all")
    runtime = bootstrap(load_config())
    try:
        if handler is not None and handler not in runtime.handlers:
            raise _unknown("--handler", handler, list(runtime.handlers), "a handler this process loads (OZZY_HANDLER_MODULES)")
        if event_type is not None and event_type not in runtime.handlers.by_event_type:
            raise _unknown("--event-type", event_type, list(runtime.handlers.by_event_type),
                           "an event type that a handler of this process handles")
        count = retry_dead(runtime, handler=handler, event_type=event_type, ids=ids or None)
    finally:
        runtime.close()
    click.echo(f"{count} dead deliveries enqueued again")


@click.group(cls=OzzyGroup)
def outbox() -> None:
    """The event log's parked rows."""


@outbox.command("unpark")
@click.option("--event-type", "event_types", multiple=True, help="Only this type (repeatable); default all.")
def outbox_unpark(event_types: tuple[str, ...]) -> None:
    """Hand parked events back to the relay (after deploying code that knows their type)."""
    from sqlalchemy import create_engine

    from shared.db import sql

    engine = create_engine(load_config().sqlalchemy_url)
    with engine.begin() as conn:
        count = conn.execute(sql.UNPARK, {"types": list(event_types) or None}).rowcount
    engine.dispose()
    click.echo(f"{count} parked events handed back to the relay")
