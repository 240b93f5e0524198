"""Health of the pipeline, read from PostgreSQL: backlog, per-handler deliveries, nodes, rates.

Every query here reads an index that covers only unfinished work (or a time range), so the cost
does not grow with the size of the event log.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine

from shared.db import sql
from shared.db.tables import PENDING
from shared.ops import live
from shared.projections.runner import status as projection_status


def _age(moment: datetime | None, now: datetime) -> float | None:
    return round((now - moment).total_seconds(), 3) if moment else None


def backlog(conn: Connection, now: datetime) -> dict[str, Any]:
    row = conn.execute(sql.BACKLOG).one()
    return {
        "undispatched": row.undispatched,
        "oldest_age_seconds": _age(row.oldest, now),
        "parked": conn.execute(sql.PARKED_COUNT).scalar(),
    }


def handlers(conn: Connection, now: datetime, known: list[str]) -> dict[str, dict[str, Any]]:
    """Per handler: pending, retrying (failed, retry scheduled) and dead counts, oldest pending age
    (and ``parked``, an event version newer than a worker knew, when there are any)."""
    result: dict[str, dict[str, Any]] = {
        name: {"pending": 0, "retrying": 0, "dead": 0, "oldest_pending_age_seconds": None} for name in known
    }
    for row in conn.execute(sql.OPEN_BY_HANDLER):
        entry = result.setdefault(
            row.handler, {"pending": 0, "retrying": 0, "dead": 0, "oldest_pending_age_seconds": None}
        )
        entry[row.status] = row.n
        if row.status == PENDING:
            entry["oldest_pending_age_seconds"] = _age(row.oldest, now)
    return result


def nodes(conn: Connection, now: datetime, seen_within: float = 60.0) -> list[dict[str, Any]]:
    return [
        {
            "id": str(r.id),
            "kind": r.kind,
            "host": r.host,
            "pid": r.pid,
            "version": r.version,
            "started_at": r.started_at.isoformat(),
            "heartbeat_age_seconds": _age(r.heartbeat_at, now),
            "stopped": r.stopped_at is not None,
            "info": r.info,
        }
        for r in conn.execute(sql.RECENT_NODES, {"seen_within": seen_within})
    ]


def fast_channel(node_list: list[dict[str, Any]]) -> dict[str, Any]:
    """The fast channel as the live relays see it: connected only if every one of them is."""
    relays = [n for n in node_list if n["kind"] == "relay" and not n["stopped"]]
    states = [n["info"].get("fast_channel", {}) for n in relays]
    if not states:
        return {"state": "unknown", "relays": 0}
    relay_stats = [n["info"].get("relay", {}) for n in relays]
    names = {s.get("state", "connecting") for s in states}
    state = "connected" if names == {"connected"} else ("degraded" if "degraded" in names else "connecting")
    return {
        "state": state,
        "relays": len(relays),
        "reconnects": sum(s.get("reconnects", 0) for s in states),
        "drains_by_notify": sum(r.get("drains_by_notify", 0) for r in relay_stats),
        "drains_by_poll": sum(r.get("drains_by_poll", 0) for r in relay_stats),
        "per_relay": [{"node": n["id"], **s} for n, s in zip(relays, states)],
    }


def listener_failures(node_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cluster-wide listeners stuck on an event, per live node: retrying (with backoff) or stopped
    (``failed``: out of tries, waiting for an operator's retry or skip)."""
    return [
        {"node": n["id"], "kind": n["kind"], "host": n["host"], "pid": n["pid"], "listener": name, **failure}
        for n in node_list if not n["stopped"]
        for name, failure in sorted((n["info"].get("listeners") or {}).get("failures", {}).items())
    ]


def events_per_minute(conn: Connection) -> list[dict[str, Any]]:
    return [{"minute": r.minute.isoformat(), "count": r.n} for r in conn.execute(sql.EVENTS_PER_MINUTE)]


def status(engine: Engine, known_handlers: list[str]) -> dict[str, Any]:
    """Everything the dashboard and ``GET /api/status`` show, in one read."""
    now = datetime.now(timezone.utc)
    with engine.connect() as conn:
        node_list = nodes(conn, now)
        return {
            "backlog": backlog(conn, now),
            "handlers": handlers(conn, now, known_handlers),
            "fast_channel": fast_channel(node_list),
            "nodes": node_list,
            "listener_failures": listener_failures(node_list),
            "projections": projection_status(engine),
            "events_per_minute": events_per_minute(conn),
            # rates and durations from the nodes' heartbeats (the live dashboard, ozzy status)
            "throughput": live.throughput(node_list, known_handlers),
            "at": now.isoformat(),
        }
