"""``ozzy users`` and ``ozzy tokens``: operators of the back office and their API tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy.orm import Session

from shared.cli.failures import OzzyGroup
from shared.cli.output import _show_listing
from shared.config import load_config


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


MIN_PASSWORD = 8  # as shared.ops.accounts.create_user


def _ask_password(password: str | None) -> str:
    if password is None:
        password = str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    if len(password) < MIN_PASSWORD:
        raise click.ClickException(f"a password needs at least {MIN_PASSWORD} characters")
    return password


@click.group(cls=OzzyGroup)
def users() -> None:
    """Operators of the back office."""


@users.command("create")
@click.argument("name")
@click.option("--password", help="Prompted for (twice) when not given.")
def users_create(name: str, password: str | None) -> None:
    """Create operator NAME (the password is stored hashed)."""
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from shared.ops.accounts import User, create_user

    with _session() as session:
        if session.scalar(select(User.id).where(User.username == name)) is not None:
            raise click.ClickException(f"user {name!r} already exists")
        password = _ask_password(password)
        try:
            create_user(session, name, password)
            session.commit()
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        except IntegrityError:
            raise click.ClickException(f"user {name!r} already exists") from None
    click.echo(f"user {name} created")


USER_COLUMNS = ("id", "username", "active", "created", "last_login", "live_tokens")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def users_list(as_json: bool) -> None:
    """Every operator: active or not, last login, live tokens."""
    from sqlalchemy import func, select

    from shared.ops.accounts import ApiToken, User

    live = (select(func.count(ApiToken.id)).where(ApiToken.user_id == User.id, ApiToken.revoked_at.is_(None))
            .correlate(User).scalar_subquery())
    with _session() as session:
        rows = [(user.id, user.username, user.active, user.created_at, user.last_login_at, tokens)
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
        session.commit()
    click.echo(f"user {name} disabled")


@users.command("enable")
@click.argument("name")
def users_enable(name: str) -> None:
    """Enable NAME again (it must log in anew)."""
    with _session() as session:
        user = _user(session, name)
        user.active = True
        session.commit()
    click.echo(f"user {name} enabled")


@users.command("set-password")
@click.argument("name")
@click.option("--password", help="Prompted for (twice) when not given.")
def users_set_password(name: str, password: str | None) -> None:
    """Set NAME's password; its login sessions end."""
    with _session() as session:
        user = _user(session, name)
        user.set_password(_ask_password(password))
        user.new_session_token()
        session.commit()
    click.echo(f"password of {name} changed")


@click.group(cls=OzzyGroup)
def tokens() -> None:
    """API tokens for the management API."""


@tokens.command("create")
@click.argument("username")
@click.option("--name", required=True, help="What the token is for.")
def tokens_create(username: str, name: str) -> None:
    """Create a token for USERNAME and print it (once)."""
    from shared.ops.accounts import create_token

    with _session() as session:
        user = _user(session, username)
        token, secret = create_token(session, user, name)
        session.commit()
        click.echo(f"token {token.id} for {username}: {secret}")


TOKEN_COLUMNS = ("id", "user", "name", "prefix", "created", "last_used", "revoked")


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def tokens_list(as_json: bool) -> None:
    """Every token (never its secret)."""
    from sqlalchemy import select

    from shared.ops.accounts import ApiToken, User

    with _session() as session:
        found = list(session.execute(
            select(ApiToken, User.username).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)))
    rows = [(token.id, username, token.name, token.prefix + "…", token.created_at, token.last_used_at,
             token.revoked_at) for token, username in found]
    lines = [
        f"{token.id}\t{username}\t{token.name}\t{token.prefix}…\tcreated={token.created_at:%Y-%m-%d}"
        f"\tlast_used={token.last_used_at or '-'}\trevoked={token.revoked_at or '-'}"
        for token, username in found
    ]
    _show_listing(TOKEN_COLUMNS, rows, as_json=as_json, lines=lines)


@tokens.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id: int) -> None:
    """Revoke token TOKEN_ID at once."""
    from shared.ops.accounts import revoke_token

    with _session() as session:
        if not revoke_token(session, token_id):
            raise click.ClickException(f"no live token {token_id}")
        session.commit()
    click.echo(f"token {token_id} revoked")
