"""``ozzy users`` and ``ozzy tokens``: operators of the back office, their roles and API tokens.

Every change is on the audit trail with the actor ``cli:<os user>`` (:mod:`shared.ops.audit`),
written in the same transaction as the change itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import click
from sqlalchemy.orm import Session

from shared.cli.failures import OzzyGroup
from shared.cli.output import _show_listing
from shared.config import load_config

ROLES = ("viewer", "operator", "admin")  # as shared.ops.accounts.ROLES (not imported: the CLI starts fast)
MIN_PASSWORD = 8  # as shared.ops.accounts.MIN_PASSWORD


@contextmanager
def _session() -> Iterator[Session]:
    """A session on an engine of its own, disposed of afterwards (a one-shot command's)."""
    from shared.db.engine import make_engine

    engine = make_engine(load_config(), pool_size=1, max_overflow=0)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def _user(session: Session, name: str) -> Any:
    """The operator NAME, or a ClickException that says there is none."""
    from sqlalchemy import select

    from shared.ops.accounts import User

    user = session.scalar(select(User).where(User.username == name))
    if user is None:
        raise click.ClickException(f"no user {name!r}")
    return user


def _audit(session: Session, action: str, target: str, **details: Any) -> None:
    """Put a change on the audit trail, in the session's transaction (the caller commits)."""
    from shared.ops.audit import cli_actor, record_in_session

    record_in_session(session, action, cli_actor(), target=target, **details)


def _ask_password(password: str | None) -> str:
    if password is None:
        password = str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    if len(password) < MIN_PASSWORD:
        raise click.ClickException(f"a password needs at least {MIN_PASSWORD} characters")
    return password


_ROLE = click.Choice(ROLES)


@click.group(cls=OzzyGroup)
def users() -> None:
    """Operators of the back office and their roles."""


@users.command("create")
@click.argument("name")
@click.option("--password", help="Prompted for (twice) when not given.")
@click.option("--role", type=_ROLE, default="operator", show_default=True,
              help="viewer reads; operator also retries, resolves, changes settings, pauses; admin also manages"
                   " users and tokens and stops nodes.")
def users_create(name: str, password: str | None, role: str) -> None:
    """Create operator NAME (the password is stored hashed)."""
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from shared.ops.accounts import User, create_user

    with _session() as session:
        if session.scalar(select(User.id).where(User.username == name)) is not None:
            raise click.ClickException(f"user {name!r} already exists")
        password = _ask_password(password)
        try:
            create_user(session, name, password, role)
            _audit(session, "user.created", name, role=role)
            session.commit()
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        except IntegrityError:
            raise click.ClickException(f"user {name!r} already exists") from None
    click.echo(f"user {name} created ({role})")


USER_COLUMNS = ("id", "username", "active", "role", "created", "last_login", "live_tokens")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def users_list(as_json: bool) -> None:
    """Every operator: active or not, role, last login, live tokens."""
    from sqlalchemy import func, select

    from shared.ops.accounts import ApiToken, User

    live = (select(func.count(ApiToken.id)).where(ApiToken.user_id == User.id, ApiToken.revoked_at.is_(None))
            .correlate(User).scalar_subquery())
    with _session() as session:
        rows = [(user.id, user.username, user.active, user.role, user.created_at, user.last_login_at, tokens)
                for user, tokens in session.execute(select(User, live).order_by(User.id))]
    _show_listing(USER_COLUMNS, rows, as_json=as_json)


@users.command("disable")
@click.argument("name")
def users_disable(name: str) -> None:
    """Disable NAME: its sessions and tokens stop working at once."""
    with _session() as session:
        user = _user(session, name)
        user.active = False
        user.new_session_token()  # every login session ends, and stays ended after a later enable
        _audit(session, "user.disabled", name)
        session.commit()
    click.echo(f"user {name} disabled")


@users.command("enable")
@click.argument("name")
def users_enable(name: str) -> None:
    """Enable NAME again (it must log in anew)."""
    with _session() as session:
        user = _user(session, name)
        user.active = True
        _audit(session, "user.enabled", name)
        session.commit()
    click.echo(f"user {name} enabled")


@users.command("set-role")
@click.argument("name")
@click.argument("role", type=_ROLE)
def users_set_role(name: str, role: str) -> None:
    """Give NAME the role ROLE; its tokens never act above it."""
    with _session() as session:
        user = _user(session, name)
        previous, user.role = user.role, role
        _audit(session, "user.role_set", name, role=role, previous=previous)
        session.commit()
    click.echo(f"user {name} is now {role}")


@users.command("set-password")
@click.argument("name")
@click.option("--password", help="Prompted for (twice) when not given.")
def users_set_password(name: str, password: str | None) -> None:
    """Set NAME's password; its login sessions end."""
    with _session() as session:
        user = _user(session, name)
        user.set_password(_ask_password(password))
        user.new_session_token()
        _audit(session, "user.password_set", name)
        session.commit()
    click.echo(f"password of {name} changed")


@click.group(cls=OzzyGroup)
def tokens() -> None:
    """API tokens for the management API."""


_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _lifetime(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """``30d``, ``12h``, ``90m``, ``2w`` to a timedelta."""
    if value is None:
        return None
    match = re.fullmatch(r"([0-9]{1,5})([mhdw])", value.strip())
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter("a positive number and a unit: 90m, 12h, 30d or 2w", ctx, param)
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@tokens.command("create")
@click.argument("username")
@click.option("--name", required=True, help="What the token is for.")
@click.option("--role", type=_ROLE, help="What it may do; at most, and by default, its user's role.")
@click.option("--expires", callback=_lifetime, metavar="30d", help="Lifetime: 90m, 12h, 30d, 2w (default: none).")
def tokens_create(username: str, name: str, role: str | None, expires: timedelta | None) -> None:
    """Create a token for USERNAME and print it (once)."""
    from shared.ops.accounts import create_token

    expires_at = datetime.now(timezone.utc) + expires if expires is not None else None
    with _session() as session:
        user = _user(session, username)
        try:
            token, secret = create_token(session, user, name, role, expires_at)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        _audit(session, "token.created", name, user=username, role=role or user.role,
               expires_at=expires_at.isoformat() if expires_at else None)
        session.commit()
        click.echo(f"token {token.id} for {username}: {secret}")


TOKEN_COLUMNS = ("id", "user", "name", "prefix", "role", "created", "expires", "last_used", "revoked")


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def tokens_list(as_json: bool) -> None:
    """Every token (never its secret): its role, expiry and last use."""
    from sqlalchemy import select

    from shared.ops.accounts import ApiToken, User, token_role

    with _session() as session:
        found = list(session.execute(
            select(ApiToken, User).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)))
    rows = [(token.id, user.username, token.name, token.prefix + "…", token_role(token, user), token.created_at,
             token.expires_at, token.last_used_at, token.revoked_at) for token, user in found]
    lines = [
        f"{token.id}\t{user.username}\t{token.name}\t{token.prefix}…\t{token_role(token, user)}"
        f"\tcreated={token.created_at:%Y-%m-%d}\texpires={token.expires_at or '-'}"
        f"\tlast_used={token.last_used_at or '-'}\trevoked={token.revoked_at or '-'}"
        for token, user in found
    ]
    _show_listing(TOKEN_COLUMNS, rows, as_json=as_json, lines=lines)


@tokens.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id: int) -> None:
    """Revoke token TOKEN_ID at once."""
    from shared.ops.accounts import ApiToken, revoke_token

    with _session() as session:
        if not revoke_token(session, token_id):
            raise click.ClickException(f"no live token {token_id}")
        token = session.get(ApiToken, token_id)
        _audit(session, "token.revoked", token.name if token else str(token_id), id=token_id)
        session.commit()
    click.echo(f"token {token_id} revoked")
