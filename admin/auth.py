"""Logging in to the back office: Flask-Login sessions for operators (see :mod:`shared.accounts`)."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.orm import Session
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from shared.ops.accounts import User, user_for_token

__all__ = ["User", "actor", "bp", "login_manager", "user_for_token"]


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


@login_manager.user_loader
def _load_user(session_id: str) -> User | None:
    """The operator of a login cookie, if that session was not ended (logout, deactivation)."""
    user_id, _, token = session_id.partition(":")
    if not user_id.isdigit():
        return None
    user = _db().get(User, int(user_id))
    return user if user is not None and user.owns_session(token) else None


@bp.route("/admin/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    form = LoginForm()
    if form.validate_on_submit():
        session = _db()
        user = session.scalar(select(User).where(User.username == form.username.data))
        if user is not None and user.active and user.check_password(form.password.data or ""):
            user.last_login_at = datetime.now(timezone.utc)
            if user.session_token is None:
                user.new_session_token()
            session.commit()
            login_user(user)
            return redirect(_safe_next(request.args.get("next")))
        flash("Wrong username or password.", "error")
    return render_template("admin/login.html", form=form), 200 if request.method == "GET" else 401


@bp.post("/admin/logout")
def logout():  # type: ignore[no-untyped-def]
    """End the session on the server too: a copy of the cookie taken earlier stops working."""
    if current_user.is_authenticated:
        user = current_user._get_current_object()
        user.new_session_token()
        _db().commit()
    logout_user()
    return redirect(url_for("auth.login"))


def _safe_next(target: str | None) -> str:
    # Only same-site paths: never an open redirect to another host.
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/admin/"


def actor() -> str | None:
    """Who is acting in this request, for event metadata and audit columns."""
    user = g.get("api_user") or (current_user if current_user.is_authenticated else None)
    return f"user:{user.username}" if user is not None else None
