"""What the web process records per request: the HTTP metrics (by route template, never by raw
path, so the number of series stays bounded), the request's correlation id on every log record,
and the request's span (the root of the trace its events carry on)."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from shared import logs
from shared.observability import metrics, tracing

#: The route label of a request that matched no route (404s by any path are one series).
UNMATCHED = "unmatched"


def install(app: Flask) -> None:
    """Add the hooks to ``app``; call it after the hook that sets ``g.correlation_id``."""

    @app.before_request
    def _observe_start() -> None:
        g.ozzy_started = time.perf_counter()
        correlation = g.get("correlation_id")
        g.ozzy_log_token = logs.bind(correlation_id=str(correlation)) if correlation is not None else None
        if tracing.active():
            route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
            g.ozzy_span = tracing.start(f"{request.method} {route}", kind="SERVER", **{
                "http.request.method": request.method, "http.route": route, "url.path": request.path})

    @app.after_request
    def _observe_response(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        labels = (route, request.method, str(response.status_code))
        metrics.http_requests.labels(*labels).inc()
        started = g.get("ozzy_started")  # unset if a hook before ours answered the request itself
        if started is not None:
            metrics.http_request_duration.labels(*labels).observe(time.perf_counter() - started)
        g.ozzy_status = response.status_code
        return response

    @app.teardown_request
    def _observe_end(exc: BaseException | None) -> None:
        span = g.pop("ozzy_span", None)
        if span is not None:
            tracing.end(span, error=exc, **{"http.response.status_code": g.get("ozzy_status", 500)})
        token = g.pop("ozzy_log_token", None)
        if token is not None:
            logs.unbind(token)
