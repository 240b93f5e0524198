"""Logging for Ozzy processes: lines a person can read, and never an event's payload.

Dramatiq logs every failed attempt with the whole message (the event's payload: applicants' names
and e-mails) and its traceback, at ERROR. Those lines are dropped here; the worker's
:class:`shared.delivery.worker.DeliveryState` logs each failure instead: one warning line per
retry (handler, event type and id, attempt, error class), and the traceback once, when the delivery
is dead. Handled events are one line each (at INFO in development, DEBUG otherwise).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: Dramatiq's own lines that would carry a message's payload (``Message.__str__`` prints its args),
#: at any level: the worker thread's, and each actor's "Received args" at DEBUG.
_PAYLOAD_LINES = ("Failed to process message", "Message %s was skipped", "Received message", "Received args")


class _NoPayloads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_PAYLOAD_LINES))


def configure(level: str = "INFO", *, plain: bool = False) -> None:
    """Set up the process's logging (``plain``: no time and pid, a process manager adds them)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(levelname)-7s %(name)s: %(message)s" if plain
        else "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("apscheduler", "pgserver", "dramatiq.worker.Worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    hide_payloads()


@contextmanager
def quiet(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Within this block, logger ``name`` (and its children) logs only from ``level`` up: for
    libraries that talk at INFO about things a one-line answer does not need (Alembic's plugins)."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def hide_payloads(*loggers: logging.Logger) -> None:
    """Drop Dramatiq's log lines that would print a message's payload, from its worker threads and
    from ``loggers`` (each actor's; idempotent)."""
    for logger in (logging.getLogger("dramatiq.worker.WorkerThread"), *loggers):
        if not any(isinstance(f, _NoPayloads) for f in logger.filters):
            logger.addFilter(_NoPayloads())
