"""The ``ozzy`` command line: each command is the composition root of its process.

Known start-up failures (bad settings, a database that is missing, unreachable or not migrated, a
port in use, a missing SECRET_KEY) are mapped in one place, :class:`OzzyGroup`: one or two lines
that say what to do, and a non-zero exit (2 for bad settings). ``ozzy --debug`` (or
``OZZY_LOG_LEVEL=DEBUG``) shows the traceback instead. Listings print a table with a header row on a
terminal; piped, the rows stay tab-separated on stdout (the header goes to stderr); ``--json`` gives
the rows as JSON.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from shared.cli.deliveries import deadletters, outbox
from shared.cli.failures import OzzyGroup, _alembic_quiet, _startup_checks
from shared.cli.operators import tokens, users
from shared.config import load_config

log = logging.getLogger("shared.cli")


def _configure_logging() -> None:
    from shared import logs

    # Under a process manager (honcho, ozzy dev) each line is already prefixed with time and name.
    logs.configure(os.environ.get("OZZY_LOG_LEVEL", "INFO"), plain=os.environ.get("OZZY_LOG_PLAIN") == "1")


@click.group(cls=OzzyGroup)
@click.version_option(package_name="ozzy", message="ozzy %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Ozzy: events saved with state, relayed through Redis, handled once."""
    ctx.obj = {"debug": debug}
    _configure_logging()
    if debug:
        logging.getLogger().setLevel(logging.DEBUG)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.argument("revision", default="heads")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: all heads).

    The framework's migrations, then the application's."""
    with _alembic_quiet():
        from shared.db.migrate import migrate

    migrate(load_config(), revision)
    click.echo(f"database upgraded to {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION."""
    with _alembic_quiet():
        from shared.db.migrate import downgrade

    downgrade(load_config(), revision)
    click.echo(f"database downgraded to {revision}")


@main.command()
def relay() -> None:
    """Run the relay (outbox to Redis).

    It drains on wake-ups and every poll interval and runs housekeeping under the lease."""
    from shared.runtime.roles import run_relay
    from shared.runtime.root import bootstrap

    config = load_config()
    _startup_checks(config)
    sys.exit(run_relay(bootstrap(config)))


@main.command()
@click.option("--threads", type=int, default=None, help="Worker threads (default OZZY_WORKER_THREADS).")
@click.option("--queue", "queues", multiple=True, help="Consume only these queues (repeatable).")
def worker(threads: int | None, queues: tuple[str, ...]) -> None:
    """Run the handlers (consume their queues).

    Every handler queue (or those of --queue) until SIGTERM."""
    from shared.runtime.roles import run_worker
    from shared.runtime.root import bootstrap

    config = load_config()
    _startup_checks(config)
    sys.exit(run_worker(bootstrap(config), threads=threads, queues=set(queues) or None))


@main.command()
@click.option("--host", default=lambda: os.environ.get("HOST", "0.0.0.0"), show_default="$HOST or 0.0.0.0")
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT", "8000")), show_default="$PORT or 8000")
@click.option("--threads", type=int, default=8, show_default=True)
def web(host: str, port: int, threads: int) -> None:
    """Serve the web application (OZZY_WEB_APP).

    With the waitress WSGI server, on --port."""
    from shared.web.serve import serve

    config = load_config()
    _startup_checks(config)
    sys.exit(serve(config, host=host, port=port, threads=threads))


@main.command()
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT", "8000")), show_default="$PORT or 8000")
@click.option("--demo", is_flag=True, help="Keep submitting sample loan applications.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path.cwd, show_default="cwd",
              help="Folder holding the Procfile; embedded servers keep their data in ROOT/.ozzy")
def dev(port: int, demo: bool, root: Path) -> None:
    """Run the whole system in the foreground.

    Servers if needed, migrations, then web, relay and worker."""
    from shared.cli.dev import run_dev

    sys.exit(run_dev(root, port, demo))


for _group in (deadletters, outbox, users, tokens):
    main.add_command(_group)


if __name__ == "__main__":  # pragma: no cover
    main()
