"""Shared fixtures: a fresh PostgreSQL database and a private Redis namespace per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from sqlalchemy import create_engine, text

from shared.config import Config
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
def settings(database_server_url: str, redis_server_url: str) -> Iterator[Config]:
    """Settings for a database created for this test session and migrated to head."""
    with servers.provisioned(database_server_url, redis_server_url) as s:
        yield s


@pytest.fixture
def clean_db(settings: Config) -> Iterator[Config]:
    """The session database, emptied of events, deliveries and test rows before the test."""
    engine = create_engine(settings.sqlalchemy_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE ozzy_deliveries, ozzy_outbox, test_side_effects, test_accounts,"
                " loan_notifications, loan_applications, ozzy_nodes, ozzy_settings, ozzy_flags,"
                " ozzy_api_tokens, ozzy_users, ozzy_login_failures, ozzy_checkpoints, ozzy_scheduled, ozzy_sagas, ozzy_saga_steps, ozzy_recurring,"
                " test_sightings, ozzy_projections, loan_stats_days, ozzy_replays, ozzy_delivery_history CASCADE"
            )
        )
    engine.dispose()
    servers.drop_redis_namespace(settings)
    yield settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The folder is the tier: tests/integration needs servers, tests/e2e starts processes.
    for item in items:
        path = str(item.fspath)
        if f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
        elif f"{os.sep}e2e{os.sep}" in path:
            item.add_marker(pytest.mark.e2e)
