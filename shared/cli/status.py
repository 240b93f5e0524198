"""``ozzy status``: the dashboard's figures as tables in a terminal (``--watch`` refreshes them)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from shared.cli.output import _show_listing
from shared.config import load_config

HANDLER_COLUMNS = ("handler", "per_s", "p50_ms", "p95_ms", "pending", "lag_s", "retrying", "dead",
                   "failed_retry", "failed_dead", "failed_parked")
NODE_COLUMNS = ("kind", "host", "pid", "version", "heartbeat_s", "state")


def _ms(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds * 1000:.1f}"


def _s(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds:.1f}"


def summary_lines(status: dict[str, Any]) -> list[str]:
    backlog, fast = status["backlog"], status["fast_channel"]
    live = [n for n in status["nodes"] if not n["stopped"]]
    kinds: dict[str, int] = {}
    for node in live:
        kinds[node["kind"]] = kinds.get(node["kind"], 0) + 1
    oldest = backlog["oldest_age_seconds"]
    return [
        f"Pipeline at {status['at'][:19].replace('T', ' ')} UTC",
        f"backlog       {backlog['undispatched']} events, oldest {f'{oldest:.1f} s' if oldest is not None else '-'},"
        f" {backlog['parked']} parked",
        f"events/s      {status['throughput']['events_per_second']:.1f}",
        f"fast channel  {fast['state']} ({fast['relays']} relay{'s' if fast['relays'] != 1 else ''})",
        f"nodes         {len(live)} live" + (": " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) if live else ""),
    ]


def handler_rows(status: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, counts in sorted(status["handlers"].items()):
        live = status["throughput"]["handlers"].get(name, {})
        failures = live.get("failures", {})
        rows.append([name, f"{live.get('per_second', 0.0):.1f}", _ms(live.get("p50_seconds")), _ms(live.get("p95_seconds")),
                     counts["pending"], _s(counts["oldest_pending_age_seconds"]), counts["retrying"], counts["dead"],
                     failures.get("retry", 0), failures.get("dead", 0), failures.get("parked", 0)])
    return rows


def node_rows(status: dict[str, Any]) -> list[list[Any]]:
    return [[n["kind"], n["host"], n["pid"], n["version"], _s(n["heartbeat_age_seconds"]),
             ("gone" if n["info"].get("gone") else "stopped") if n["stopped"] else "live"] for n in status["nodes"]]


def show(status: dict[str, Any]) -> None:
    for line in summary_lines(status):
        click.echo(line)
    click.echo()
    _show_listing(HANDLER_COLUMNS, handler_rows(status), as_json=False)
    click.echo()
    _show_listing(NODE_COLUMNS, node_rows(status), as_json=False)


@click.command("status")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.5), default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (what GET /api/status returns).")
def status(watch: bool, interval: float, as_json: bool) -> None:
    """Show the pipeline now, as the dashboard does.

    Backlog, events/s, per handler throughput, p50/p95, lag and failures, the fast channel and the
    nodes."""
    from shared.ops import monitoring
    from shared.runtime.root import bootstrap

    runtime = bootstrap(load_config())
    try:
        while True:
            current = monitoring.status(runtime.engine, sorted(runtime.handlers))
            if as_json:
                click.echo(json.dumps(current, default=str, indent=2))
            else:
                if watch:
                    click.clear()
                show(current)
            if not watch:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        runtime.close()
