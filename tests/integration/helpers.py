"""Helpers for integration tests: runtimes on the test database, in-process workers, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
from sqlalchemy import text

from shared.handlers import HandlerSpec, registered_handlers
from shared.runtime import Runtime
from shared.config import Settings
from shared.db import make_engine


def make_runtime(settings: Settings, handler_names: list[str] | None = None, **overrides: Any) -> Runtime:
    """A runtime with exactly the named handlers (all of ``tests.handlers`` by default)."""
    import tests.handlers  # noqa: F401

    everything = registered_handlers()
    names = handler_names if handler_names is not None else [n for n in everything if n.startswith("test.")]
    handlers: dict[str, HandlerSpec] = {n: everything[n] for n in names}
    if overrides:
        settings = settings.model_copy(update=overrides)
    return Runtime(settings, make_engine(settings), handlers)


@contextmanager
def running_worker(runtime: Runtime, threads: int = 4) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(runtime.broker, worker_threads=threads, worker_timeout=runtime.settings.worker_idle_ms)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=10_000)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


def scalar(runtime: Runtime, sql: str, **params: Any) -> Any:
    with runtime.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()
