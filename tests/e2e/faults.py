"""Shared machinery of the fault tests: private servers, a provisioned database, process env,
exact counts, and the figures each test reports for docs/reliability.md."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shared.db import make_engine
from shared.runtime import Runtime
from shared.config import Settings
from tests.domain import Account
from tests.e2e.procs import process_env
from tests.integration.helpers import scalar
from tests.servers import private_redis, provisioned

# Fixtures of the tests that break servers: a test module imports both by name (``redis_server``
# and ``settings`` then mean this test's private Redis and a database provisioned against it).


@pytest.fixture
def redis_server():  # type: ignore[no-untyped-def]
    """A private Redis for one test, which the test may stop, restart or flush."""
    with private_redis() as server:
        yield server


@pytest.fixture
def settings(database_server_url, redis_server):  # type: ignore[no-untyped-def]
    """A fresh, migrated database and settings pointing at the test's private Redis."""
    with provisioned(database_server_url, redis_server.url) as s:
        yield s


#: Tunables that make recovery fast enough to test; each is a documented setting.
FAST_RECOVERY = {
    "OZZY_POLL_INTERVAL": "1",
    "OZZY_SWEEP_INTERVAL": "1",
    "OZZY_REDELIVERY_AFTER": "3",
    "OZZY_HEARTBEAT_TIMEOUT_MS": "3000",
    "OZZY_FAST_CHANNEL_HEARTBEAT": "0.5",
    "OZZY_WORKER_IDLE_MS": "500",
    "OZZY_NODE_HEARTBEAT": "1",
    "OZZY_LOG_LEVEL": "WARNING",
}

FIGURES_FILE = os.environ.get("OZZY_RELIABILITY_FIGURES")


def fault_env(settings: Settings, **extra: str) -> dict[str, str]:
    return process_env(settings, **{**FAST_RECOVERY, **extra})


def writer(settings: Settings) -> Runtime:
    """A runtime for the test's own business writes (no handlers)."""
    return Runtime(settings, make_engine(settings), {})


def open_accounts(runtime: Runtime, n: int, prefix: str, per_commit: int = 1) -> int:
    written = 0
    while written < n:
        with runtime.unit_of_work() as uow:
            for i in range(min(per_commit, n - written)):
                uow.add(Account.open(f"{prefix}-{written + i}"))
            uow.commit()
        written += min(per_commit, n - written)
    return written


def counts(runtime: Runtime) -> dict[str, Any]:
    """Effects per handler, duplicates, and open deliveries: what the assertions compare."""
    with runtime.engine.connect() as conn:
        per_handler = dict(
            conn.exec_driver_sql("SELECT handler, count(*) FROM test_side_effects GROUP BY handler").all()
        )
        duplicates = conn.exec_driver_sql(
            "SELECT count(*) FROM (SELECT handler, event_key FROM test_side_effects"
            " GROUP BY handler, event_key HAVING count(*) > 1) d"
        ).scalar()
        open_deliveries = conn.exec_driver_sql("SELECT count(*) FROM ozzy_deliveries WHERE status <> 'done'").scalar()
        accounts = conn.exec_driver_sql("SELECT count(*) FROM test_accounts").scalar()
    return {
        "accounts": accounts,
        "welcome": per_handler.get("welcome", 0),
        "audit": per_handler.get("audit", 0),
        "duplicates": duplicates,
        "open_deliveries": open_deliveries,
    }


def all_handled(runtime: Runtime, n: int) -> bool:
    c = counts(runtime)
    return c["welcome"] >= n and c["audit"] >= n


def wait_all_handled(runtime: Runtime, n: int, timeout: float) -> float:
    """Wait until both handlers ran for ``n`` events; the seconds it took, or a detailed failure."""
    started = time.monotonic()
    while not all_handled(runtime, n):
        if time.monotonic() - started > timeout:
            with runtime.engine.connect() as conn:
                states = conn.exec_driver_sql(
                    "SELECT handler, status, dead_reason, count(*) FROM ozzy_deliveries GROUP BY 1, 2, 3"
                ).all()
                undispatched = conn.exec_driver_sql(
                    "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL"
                ).scalar()
            raise AssertionError(
                f"not all handled in {timeout}s: {counts(runtime)}; deliveries {states}; undispatched {undispatched}"
            )
        time.sleep(0.1)
    return time.monotonic() - started


def assert_exactly_once(runtime: Runtime, n: int) -> dict[str, Any]:
    time.sleep(1.0)  # a late duplicate, if any, would land now
    c = counts(runtime)
    assert c == {"accounts": n, "welcome": n, "audit": n, "duplicates": 0, "open_deliveries": 0}, c
    return c


def report(name: str, **figures: Any) -> None:
    """Print the test's figures (and append them to $OZZY_RELIABILITY_FIGURES when set)."""
    line = json.dumps({"test": name, **figures}, default=str)
    print(f"FIGURES {line}")
    if FIGURES_FILE:
        with Path(FIGURES_FILE).open("a") as fh:
            fh.write(line + "\n")


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    result: dict[str, float] = {}
    started = time.monotonic()
    try:
        yield result
    finally:
        result["seconds"] = round(time.monotonic() - started, 2)


__all__ = ["scalar"]
