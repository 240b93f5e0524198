"""The ``ozzy`` command line: each command is the composition root of its process."""

from __future__ import annotations

import logging
import os
import sys

import click

from shared.settings import load_settings


def _configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("OZZY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)-7s %(processName)s[%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
    from shared.db import migrate

    migrate(load_settings(), revision)
    click.echo(f"database upgraded to {revision}")


@main.command()
def relay() -> None:
    """Run the relay: outbox to Redis, on wake-ups and every poll interval."""
    from shared.relay import run_relay
    from shared.runtime import bootstrap

    sys.exit(run_relay(bootstrap(load_settings())))


@main.command()
@click.option("--threads", type=int, default=None, help="Worker threads (default OZZY_WORKER_THREADS).")
@click.option("--queue", "queues", multiple=True, help="Consume only these queues (repeatable).")
def worker(threads: int | None, queues: tuple[str, ...]) -> None:
    """Run handlers: consume every handler queue until SIGTERM."""
    from shared.runtime import bootstrap
    from shared.worker import run_worker

    sys.exit(run_worker(bootstrap(load_settings()), threads=threads, queues=set(queues) or None))


if __name__ == "__main__":  # pragma: no cover
    main()
