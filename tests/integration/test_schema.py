"""The migrations and the code's table definitions describe the same outbox and deliveries."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from shared.db.tables import metadata


def test_the_migrated_schema_matches_shared_tables(settings) -> None:
    engine = create_engine(settings.sqlalchemy_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_server_default": False})
            ours = set(metadata.tables)
            diff = [d for d in compare_metadata(context, metadata) if _table_of(d) in ours]
    finally:
        engine.dispose()
    assert diff == [], "\n".join(map(repr, diff))


def _table_of(diff) -> str | None:  # type: ignore[no-untyped-def]
    item = diff[0] if isinstance(diff, list) else diff  # modify_* diffs come as lists of tuples
    obj = item[1]
    if hasattr(obj, "table"):  # an index or a constraint
        return obj.table.name
    if hasattr(obj, "columns"):  # a table
        return obj.name
    return item[2]  # (op, schema, table, column, ...)
