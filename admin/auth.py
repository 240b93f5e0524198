"""Who is acting and what they may do: logins, roles, the audit helper.

**Roles are enforced declaratively.** Every route of the ``/api`` blueprint and every Flask-Admin view
built on :class:`admin.views.Secured` is checked before it runs, by :func:`required_role`: a read
(``GET``, ``HEAD``, ``OPTIONS``) needs ``viewer``; any other method needs ``operator``; a view
function marked ``@requires("admin")`` (or any role) needs that. A route someone adds tomorrow is
therefore covered without doing anything; mark it only to ask for more than the default. Refusals are
``403`` with ``{"error": {"code": "forbidden", ...}}`` in the API and a page saying so in the back
office. Templates hide what the role cannot do with ``can("operator")``.

**Logins** (:func:`login`): 5 failures in 15 minutes for a user name or from a client address close
the form with ``429`` until the window passes, even for the right password; unknown names cost the
same hash as known ones; the session starts anew at login and is ended on the server at logout, on
disable and on a password change (:attr:`shared.ops.accounts.User.session_token`). Every attempt is
audited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from flask import (Blueprint, current_app, flash, g, jsonify, redirect, render_template, request, session,
                   url_for)
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy.orm import Session
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from shared.model.events import causal_context
from shared.ops import accounts, audit as trail
from shared.ops.accounts import User, role_allows, user_for_token
from shared.web.http import client_address

__all__ = ["User", "actor", "audit", "bp", "can", "current_role", "login_manager", "requires", "user_for_token"]

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


bp = Blueprint("auth", __name__, template_folder="templates")
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.session_protection = "strong"


def _db() -> Session:
    from admin.db import db_session

    return db_session()


# --- roles ----------------------------------------------------------------------------------------


def requires(role: str) -> Callable[[F], F]:
    """Mark a view function as needing ``role`` (instead of the default for its method)."""
    accounts.check_role(role)

    def mark(view: F) -> F:
        view.ozzy_role = role  # type: ignore[attr-defined]
        return view

    return mark


def required_role(method: str, view: Callable[..., Any] | None) -> str:
    """The role a request needs: the view's mark, else viewer to read and operator to change."""
    marked = getattr(view, "ozzy_role", None)
    if marked is not None:
        return str(marked)
    return "viewer" if method in SAFE_METHODS else "operator"


def current_role() -> str | None:
    """The role of this request: a token's (capped by its user's), a logged-in user's, or None."""
    if "role" in g:
        return str(g.role)
    if current_user.is_authenticated:
        return str(current_user.role)
    return None


def can(role: str) -> bool:
    """Whether this request's user may do what needs ``role`` (for templates: ``can('admin')``)."""
    return role_allows(current_role(), role)


def forbidden_json(needed: str) -> Any:
    return jsonify({"error": {"code": "forbidden", "message": f"this needs the {needed} role"}}), 403


def forbidden_page(needed: str) -> Any:
    return render_template("admin/forbidden.html", needed=needed, role=current_role()), 403


# --- who is acting ----------------------------------------------------------------------------------


@login_manager.user_loader
def _load_user(session_id: str) -> User | None:
    """The operator of a login cookie, if that session was not ended (logout, deactivation)."""
    user_id, _, token = session_id.partition(":")
    if not user_id.isascii() or not user_id.isdigit() or len(user_id) > 9:
        return None
    user = _db().get(User, int(user_id))
    if user is None or not user.owns_session(token):
        return None
    g.actor_name = f"user:{user.username}"
    return user


def actor() -> str | None:
    """Who is accountable in this request, for event metadata and ``updated_by`` columns: the user,
    also when acting through one of their tokens."""
    user = g.get("api_user") or (current_user if current_user.is_authenticated else None)
    return f"user:{user.username}" if user is not None else None


def audit_actor() -> str | None:
    """Who acted, for the audit trail: ``token:NAME`` through a token, else ``user:NAME``."""
    token = g.get("api_token")
    return f"token:{token.name}" if token is not None else actor()


def audit(action: str, *, target: Any = None, uow: Any = None, actor_name: str | None = None, **details: Any) -> None:
    """Put ``action`` on the audit trail: in ``uow`` when given (it commits with the change), else
    in a transaction of its own."""
    who = actor_name or audit_actor() or "anonymous"
    token = g.get("api_token")
    if token is not None:
        details.setdefault("user", g.api_user.username)
    kwargs = dict(client=client_address(), target=None if target is None else str(target)[:500], **details)
    g.audited = True
    if uow is not None:
        trail.record(uow, action, who, **kwargs)
        return
    with causal_context(correlation_id=g.get("correlation_id"), actor=actor() or who):
        with current_app.extensions["ozzy"].unit_of_work() as own:
            trail.record(own, action, who, **kwargs)
            own.commit()


# --- logging in and out -------------------------------------------------------------------------------


@bp.route("/admin/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    form = LoginForm()
    if not form.validate_on_submit():
        return render_template("admin/login.html", form=form), 200 if request.method == "GET" else 401
    name, client, db = form.username.data or "", client_address(), _db()
    who = f"user:{name[:accounts.NAME_LIMIT]}"
    if accounts.login_throttled(db, name, client):
        db.rollback()
        audit("login.throttled", target=name[:accounts.NAME_LIMIT], actor_name=who)
        flash("Too many failed attempts: try again in 15 minutes.", "error")
        return render_template("admin/login.html", form=form), 429
    user = accounts.verify_login(db, name, form.password.data or "")
    if user is None:
        accounts.record_login_failure(db, name, client)
        db.commit()
        audit("login.failed", target=name[:accounts.NAME_LIMIT], actor_name=who)
        flash("Wrong username or password.", "error")
        return render_template("admin/login.html", form=form), 401
    accounts.clear_login_failures(db, name)
    user.last_login_at = datetime.now(timezone.utc)
    if user.session_token is None:
        user.new_session_token()
    db.commit()
    session.clear()  # a new session (and CSRF token): nothing from before the login carries over
    login_user(user)
    g.actor_name = who
    audit("login.succeeded", target=user.username, actor_name=who)
    return redirect(_safe_next(request.args.get("next")))


@bp.post("/admin/logout")
def logout():  # type: ignore[no-untyped-def]
    """End the session on the server too: a copy of the cookie taken earlier stops working."""
    if current_user.is_authenticated:
        user = current_user._get_current_object()
        user.new_session_token()
        _db().commit()
        audit("logout", target=user.username)
    logout_user()
    return redirect(url_for("auth.login"))


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never an open redirect. Browsers drop tabs and newlines from URLs
    and read ``\\`` as ``/``, so ``/%09/evil.example`` and ``/\\evil.example`` mean another host."""
    fallback = "/admin/"
    if not target:
        return fallback
    for form in (target, unquote(target)):  # decoded too: a proxy or a browser may decode it once more
        if not form.startswith("/") or form.startswith("//") or "\\" in form:
            return fallback
        if any(ord(c) < 0x21 or ord(c) == 0x7f for c in form):
            return fallback
        parts = urlsplit(form)
        if parts.scheme or parts.netloc:
            return fallback
    return target


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    """``can('operator')`` and ``role`` in every template, to hide what the role cannot do."""
    return {"can": can, "role": current_role}


@bp.after_app_request
def _audit_unnamed_changes(response: Any) -> Any:
    """A change through the back office or the API that did not audit itself by name is recorded
    as ``request`` (method, path, status): a route added later is on the trail from its first day.
    Done means a 2xx from the API, and a redirect from the back office (a page shown again, as a
    form with errors or a confirmation, changed nothing)."""
    status = response.status_code
    done = 200 <= status < 300 if request.path.startswith("/api/") else (
        300 <= status < 400 and request.path.startswith("/admin/"))
    if request.method in SAFE_METHODS or not done or g.get("audited") or actor() is None:
        return response
    try:
        audit("request", target=request.path, method=request.method, status=response.status_code)
    except Exception:  # noqa: BLE001 - the change is done; a lost audit line is logged, not raised
        log.exception("could not audit %s %s", request.method, request.endpoint)
    return response
