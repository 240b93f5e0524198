"""Alembic environment: run by ``ozzy db upgrade`` (see :func:`shared.db.migrate.migrate`), online only."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("alembic_config() sets sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: Connection) -> None:
    # ``ozzy db revision`` passes the application's tables and which objects to compare.
    context.configure(connection=connection, target_metadata=config.attributes.get("target_metadata"),
                      include_object=config.attributes.get("include_object"), transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
