"""The back office (Flask-Admin at ``/admin``) and the management API (``/api``).

``init_admin(app, runtime)`` mounts both on a Flask app; the application adds views of its own
tables to the returned :class:`flask_admin.Admin`.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

from flask import Flask
from flask_admin import Admin
from flask_admin.theme import Bootstrap4Theme
from flask_wtf.csrf import CSRFProtect

from admin import api, auth, db
from admin import replay as _replay  # also adds /api/replays... to api.bp (before it is registered)
from admin import feed as _feed  # noqa: F401 - registers GET /api/feed on api.bp
from admin.listeners import ListenersView  # also registers POST /api/listeners/... on api.bp
from admin.audit import AuditView
from admin.models import Delivery, NodeRow, OutboxEvent, RecurringRow, ScheduledRow
from admin.scheduled import ScheduledView
from admin.workflows import RecurringView, SagasView
from shared.workflows.instances import SagaInstance
from admin.views import (
    DashboardView,
    DeadLettersView,
    DeliveriesView,
    EventLogView,
    FlagsView,
    NodesView,
    ReadOnlyModelView,
    SettingsView,
)
from shared.cluster import values as dynamic
from shared.runtime import Runtime

log = logging.getLogger(__name__)

__all__ = ["ReadOnlyModelView", "add_read_only_view", "init_admin"]


def configure_security(app: Flask, runtime: Runtime) -> CSRFProtect:
    """SECRET_KEY (required outside dev mode, at least 32 characters), cookie flags, CSRF on every
    form. A missing or short key is a StartupError (a ConfigurationError) that says how to make one."""
    from shared.config import StartupError

    min_length = 32  # 32 characters of token_urlsafe carry 192 bits
    settings = runtime.config
    key = settings.secret_key
    make_one = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
    if not key:
        if not settings.dev:
            raise StartupError(f"SECRET_KEY is required: set it to the output of `{make_one}`"
                               " (or OZZY_DEV=1, only on a development machine)")
        key = secrets.token_urlsafe(32)
        log.warning("dev mode: generated a SECRET_KEY; logins end when this process restarts")
    elif len(key) < min_length and not settings.dev:
        raise StartupError(f"SECRET_KEY is too short ({len(key)} characters, at least {min_length}):"
                           f" set it to the output of `{make_one}`")
    app.config.update(
        SECRET_KEY=key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not settings.dev,  # HTTPS in production; plain http on localhost in dev
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SECURE=not settings.dev,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        WTF_CSRF_TIME_LIMIT=None,  # valid for the session's life
    )
    csrf = CSRFProtect(app)
    csrf.exempt(api.bp)  # checked in api._authenticate, only for cookie-authenticated calls
    return csrf


def init_admin(app: Flask, runtime: Runtime) -> Admin:
    configure_security(app, runtime)
    scoped = db.install(app, runtime.session_factory)
    auth.login_manager.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(api.bp)
    admin = Admin(
        app,
        name="Ozzy",
        url="/admin",
        index_view=DashboardView(name="Dashboard", url="/admin"),
        theme=Bootstrap4Theme(base_template="admin/ozzy_base.html", fluid=True),
    )
    with db.plain_session_accepted():
        admin.add_view(EventLogView(OutboxEvent, scoped, name="Event log", endpoint="events"))
        admin.add_view(DeliveriesView(Delivery, scoped, name="Deliveries", endpoint="deliveries"))
        admin.add_view(DeadLettersView(Delivery, scoped, name="Dead letters", endpoint="deadletters"))
        admin.add_view(SettingsView(dynamic.Setting, scoped, name="Settings", endpoint="settings"))
        admin.add_view(FlagsView(dynamic.FeatureFlag, scoped, name="Feature flags", endpoint="flags"))
        admin.add_view(SagasView(SagaInstance, scoped, name="Sagas", endpoint="sagas", category="Workflows"))
        admin.add_view(ScheduledView(ScheduledRow, scoped, name="Scheduled events", endpoint="scheduled",
                                     category="Workflows"))
        admin.add_view(RecurringView(RecurringRow, scoped, name="Recurring jobs", endpoint="recurring",
                                     category="Workflows"))
        admin.add_view(NodesView(NodeRow, scoped, name="Nodes", endpoint="nodes"))
        admin.add_view(ListenersView(name="Listeners", endpoint="listeners"))
        admin.add_view(_replay.ReplaysView(name="Replays", endpoint="replays"))
        admin.add_view(AuditView(name="Audit", endpoint="audit", url="/admin/audit"))
    return admin


def add_read_only_view(admin: Admin, model: type, name: str, **kwargs: object) -> None:
    """Add a read-only list and details view of an application table."""
    with db.plain_session_accepted():
        admin.add_view(ReadOnlyModelView(model, admin.app.extensions[db.KEY], name=name, **kwargs))
