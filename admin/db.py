"""The back office's SQLAlchemy session: one per request and thread, removed at teardown."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app
from sqlalchemy.orm import Session, scoped_session, sessionmaker

KEY = "ozzy_admin_session"


def install(app: Flask, session_factory: sessionmaker) -> scoped_session[Session]:
    scoped = scoped_session(session_factory)
    app.extensions[KEY] = scoped
    app.teardown_appcontext(lambda exc: scoped.remove())
    return scoped


def db_session() -> Session:
    return current_app.extensions[KEY]()


@contextmanager
def plain_session_accepted() -> Iterator[None]:
    """Flask-Admin 2.x warns that a session object (rather than a Flask-SQLAlchemy ``db``) is
    deprecated for 3.0, but only unwraps real Flask-SQLAlchemy objects; we use plain SQLAlchemy,
    so views get the scoped session and flask-admin stays pinned below 3."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Passing a session object directly is deprecated")
        yield
