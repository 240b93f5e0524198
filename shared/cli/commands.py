"""The ``ozzy`` command line: each command is the composition root of its process."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from sqlalchemy.orm import Session

from shared.config import load_config


def _configure_logging() -> None:
    # Under a process manager (honcho, ozzy dev) each line is already prefixed with time and name.
    plain = os.environ.get("OZZY_LOG_PLAIN") == "1"
    logging.basicConfig(
        level=os.environ.get("OZZY_LOG_LEVEL", "INFO").upper(),
        format="%(levelname)-7s %(name)s: %(message)s"
        if plain
        else "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("apscheduler", "pgserver", "dramatiq.worker.Worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group()
def main() -> None:
    """Ozzy: events saved with state, relayed through Redis, handled once."""
    _configure_logging()


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.argument("revision", default="heads")
def db_upgrade(revision: str) -> None:
    """Apply migrations (the framework's, then the application's) up to REVISION."""
    from shared.db.migrate import migrate

    migrate(load_config(), revision)
    click.echo(f"database upgraded to {revision}")


@main.command()
def relay() -> None:
    """Run the relay: outbox to Redis, on wake-ups and every poll interval."""
    from shared.runtime.roles import run_relay
    from shared.runtime.root import bootstrap

    sys.exit(run_relay(bootstrap(load_config())))


@main.command()
@click.option("--threads", type=int, default=None, help="Worker threads (default OZZY_WORKER_THREADS).")
@click.option("--queue", "queues", multiple=True, help="Consume only these queues (repeatable).")
def worker(threads: int | None, queues: tuple[str, ...]) -> None:
    """Run handlers: consume every handler queue until SIGTERM."""
    from shared.runtime.roles import run_worker
    from shared.runtime.root import bootstrap

    sys.exit(run_worker(bootstrap(load_config()), threads=threads, queues=set(queues) or None))


@main.group()
def deadletters() -> None:
    """Deliveries whose retries are exhausted or that failed permanently."""


@deadletters.command("list")
@click.option("--handler", help="Only this handler.")
@click.option("--event-type", help="Only events of this type.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--traceback/--no-traceback", "show_traceback", default=False, help="Print each last error in full.")
def deadletters_list(handler: str | None, event_type: str | None, limit: int, show_traceback: bool) -> None:
    """List dead deliveries, most recent failure first."""
    from shared.delivery.deadletters import list_dead
    from shared.runtime.root import bootstrap

    runtime = bootstrap(load_config())
    try:
        rows = list_dead(runtime, handler=handler, event_type=event_type, limit=limit)
    finally:
        runtime.close()
    for row in rows:
        last_line = (row.last_error or "").strip().splitlines()[-1:] or [""]
        click.echo(
            f"{row.id}\t{row.handler}\t{row.event_type}\t{row.event_id}\tattempts={row.attempts}"
            f"\t{row.dead_reason}\tfirst={row.first_failed_at:%Y-%m-%d %H:%M:%S}"
            f"\tlast={row.last_failed_at:%Y-%m-%d %H:%M:%S}\t{last_line[0]}"
        )
        if show_traceback:
            click.echo(row.last_error)
    click.echo(f"{len(rows)} dead deliveries", err=True)


@deadletters.command("retry")
@click.option("--handler", help="Only this handler.")
@click.option("--event-type", help="Only events of this type.")
@click.option("--id", "ids", type=int, multiple=True, help="Only this delivery id (repeatable).")
@click.option("--all", "retry_all", is_flag=True, help="Every dead delivery.")
def deadletters_retry(handler: str | None, event_type: str | None, ids: tuple[int, ...], retry_all: bool) -> None:
    """Enqueue dead deliveries again with a fresh retry budget."""
    from shared.delivery.deadletters import retry_dead
    from shared.runtime.root import bootstrap

    if not (handler or event_type or ids or retry_all):
        raise click.UsageError("say which: --handler, --event-type, --id or --all")
    runtime = bootstrap(load_config())
    try:
        count = retry_dead(runtime, handler=handler, event_type=event_type, ids=ids or None)
    finally:
        runtime.close()
    click.echo(f"{count} dead deliveries enqueued again")


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


@main.group()
def users() -> None:
    """Operators of the back office."""


@users.command("create")
@click.argument("name")
@click.password_option(help="Prompted for (twice) when not given.")
def users_create(name: str, password: str) -> None:
    """Create operator NAME; the password is prompted for and stored hashed."""
    from sqlalchemy.exc import IntegrityError

    from shared.ops.accounts import create_user

    with _session() as session:
        try:
            create_user(session, name, password)
            session.commit()
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        except IntegrityError:
            raise click.ClickException(f"user {name!r} already exists") from None
    click.echo(f"user {name} created")


@main.group()
def tokens() -> None:
    """API tokens for the management API (stored hashed, shown once)."""


@tokens.command("create")
@click.argument("username")
@click.option("--name", required=True, help="What the token is for.")
def tokens_create(username: str, name: str) -> None:
    """Create a token for USERNAME and print it (it cannot be shown again)."""
    from sqlalchemy import select

    from shared.ops.accounts import User, create_token

    with _session() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise click.ClickException(f"no user {username!r}")
        token, secret = create_token(session, user, name)
        session.commit()
        click.echo(f"token {token.id} for {username}: {secret}")


@tokens.command("list")
def tokens_list() -> None:
    """Every token: id, user, name, prefix, created, last used, revoked."""
    from sqlalchemy import select

    from shared.ops.accounts import ApiToken, User

    with _session() as session:
        rows = session.execute(select(ApiToken, User.username).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id))
        for token, username in rows:
            click.echo(
                f"{token.id}\t{username}\t{token.name}\t{token.prefix}…\tcreated={token.created_at:%Y-%m-%d}"
                f"\tlast_used={token.last_used_at or '-'}\trevoked={token.revoked_at or '-'}"
            )


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


@main.group()
def outbox() -> None:
    """The outbox (the event log) and its parked rows."""


@outbox.command("unpark")
@click.option("--event-type", "event_types", multiple=True, help="Only this type (repeatable); default all.")
def outbox_unpark(event_types: tuple[str, ...]) -> None:
    """Hand parked events back to the relay (after deploying code that knows their type)."""
    from sqlalchemy import create_engine

    from shared.db import sql

    engine = create_engine(load_config().sqlalchemy_url)
    with engine.begin() as conn:
        count = conn.execute(sql.UNPARK, {"types": list(event_types) or None}).rowcount
    engine.dispose()
    click.echo(f"{count} parked events handed back to the relay")


@main.command()
@click.option("--host", default=lambda: os.environ.get("HOST", "0.0.0.0"), show_default="$HOST or 0.0.0.0")
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT", "8000")), show_default="$PORT or 8000")
@click.option("--threads", type=int, default=8, show_default=True)
def web(host: str, port: int, threads: int) -> None:
    """Serve the web application (OZZY_WEB_APP) with the waitress WSGI server."""
    from shared.web.serve import serve

    sys.exit(serve(load_config(), host=host, port=port, threads=threads))


@main.command()
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT", "8000")), show_default="$PORT or 8000")
@click.option("--demo", is_flag=True, help="Keep submitting sample loan applications.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path.cwd, show_default="cwd",
              help="Folder holding the Procfile; embedded servers keep their data in ROOT/.ozzy")
def dev(port: int, demo: bool, root: Path) -> None:
    """Run everything in the foreground: servers if needed, migrations, web, relay, worker."""
    from shared.cli.dev import run_dev

    sys.exit(run_dev(root, port, demo))


if __name__ == "__main__":  # pragma: no cover
    main()
