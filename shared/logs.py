"""Logging for Ozzy processes: lines a person can read, and never an event's payload.

Dramatiq logs every failed attempt with the whole message (the event's payload: applicants' names
and e-mails) and its traceback, at ERROR. Those lines are dropped here; the worker's
:class:`shared.delivery.worker.DeliveryState` logs each failure instead: one warning line per
retry (handler, event type and id, attempt, error class), and the traceback once, when the delivery
is dead. Handled events are one line each (at INFO in development, DEBUG otherwise).

``OZZY_LOG_FORMAT=json`` writes one JSON object a line (time, level, logger, message, process,
thread, and the exception's traceback as text) for a log search to index. Fields bound with
:func:`bind` ride along on every record of their thread: inside a handler ``event_id``,
``event_type``, ``handler``, ``attempt`` and ``correlation_id``; in the web process, the request's
``correlation_id``. Text, the default, is for a person at a terminal and leaves them out.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

#: Dramatiq's own lines that would carry a message's payload (``Message.__str__`` prints its args),
#: at any level: the worker thread's, and each actor's "Received args" at DEBUG.
_PAYLOAD_LINES = ("Failed to process message", "Message %s was skipped", "Received message", "Received args")


class _NoPayloads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_PAYLOAD_LINES))


#: Fields every record of this thread (or task) carries, set by :func:`bind`.
_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ozzy_log_fields", default=None)
#: Attributes every ``LogRecord`` has: a bound field of the same name would clobber them.
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def bind(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Add ``fields`` to every record logged from here on in this context; undo with :func:`unbind`."""
    current = _fields.get()
    return _fields.set({**current, **fields} if current else fields)


def unbind(token: contextvars.Token[dict[str, Any] | None]) -> None:
    """Undo the :func:`bind` that returned ``token``."""
    _fields.reset(token)


def bound() -> dict[str, Any]:
    """The fields bound in this context."""
    return dict(_fields.get() or {})


class BoundFields(logging.Filter):
    """Copies the bound fields onto each record, in the thread that logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _fields.get()
        if fields:
            for key, value in fields.items():
                if key not in _RESERVED:
                    setattr(record, key, value)
            record.ozzy_fields = tuple(fields)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, process, thread, the
    bound fields, and ``exception`` (the traceback as text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for key in getattr(record, "ozzy_fields", ()):
            if key not in _RESERVED:
                data[key] = getattr(record, key, None)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


#: Values of ``OZZY_LOG_FORMAT``.
LOG_FORMATS = ("text", "json")


def configure(level: str = "INFO", *, plain: bool = False, fmt: str = "text") -> None:
    """Set up the process's logging (``plain``: no time and pid, a process manager adds them;
    ``fmt``: ``text`` for a terminal, ``json`` for one JSON object a line)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(levelname)-7s %(name)s: %(message)s" if plain
            else "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"))
    handler.addFilter(BoundFields())
    logging.basicConfig(level=level.upper(), handlers=[handler])
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
