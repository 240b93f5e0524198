"""Helpers for integration tests: runtimes on the test database, in-process workers, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
from sqlalchemy import text

from shared.config import Config
from shared.db.engine import make_engine
from shared.delivery.batching import BatchingWorker
from shared.delivery.handlers import HandlerRegistry
from shared.runtime import Runtime

#: The modules whose handlers tests pick from by name.
HANDLER_MODULES = ("tests.handlers", "workers.handlers")


def make_runtime(
    settings: Config, handlers: list[str | Callable[..., Any]] | None = None, **overrides: Any
) -> Runtime:
    """A runtime with exactly these handlers: names declared in :data:`HANDLER_MODULES`, or
    functions declared with ``@handles`` (all of ``tests.handlers`` by default)."""
    known = HandlerRegistry.from_modules(HANDLER_MODULES)
    chosen = handlers if handlers is not None else [n for n in known if n.startswith("test.")]
    specs = [known[h] if isinstance(h, str) else h for h in chosen]
    if overrides:
        settings = settings.model_copy(update=overrides)
    return Runtime(settings, make_engine(settings), specs)


@contextmanager
def running_worker(runtime: Runtime, threads: int = 4) -> Iterator[dramatiq.Worker]:
    worker = BatchingWorker(runtime.broker, worker_threads=threads, worker_timeout=runtime.config.worker_idle_ms)
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
