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

from shared.db.engine import make_engine
from shared.runtime import Runtime
from shared.config import Config
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


def fault_env(settings: Config, **extra: str) -> dict[str, str]:
    return process_env(settings, **{**FAST_RECOVERY, **extra})


def writer(settings: Config) -> Runtime:
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


# --- Helpers of tests/e2e/test_faults_hard.py ------------------------------------------------------


class BackgroundWriter:
    """Business writes on a thread of their own, until stopped: each attempt opens ``per_commit``
    accounts in one unit of work. A failed attempt is recorded and retried after a short pause (its
    COMMIT outcome may be unknown: count committed accounts from the database, not from here).

    Every attempt is recorded as (started, seconds, ok), monotonic clock. The thread is a daemon
    and bounded by ``max_seconds``, so a commit that hangs can fail the test but never hang pytest.
    """

    def __init__(self, runtime: Runtime, prefix: str, *, per_commit: int = 1, pause: float = 0.01,
                 retry_pause: float = 0.1, max_seconds: float = 120.0) -> None:
        import threading

        self.runtime = runtime
        self.prefix = prefix
        self.per_commit = per_commit
        self.pause = pause
        self.retry_pause = retry_pause
        self.max_seconds = max_seconds
        self.attempts: list[tuple[float, float, bool]] = []
        self.errors: list[str] = []
        self.current_started: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{prefix}", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = self.current_started = time.monotonic()
            try:
                with self.runtime.unit_of_work() as uow:
                    for k in range(self.per_commit):
                        uow.add(Account.open(f"{self.prefix}-{i}-{k}"))
                    uow.commit()
                ok = True
            except Exception as exc:  # noqa: BLE001 - the fault under test; the database decides
                ok = False
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            self.current_started = None
            self.attempts.append((started, time.monotonic() - started, ok))
            i += 1
            self._stop.wait(self.pause if ok else self.retry_pause)

    def start(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the attempt in progress; fail (not hang) if that attempt never returns."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"a business write has not returned for {self.in_progress():.1f}s")

    def in_progress(self) -> float:
        """Seconds the attempt in progress has lasted so far (0 when none is)."""
        started = self.current_started
        return 0.0 if started is None else time.monotonic() - started

    def between(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        """The attempts that started in [start, end)."""
        return [a for a in self.attempts if start <= a[0] < end]

    @property
    def succeeded(self) -> int:
        return sum(1 for a in self.attempts if a[2])

    @property
    def failed(self) -> int:
        return sum(1 for a in self.attempts if not a[2])


def pipeline_state(runtime: Runtime) -> dict[str, Any]:
    """Everything the exact-count assertions of the hard fault tests compare, from the database."""
    with runtime.engine.connect() as conn:
        q = lambda sql: conn.exec_driver_sql(sql).scalar()  # noqa: E731
        return {
            **counts(runtime),
            "opened_events": q("SELECT count(*) FROM ozzy_outbox WHERE event_type = 'test.account_opened'"),
            "audited_events": q("SELECT count(*) FROM ozzy_outbox WHERE event_type = 'test.deposit_audited'"),
            "undispatched": q("SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL"),
            "welcome_done": q("SELECT count(*) FROM ozzy_deliveries WHERE handler = 'test.welcome' AND status = 'done'"),
            "audit_done": q("SELECT count(*) FROM ozzy_deliveries WHERE handler = 'test.audit' AND status = 'done'"),
            "deliveries": q("SELECT count(*) FROM ozzy_deliveries"),
        }


def expected_state(n: int) -> dict[str, Any]:
    """:func:`pipeline_state` once ``n`` accounts' events went through both handlers exactly once."""
    return {"accounts": n, "welcome": n, "audit": n, "duplicates": 0, "open_deliveries": 0,
            "opened_events": n, "audited_events": n, "undispatched": 0,
            "welcome_done": n, "audit_done": n, "deliveries": 2 * n}


def assert_delivered_exactly_once(runtime: Runtime, n: int, settle: float = 2.0) -> dict[str, Any]:
    """Exact counts: ``n`` accounts, each event dispatched, each handler done once, nothing open.
    Waits ``settle`` seconds first so that a late duplicate, if any, would be counted."""
    time.sleep(settle)
    state, expected = pipeline_state(runtime), expected_state(n)
    wrong = {k: f"{v} (expected {expected[k]})" for k, v in state.items() if v != expected[k]}
    assert not wrong, f"{wrong}; all: {state}"
    return state
