"""``ozzy listeners``: cluster-wide listeners stuck on an event; retry them or skip that event."""

from __future__ import annotations

from typing import Any

import click

from shared.cli.failures import OzzyGroup
from shared.cli.output import _show_listing
from shared.config import load_config


@click.group(cls=OzzyGroup)
def listeners() -> None:
    """Cluster-wide listeners stuck on an event: list, retry, skip.

    As the live nodes last reported them (at each heartbeat)."""


COLUMNS = ("listener", "node", "kind", "host", "state", "position", "event_type", "event_id", "attempts", "error")


def _stuck(name: str | None = None, node: str | None = None) -> list[dict[str, Any]]:
    from sqlalchemy import create_engine

    from shared.ops.monitoring import status

    engine = create_engine(load_config().sqlalchemy_url)
    try:
        failures = status(engine, [])["listener_failures"]
    finally:
        engine.dispose()
    return [f for f in failures if (name is None or f["listener"] == name) and (node is None or f["node"] == node)]


@listeners.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def listeners_list(as_json: bool) -> None:
    """Listeners stuck on an event, retrying or failed.

    Retrying: with backoff; failed: out of tries, stopped until retried or skipped."""
    rows = [(f["listener"], f["node"], f["kind"], f["host"], "failed" if f["failed"] else "retrying", f["position"],
             f["event_type"], f["event_id"], f["attempts"], f["error"]) for f in _stuck()]
    _show_listing(COLUMNS, rows, as_json=as_json)


def _issue(action: str, name: str, node: str | None, position: int | None) -> None:
    import getpass

    from shared.cluster.listeners import ListenerCommand
    from shared.model.events import causal_context
    from shared.runtime.root import bootstrap

    runtime = bootstrap(load_config(), import_handlers=False)
    try:
        with causal_context(actor=f"cli:{getpass.getuser()}"), runtime.unit_of_work() as uow:
            uow.publish(ListenerCommand(action=action, listener=name, node=node, position=position))
            uow.commit()
    finally:
        runtime.close()


@listeners.command("retry")
@click.argument("name")
@click.option("--node", help="Only on this node id (default: every node where it is stuck).")
def listeners_retry(name: str, node: str | None) -> None:
    """Try listener NAME again on its event.

    With a fresh budget of tries, on the event it is stuck on."""
    if not _stuck(name, node):
        raise click.ClickException(f"no live node reports listener {name!r} stuck")
    _issue("retry", name, node, None)
    click.echo(f"retry of {name} sent")


@listeners.command("skip")
@click.argument("name")
@click.option("--position", type=int, required=True, help="The position of the event it is stuck on.")
@click.option("--node", help="Only on this node id (default: every node stuck at that position).")
def listeners_skip(name: str, position: int, node: str | None) -> None:
    """Move listener NAME past its event.

    Only the one event it is stuck on; the listener never runs on it there."""
    if not [f for f in _stuck(name, node) if f["position"] == position]:
        raise click.ClickException(f"no live node reports listener {name!r} stuck at position {position}")
    _issue("skip", name, node, position)
    click.echo(f"skip of position {position} for {name} sent")
