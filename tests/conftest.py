"""Shared fixtures: a fresh PostgreSQL database and a private Redis namespace per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.settings import Settings, load_settings
from tests import servers


@pytest.fixture(scope="session")
def database_server_url() -> Iterator[str]:
    """Admin URL of the PostgreSQL server the tests use (named, local, or embedded)."""
    with ExitStack() as stack:
        yield servers.database_server_url(stack)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    with ExitStack() as stack:
        yield servers.redis_server_url(stack)


@pytest.fixture(scope="session")
def settings(database_server_url: str, redis_server_url: str) -> Iterator[Settings]:
    """Settings for a database created for this test session and migrated to head."""
    from shared.db import migrate

    name = f"ozzy_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(database_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(database_server_url).set(database=name).render_as_string(hide_password=False)
    s = load_settings(
        database_url=url,
        redis_url=redis_server_url,
        redis_namespace=f"ozzytest-{uuid.uuid4().hex[:8]}",
        handler_modules=(),
    )
    migrate(s)
    _create_test_tables(s)
    try:
        yield s
    finally:
        _drop_redis_namespace(s)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _create_test_tables(s: Settings) -> None:
    from shared.db import Base
    from tests import domain  # noqa: F401  (registers the test tables on Base.metadata)

    engine = create_engine(s.sqlalchemy_url)
    Base.metadata.create_all(engine, tables=[domain.Account.__table__, domain.SideEffect.__table__])
    engine.dispose()


def _drop_redis_namespace(s: Settings) -> None:
    import redis

    client = redis.Redis.from_url(s.redis_url)
    try:
        keys = list(client.scan_iter(f"{s.redis_namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture
def clean_db(settings: Settings) -> Iterator[Settings]:
    """The session database, emptied of events, deliveries and test rows before the test."""
    engine = create_engine(settings.sqlalchemy_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE ozzy_deliveries, ozzy_outbox, test_side_effects, test_accounts,"
                " loan_notifications, loan_applications CASCADE"
            )
        )
    engine.dispose()
    _drop_redis_namespace(settings)
    yield settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The folder is the tier: tests/integration needs servers, tests/e2e starts processes.
    for item in items:
        path = str(item.fspath)
        if f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
        elif f"{os.sep}e2e{os.sep}" in path:
            item.add_marker(pytest.mark.e2e)
