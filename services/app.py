"""The web process's application factory: ``ozzy web`` serves ``create_app(runtime)``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify

from shared.web import http
from admin import add_read_only_view, init_admin
from services.loans.model import LoanApplication
from services.loans.web import bp as loans_bp
from shared import Runtime, bootstrap
from shared.channel.pubsub import bounded_client
from shared.db.sql import PING


def create_app(runtime: Runtime | None = None) -> Flask:
    """Build the Flask app around ``runtime`` (a new one from the environment if not given)."""
    rt = runtime or bootstrap()
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    http.install(app, rt)
    app.register_blueprint(loans_bp)
    admin = init_admin(app, rt)
    app.extensions["csrf"].exempt(loans_bp)  # a JSON API for clients, not a cookie-authenticated form
    add_read_only_view(admin, LoanApplication, "Loan applications", category="Example", endpoint="loan_applications")
    health_redis = bounded_client(rt.config.redis_url, 0.5)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        """Database and Redis reachability, reported separately; 503 unless both are up."""
        report = {"database": _check(lambda: _ping_db(rt)), "redis": _check(health_redis.ping)}
        healthy = all(v == "ok" for v in report.values())
        return jsonify({"status": "ok" if healthy else "degraded", **report}), 200 if healthy else 503

    @app.get("/")
    def index():  # type: ignore[no-untyped-def]
        return jsonify(
            {
                "service": "ozzy loan example",
                "endpoints": ["POST /loan-applications", "GET /loan-applications/<id>",
                              "POST /loan-applications/<id>/accept", "GET /loan-stats", "GET /healthz"],
            }
        )

    return app


def _ping_db(rt: Runtime) -> None:
    with rt.engine.connect() as conn:
        conn.execute(PING)


def _check(probe) -> str:  # type: ignore[no-untyped-def]
    """``ok`` or ``down``: the driver's error text names hosts and users, so it goes to the log only."""
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
        logging.getLogger(__name__).warning("health check failed: %s", type(exc).__name__)
        return "down"
    return "ok"
