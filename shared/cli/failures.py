"""Known start-up failures, mapped in one place: one line that says what to do, and an exit code."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import AbstractContextManager
from typing import Any

import click

from shared.config import Config, StartupError, load_config
from shared.logs import quiet

log = logging.getLogger("shared.cli")


def _database_location(config: Config) -> tuple[str, str]:
    """(the database URL with its password masked, the database's name)."""
    from sqlalchemy.engine import make_url

    url = make_url(config.sqlalchemy_url)
    shown = url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)
    return shown, url.database or ""


def _database_problem(exc: BaseException) -> str | None:
    """``missing``, ``login`` or ``unreachable`` for a failure to connect to PostgreSQL, else None."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return None
    import psycopg

    orig = exc.orig
    if not isinstance(orig, psycopg.OperationalError):
        return None
    text = str(orig)
    if orig.sqlstate == "3D000" or ("database" in text and "does not exist" in text):
        return "missing"
    if orig.sqlstate in ("28P01", "28000") or "authentication failed" in text or (
            "role" in text and "does not exist" in text):
        return "login"
    if orig.sqlstate is None or "connection" in text:
        return "unreachable"
    return None


def _database_message(config: Config, problem: str) -> str:
    url, name = _database_location(config)
    if problem == "missing":
        return f"the database {name!r} does not exist ({url}): create it (`createdb {name}`) or fix DATABASE_URL"
    if problem == "login":
        return f"PostgreSQL refused the login ({url}): fix the user or password in DATABASE_URL"
    return f"PostgreSQL is unreachable at {url}: start PostgreSQL or fix DATABASE_URL"


def known_failure(exc: BaseException) -> tuple[str, int] | None:
    """The one place that turns a known failure into (a message of one or two lines, an exit code)."""
    if isinstance(exc, StartupError):
        return str(exc), exc.exit_code
    problem = _database_problem(exc)
    if problem is not None:
        try:
            config = load_config()
        except StartupError:
            return None
        return _database_message(config, problem), 1
    return None


class OzzyGroup(click.Group):
    """The ``ozzy`` group: a known failure of any command is printed as ``ozzy <command>: <what to
    do>`` without a traceback (unless ``--debug`` or ``OZZY_LOG_LEVEL=DEBUG``). Its sub-groups are
    of this class too, so the innermost one names the whole command (``ozzy db upgrade: …``)."""

    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            failure = known_failure(exc)
            debug = (ctx.obj or {}).get("debug") or os.environ.get("OZZY_LOG_LEVEL", "").upper() == "DEBUG"
            if failure is None or debug:
                raise
            message, code = failure
            names, parent = [ctx.invoked_subcommand or ""], ctx
            while parent.parent is not None:
                names.insert(0, parent.info_name or "")
                parent = parent.parent
            click.echo(" ".join(["ozzy", *filter(None, names)]) + ": " + message, err=True)
            sys.exit(code)


def _alembic_quiet() -> AbstractContextManager[None]:
    """Importing Alembic logs a line per plugin at INFO: noise before a one-line answer."""
    return quiet("alembic")


def _startup_checks(config: Config) -> None:
    """Before relay, worker or web start: the database exists and its schema is this code's.
    PostgreSQL merely unreachable is not fatal (the process waits for it, as during an outage)."""
    from sqlalchemy.exc import DBAPIError

    with _alembic_quiet():
        from shared.db.migrate import check_schema

    try:
        check_schema(config)
    except DBAPIError as exc:
        if _database_problem(exc) != "unreachable":
            raise
        log.warning("%s; going on, waiting for it", _database_message(config, "unreachable"))
