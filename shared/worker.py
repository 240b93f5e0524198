"""The handler side: the actor body (inbox + handler + its events, one transaction), the middleware
that records failures, and the ``ozzy worker`` loop."""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq import Middleware
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm.exc import StaleDataError

from shared import sql
from shared.errors import ConcurrencyError, EventDecodeError, PermanentError, UnknownEventType
from shared.events import StoredEvent, causal_context, decode
from shared.handlers import HandlerSpec
from shared import control
from shared import settings as shared_settings
from shared.process import ProcessLife
from shared.tables import (
    DEAD,
    INVALID_PAYLOAD,
    PERMANENT_ERROR,
    RETRIES_EXHAUSTED,
    RETRYING,
    UNKNOWN_EVENT_TYPE,
)
from shared.uow import UnitOfWork

log = logging.getLogger(__name__)


def actor_function(runtime: Any, spec: HandlerSpec) -> Callable[[dict[str, Any]], None]:
    """The function Dramatiq runs for ``spec``: it receives a stored event's message form."""

    def handle(envelope: dict[str, Any]) -> None:
        stored = StoredEvent.from_message(envelope)
        pause = 0.1
        while True:
            try:
                run_handler(runtime, spec, stored)
                return
            except DBAPIError as exc:
                if not database_unavailable(exc):
                    raise
                # The handler could not even start or commit: waiting for the database costs none of
                # its retry budget (the time limit still bounds the wait).
                log.warning("%s: database unavailable, retrying in %.1fs: %s", spec.name, pause, exc.orig)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    handle.__name__ = spec.fn.__name__
    handle.__qualname__ = spec.fn.__qualname__
    handle.__module__ = spec.fn.__module__
    return handle


def database_unavailable(exc: DBAPIError) -> bool:
    """True for a lost or refused connection (SQLSTATE class 08, 57P, or none at connect time),
    not for an error in the handler's own SQL."""
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return isinstance(exc, OperationalError) and (sqlstate is None or sqlstate.startswith(("08", "57P")))


def run_handler(runtime: Any, spec: HandlerSpec, stored: StoredEvent) -> bool:
    """Run ``spec`` on ``stored`` at most once: False if the pair was already done."""
    session = runtime.session_factory()
    uow = UnitOfWork(session, managed=True)
    try:
        claimed = session.execute(sql.INBOX_CLAIM, {"event_id": stored.event_id, "handler": spec.name}).first()
        if claimed is None:
            session.rollback()
            log.debug("skipping %s for %s: already done", spec.name, stored.event_id)
            return False
        event = decode(stored)
        # Events the handler raises belong to the same conversation and are caused by this one.
        with causal_context(correlation_id=stored.correlation_id, causation_id=stored.event_id):
            spec.fn(event, uow)
            uow.commit_transaction()  # the handler's effects, its events and the inbox row
    except StaleDataError as exc:
        raise ConcurrencyError() from exc
    finally:
        session.close()
    if uow.written:
        runtime.notifier.notify()
    # Per event, so DEBUG: at INFO a busy worker spent a measurable share of its time on log lines.
    log.debug("%s handled %s %s, raised %d", spec.name, stored.type, stored.event_id, len(uow.written))
    return True


class DeliveryState(Middleware):
    """Records each failed attempt in ``ozzy_deliveries``: retrying, or dead once Retries gave up."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def after_process_message(self, broker, message, *, result=None, exception=None):  # type: ignore[no-untyped-def]
        if exception is None or not message.args:
            return
        envelope = message.args[0]
        status = DEAD if message.failed else RETRYING
        error = "".join(traceback.format_exception(exception))
        params = {
            "event_id": envelope["event_id"],
            "handler": message.actor_name,
            "status": status,
            "error": error,
            "dead_reason": dead_reason(exception) if status == DEAD else None,
        }
        try:
            with self.runtime.engine.begin() as conn:
                conn.execute(sql.RECORD_FAILURE, params)
        except SQLAlchemyError:
            log.exception("could not record the failure of %s for %s", message.actor_name, envelope["event_id"])
        if status == DEAD:
            log.error("%s gave up on event %s: %s", message.actor_name, envelope["event_id"], exception)


def dead_reason(exception: BaseException) -> str:
    """Why a delivery is dead, in the words operators filter by."""
    if isinstance(exception, UnknownEventType):
        return UNKNOWN_EVENT_TYPE
    if isinstance(exception, EventDecodeError):
        return INVALID_PAYLOAD
    if isinstance(exception, PermanentError):
        return PERMANENT_ERROR
    return RETRIES_EXHAUSTED


def _install_controls(runtime: Any, broker: Any, life: ProcessLife) -> None:
    def pause(name: str) -> None:
        broker.paused_queues.add(runtime.handlers[name].queue)

    def resume(name: str) -> None:
        broker.paused_queues.discard(runtime.handlers[name].queue)
        broker.wake_listener.wake_all()

    control.install(control.Controls(life.node, handlers=lambda: set(runtime.handlers), pause_handler=pause,
                                     resume_handler=resume))


def run_worker(runtime: Any, *, threads: int | None = None, queues: set[str] | None = None) -> int:
    """Consume every handler queue (or ``queues``) until SIGTERM or SIGINT, then finish in-flight
    messages, hand back prefetched ones and return 0."""
    broker = runtime.broker
    worker = dramatiq.Worker(
        broker,
        queues=queues,
        worker_threads=threads or runtime.settings.worker_threads,
        worker_timeout=runtime.settings.worker_idle_ms,
    )
    life = ProcessLife(
        runtime,
        "worker",
        lambda: {"handlers": sorted(runtime.handlers), "threads": worker.worker_threads,
                 "queues": sorted(queues or []), "paused_queues": sorted(broker.paused_queues)},
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker.start()
    _install_controls(runtime, broker, life)

    def honour_pauses() -> None:  # once the settings are loaded (the database may be down at start)
        for name in shared_settings.get(control.PAUSED_HANDLERS, []):
            if name in runtime.handlers:
                broker.paused_queues.add(runtime.handlers[name].queue)

    life.start(on_ready=honour_pauses)
    log.info("worker started: %d handlers on %d queues", len(runtime.handlers), len(broker.get_declared_queues()))
    stop.wait()
    log.info("worker stopping: finishing in-flight messages")
    worker.stop(timeout=runtime.settings.time_limit_ms)
    life.stop()
    runtime.close()
    return 0
