"""``ozzy projections``: rebuild a projection from the whole log, and see each one's position and lag."""

from __future__ import annotations

import click

from shared.cli.failures import OzzyGroup
from shared.cli.output import _show_listing, _unknown
from shared.config import load_config


@click.group(cls=OzzyGroup)
def projections() -> None:
    """Projections: read models fed by the event log."""


STATUS_COLUMNS = ("name", "state", "position", "end_of_log", "lag", "applied", "updated_at", "last_error")


@projections.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def projections_status(as_json: bool) -> None:
    """Each projection's position and lag.

    Its position in the log, the end of the log and the lag between them."""
    from shared.projections.runner import status
    from shared.runtime.root import bootstrap

    runtime = bootstrap(load_config())
    try:
        rows = {row["name"]: row for row in status(runtime.engine)}
        for projection in runtime.projections:  # declared but never run yet: at 0
            rows.setdefault(projection.name, {"name": projection.name, "state": "new", "position": 0,
                                              "end_of_log": None, "lag": None, "applied": 0, "updated_at": None,
                                              "last_error": None})
    finally:
        runtime.close()
    table = [tuple(row.get(c) for c in STATUS_COLUMNS) for row in sorted(rows.values(), key=lambda r: r["name"])]
    _show_listing(STATUS_COLUMNS, table, as_json=as_json)


@projections.command("rebuild")
@click.argument("name")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=None,
              help="Events per transaction (default OZZY_BATCH_SIZE).")
@click.option("--pause", type=click.FloatRange(0, 10), default=0.0, show_default=True,
              help="Seconds between batches, to leave room for live traffic.")
def projections_rebuild(name: str, batch_size: int | None, pause: float) -> None:
    """Empty projection NAME and replay the whole log.

    The system keeps running meanwhile: the relays follow the same checkpoint, so when the rebuild
    reaches the end of the log the projection is live again, with no gap and nothing counted twice."""
    from shared.projections.runner import rebuild
    from shared.runtime.root import bootstrap

    runtime = bootstrap(load_config())
    try:
        by_name = {p.name: p for p in runtime.projections}
        if name not in by_name:
            raise _unknown("NAME", name, list(by_name), "a projection this process loads (OZZY_HANDLER_MODULES)")
        with click.progressbar(length=1, label=f"rebuilding {name}", show_pos=True, file=None) as bar:
            def progress(position: int, end: int) -> None:
                bar.length = max(end, 1)
                bar.update(min(position, bar.length) - bar.pos)

            applied = rebuild(runtime.engine, by_name[name], batch_size or runtime.config.batch_size,
                              progress=progress, pause=pause)
    finally:
        runtime.close()
    click.echo(f"{name} rebuilt: {applied} events applied; it is live again")
