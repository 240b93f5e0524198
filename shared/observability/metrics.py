"""The metrics every Ozzy process exports, by the names operators' rules and dashboards use.

They live in prometheus-client's default registry and are recorded whether or not the process
serves them (``--metrics-port``): an increment costs a lock and an add, well under a microsecond,
and the live dashboard reads the worker's figures through the node registry either way.

Handler metrics count each message once: a run that committed observes its duration (so after N
events handled, ``ozzy_handler_duration_seconds_count{handler}`` is N), a failed attempt counts in
``ozzy_handler_failures_total`` by what happens next (``retry``, ``dead``, or ``parked``: set aside
to be delivered later), a message whose (event, handler) was already done counts as a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

#: Handler runs: from a millisecond to the default time limit's neighbourhood.
HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: One relay batch (claim, Redis pipeline, mark, commit): usually milliseconds.
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Failure kinds (label ``kind`` of ``ozzy_handler_failures_total``).
RETRY, DEAD, PARKED = "retry", "dead", "parked"
FAILURE_KINDS = (RETRY, DEAD, PARKED)
#: What woke a relay drain (label ``trigger`` of ``ozzy_relay_drains_total``); ``timer``: a
#: scheduled event fell due.
DRAIN_TRIGGERS = ("notify", "poll", "timer")

handler_duration = Histogram(
    "ozzy_handler_duration_seconds", "Time of a handler run that committed (inbox, handler, its events)",
    ["handler"], buckets=HANDLER_BUCKETS,
)
handler_failures = Counter(
    "ozzy_handler_failures_total", "Failed handler attempts, by what happens next: retry, dead or parked",
    ["handler", "kind"],
)
handler_duplicates = Counter(
    "ozzy_handler_duplicates_skipped_total", "Messages skipped because their (event, handler) was already done",
    ["handler"],
)

relay_dispatched = Counter("ozzy_relay_dispatched", "Events the relay sent to Redis and marked dispatched")
relay_batch_seconds = Histogram(
    "ozzy_relay_batch_seconds", "Time of one relay batch: claim, Redis pipeline, mark dispatched, commit",
    buckets=BATCH_BUCKETS,
)
relay_drains = Counter("ozzy_relay_drains", "Relay drains, by what triggered them", ["trigger"])
#: Registered by relays only (:func:`export_fast_channel`): a 0 from a web or worker process would
#: read as "down" to a rule taking the minimum over instances.
fast_channel_up = Gauge("ozzy_fast_channel_up", "1 while the relay's fast channel (Redis pub/sub) is connected",
                        registry=None)

http_requests = Counter(
    "ozzy_http_requests", "HTTP requests served, by route template, method and status", ["route", "method", "status"]
)
http_request_duration = Histogram(
    "ozzy_http_request_duration_seconds", "Time to serve an HTTP request", ["route", "method", "status"],
    buckets=HTTP_BUCKETS,
)

#: The gauges read from PostgreSQL (:mod:`shared.ops.gauges`), named here so every name is in one place.
OUTBOX_BACKLOG = "ozzy_outbox_backlog"
OUTBOX_OLDEST_AGE = "ozzy_outbox_oldest_age_seconds"
DELIVERIES = "ozzy_deliveries"

#: Every metric family an Ozzy process exports (as Prometheus names them, without suffixes).
METRIC_NAMES = (
    "ozzy_handler_duration_seconds", "ozzy_handler_failures_total", "ozzy_handler_duplicates_skipped_total",
    "ozzy_relay_dispatched_total", "ozzy_relay_batch_seconds", "ozzy_relay_drains_total", "ozzy_fast_channel_up",
    OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, DELIVERIES,
    "ozzy_http_requests_total", "ozzy_http_request_duration_seconds",
)


class HandlerMetrics:
    """The labelled children of one handler, looked up once (a ``labels()`` call per message would
    cost a dict lookup under a lock each time)."""

    __slots__ = ("duration", "duplicates", "failures")

    def __init__(self, handler: str) -> None:
        self.duration = handler_duration.labels(handler)
        self.duplicates = handler_duplicates.labels(handler)
        # Every kind exists from the start, so a rate() over it has a zero to start from.
        self.failures = {kind: handler_failures.labels(handler, kind) for kind in FAILURE_KINDS}


_handlers: dict[str, HandlerMetrics] = {}


def for_handler(handler: str) -> HandlerMetrics:
    """The metrics of ``handler`` (created at first use)."""
    found = _handlers.get(handler)
    if found is None:
        found = _handlers.setdefault(handler, HandlerMetrics(handler))
    return found


def export_fast_channel(connected: Callable[[], bool]) -> None:
    """Export ``ozzy_fast_channel_up`` from this process (a relay), read from ``connected`` at each scrape."""
    fast_channel_up.set_function(lambda: float(connected()))
    try:
        REGISTRY.register(fast_channel_up)
    except ValueError:  # registered already (several relays in one test process)
        pass


def count_failure(handler: str, kind: str) -> None:
    """One failed attempt of ``handler``: ``retry``, ``dead`` or ``parked``."""
    for_handler(handler).failures[kind].inc()


for _trigger in DRAIN_TRIGGERS:
    relay_drains.labels(_trigger)
