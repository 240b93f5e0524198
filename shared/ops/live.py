"""The live figures of the dashboard and ``ozzy status``: rates and durations from the nodes'
heartbeats, beside the counts :mod:`shared.ops.monitoring` reads from PostgreSQL.

Each worker reports, at every heartbeat, what its handlers did since the previous one (runs, a
duration histogram) and its failure totals; each relay its dispatch rate (see
:mod:`shared.observability.window`). Here the live nodes' reports are merged: rates add up, the
histograms add up bucket by bucket and give p50 and p95. Nothing is read but the node rows the
status already holds.
"""

from __future__ import annotations

from typing import Any

from shared.observability import metrics
from shared.observability.window import quantile

#: A report older than this (a node that stopped heartbeating) is left out of the rates.
FRESH_SECONDS = 30.0


def _fresh(node: dict[str, Any], kind: str) -> bool:
    age = node.get("heartbeat_age_seconds")
    return node["kind"] == kind and not node["stopped"] and age is not None and age <= FRESH_SECONDS


def throughput(node_list: list[dict[str, Any]], known_handlers: list[str]) -> dict[str, Any]:
    """``events_per_second`` (the relays' dispatch rate) and, per handler: ``per_second``,
    ``p50_seconds``, ``p95_seconds`` over the workers' last heartbeat windows, and ``failures``
    (retry, dead, parked) and ``duplicates`` since the live workers started."""
    events_per_second = sum(float(n["info"].get("dispatched_per_second") or 0.0)
                            for n in node_list if _fresh(n, "relay"))
    merged: dict[str, dict[str, Any]] = {name: _empty() for name in known_handlers}
    for node in node_list:
        if not _fresh(node, "worker"):
            continue
        for name, stats in ((node["info"].get("handler_stats") or {}).get("handlers") or {}).items():
            entry = merged.setdefault(name, _empty())
            entry["per_second"] += float(stats.get("per_second") or 0.0)
            entry["handled_total"] += int(stats.get("handled_total") or 0)
            entry["duplicates"] += int(stats.get("duplicates") or 0)
            for kind, n in (stats.get("failures") or {}).items():
                entry["failures"][kind] = entry["failures"].get(kind, 0) + int(n)
            buckets = stats.get("buckets") or []
            if len(buckets) == len(entry["_buckets"]):
                entry["_buckets"] = [a + b for a, b in zip(entry["_buckets"], buckets)]
    for entry in merged.values():
        buckets = entry.pop("_buckets")
        entry["per_second"] = round(entry["per_second"], 2)
        entry["p50_seconds"] = _round(quantile(0.5, buckets))
        entry["p95_seconds"] = _round(quantile(0.95, buckets))
    return {"events_per_second": round(events_per_second, 2), "handlers": merged}


def _empty() -> dict[str, Any]:
    return {"per_second": 0.0, "p50_seconds": None, "p95_seconds": None, "handled_total": 0, "duplicates": 0,
            "failures": {kind: 0 for kind in metrics.FAILURE_KINDS},
            "_buckets": [0] * (len(metrics.HANDLER_BUCKETS) + 1)}


def _round(value: float | None) -> float | None:
    return round(value, 6) if value is not None else None
