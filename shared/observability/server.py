"""The metrics port of a process: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for
probes (Kubernetes, Docker healthchecks, a load balancer).

``/healthz`` answers 200 while the process's loops run (the checks its composition root gives), 503
otherwise; ``/readyz`` answers 200 when it can do its work (PostgreSQL reachable, its job started;
for web, the application loaded). Both give a small JSON object naming each check. The server is a
few threads of the standard library's WSGI server, apart from the process's own work: a slow scrape
never holds a request or a message.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

from shared.config import StartupError

log = logging.getLogger(__name__)

#: A named check: True when it passes (an exception counts as a failure, with its message).
Check = Callable[[], bool]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not worth a line
        pass


def run_checks(checks: dict[str, Check]) -> tuple[bool, dict[str, str]]:
    """Run each check; all passed, and per check ``ok`` or what failed."""
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            results[name] = "ok" if check() else "failing"
        except Exception as exc:  # noqa: BLE001 - a probe reports, it never raises
            results[name] = f"failing: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return all(v == "ok" for v in results.values()), results


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` in background threads."""

    def __init__(self, host: str, port: int, *, alive: dict[str, Check], ready: dict[str, Check],
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.alive = alive
        self.ready = ready
        self._metrics = make_wsgi_app(registry)
        try:
            self._server = make_server(host, port, self._app, server_class=_Server, handler_class=_QuietHandler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"metrics port {port} is in use; pass another --metrics-port") from exc
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
                raise StartupError(f"cannot bind the metrics port to {host}:{port} ({exc.strerror});"
                                   " check OZZY_METRICS_HOST and --metrics-port") from exc
            raise
        self.port: int = self._server.server_address[1]
        self.host = host
        self._thread: threading.Thread | None = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok, results = run_checks(self.alive if path == "/healthz" else self.ready)
            body = json.dumps({"status": "ok" if ok else "failing", "checks": results}).encode()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
            return [body]
        if path == "/metrics":
            result: Iterable[bytes] = self._metrics(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="ozzy-metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", self.host, self.port)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
