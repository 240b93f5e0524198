"""Recent figures for the live dashboard, read off the metrics at each node heartbeat.

A worker's node info carries, per handler, what happened since its previous heartbeat (runs, their
duration histogram, failures) and the totals since it started; a relay's carries its dispatch rate.
The dashboard merges the workers' windows: rates add up, histograms add up bucket by bucket and give
p50 and p95 the way Prometheus's ``histogram_quantile`` does. Nothing here touches the hot path: it
reads the counters the middleware keeps anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client.utils import floatToGoString

from shared.observability import metrics


def _handler_samples() -> dict[str, dict[str, Any]]:
    """Per handler: cumulative bucket counts (in :data:`metrics.HANDLER_BUCKETS` order, then +Inf),
    count and sum of runs, failures by kind, duplicates."""
    out: dict[str, dict[str, Any]] = {}

    def entry(handler: str) -> dict[str, Any]:
        return out.setdefault(handler, {"buckets": {}, "count": 0.0, "sum": 0.0, "failures": {}, "duplicates": 0.0})

    for family in metrics.handler_duration.collect():
        for sample in family.samples:
            e = entry(sample.labels["handler"])
            if sample.name.endswith("_bucket"):
                e["buckets"][sample.labels["le"]] = sample.value
            elif sample.name.endswith("_count"):
                e["count"] = sample.value
            elif sample.name.endswith("_sum"):
                e["sum"] = sample.value
    for family in metrics.handler_failures.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                entry(sample.labels["handler"])["failures"][sample.labels["kind"]] = sample.value
    for family in metrics.handler_duplicates.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                entry(sample.labels["handler"])["duplicates"] = sample.value
    for e in out.values():
        by_le = e.pop("buckets")
        e["cumulative"] = [by_le.get(_le(b), 0.0) for b in metrics.HANDLER_BUCKETS] + [by_le.get("+Inf", e["count"])]
    return out


def _le(bound: float) -> str:
    label: str = floatToGoString(bound)  # type: ignore[no-untyped-call]  # how prometheus-client writes ``le``
    return label


def quantile(q: float, counts: Sequence[float], bounds: Sequence[float] = metrics.HANDLER_BUCKETS) -> float | None:
    """The ``q`` quantile of a histogram given as per-bucket (not cumulative) counts, the last one
    for +Inf; linear within a bucket, as Prometheus's ``histogram_quantile``. None when empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for k, n in enumerate(counts):
        if seen + n >= rank and n > 0:
            if k >= len(bounds):  # in +Inf: the highest finite bound is all that is known
                return float(bounds[-1])
            lower = bounds[k - 1] if k > 0 else 0.0
            return lower + (bounds[k] - lower) * (rank - seen) / n
        seen += n
    return float(bounds[-1])


class Window:
    """What changed since the previous :meth:`handlers` call (at most every ``min_interval`` s)."""

    def __init__(self, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._previous: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._last: dict[str, Any] = {}

    def handlers(self) -> dict[str, Any]:
        """Per handler: ``handled`` and ``per_second`` in the window, its per-bucket ``buckets``,
        ``p50_seconds`` and ``p95_seconds``, and totals since start: ``handled_total``, ``failures``
        by kind, ``duplicates``; plus ``window_seconds``."""
        with self._lock:
            now = time.monotonic()
            if self._previous is not None and now - self._previous[0] < self.min_interval:
                return self._last
            current = _handler_samples()
            since, before = self._previous if self._previous is not None else (now, {})
            elapsed = now - since
            result: dict[str, Any] = {}
            for handler, cur in current.items():
                old = before.get(handler)
                cumulative = [c - (old["cumulative"][k] if old else 0.0) for k, c in enumerate(cur["cumulative"])]
                buckets = [cumulative[0]] + [cumulative[k] - cumulative[k - 1] for k in range(1, len(cumulative))]
                handled = cur["count"] - (old["count"] if old else 0.0)
                result[handler] = {
                    "handled": int(handled),
                    "per_second": round(handled / elapsed, 3) if elapsed > 0 else 0.0,
                    "buckets": [int(b) for b in buckets],
                    "p50_seconds": quantile(0.5, buckets),
                    "p95_seconds": quantile(0.95, buckets),
                    "handled_total": int(cur["count"]),
                    "failures": {k: int(v) for k, v in cur["failures"].items()},
                    "duplicates": int(cur["duplicates"]),
                }
            self._previous = (now, current)
            self._last = {"window_seconds": round(elapsed, 3), "handlers": result}
            return self._last


class Rate:
    """The rate of a growing count between two samples (the relay's dispatches per second)."""

    def __init__(self) -> None:
        self._previous: tuple[float, float] | None = None
        self._rate = 0.0

    def sample(self, count: float) -> float:
        now = time.monotonic()
        if self._previous is not None and now - self._previous[0] >= 0.5:
            self._rate = max(count - self._previous[1], 0.0) / (now - self._previous[0])
            self._previous = (now, count)
        elif self._previous is None:
            self._previous = (now, count)
        return round(self._rate, 3)
