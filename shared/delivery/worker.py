"""The handler side: the actor body (inbox + handler + its events, one transaction), the middleware
that records failures, and the broker with one Dramatiq actor per handler."""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import psycopg
from dramatiq import Middleware
from dramatiq.broker import MessageProxy
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit
from psycopg import pq
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from shared.db import sql
from shared.db.sql.deliveries import INBOX_BEGIN_AND_CLAIM, INBOX_CLAIM_LITERAL
from shared.db.engine import unpinged
from shared.db.tables import DEAD, INVALID_PAYLOAD, PERMANENT_ERROR, RETRIES_EXHAUSTED, RETRYING, UNKNOWN_EVENT_TYPE
from shared.delivery.batching import SAVEPOINT, Batch, Batching
from shared.delivery.broker import OzzyBroker
from shared.delivery import batching, ordering, versions
from shared.delivery.handlers import HandlerSpec
from shared.delivery.wiring import Wiring
from shared import logs
from shared.errors import ConcurrencyError, EventDecodeError, PermanentError, UnknownEventType
from shared.model.events import causal_context
from shared.observability.handlers import DUPLICATE, PARKED_OUTCOME, WAITING, HandlerObservability, outcome
from shared.model.stored import StoredEvent, decode
from shared.outbox.unit_of_work import SqlUnitOfWork

log = logging.getLogger(__name__)


def actor_function(wiring: Wiring, spec: HandlerSpec) -> Callable[[dict[str, Any]], None]:
    """The function Dramatiq runs for ``spec``: it receives a stored event's message form.

    It returns None (Dramatiq warns about any other value, with no Results middleware); what came
    of the message, when it is not a run, is told to the metrics middleware by :func:`outcome`."""

    def handle(envelope: dict[str, Any]) -> None:
        stored = StoredEvent.from_message(envelope)
        if versions.too_new(stored):  # a rolling deploy: wait for a worker that knows this version
            versions.park(wiring, spec, stored)
            outcome(PARKED_OUTCOME)
            return
        batch = batching.current()
        if batch is not None and batch.usable:
            try:
                run_in_batch(wiring, spec, stored, batch)
                return
            except DBAPIError as exc:
                if not database_unavailable(exc):
                    raise
                # The batch's transaction is gone: what it held runs again after it, and this
                # delivery now, on its own (waiting for the database as below).
                batch.abandon()
                log.warning("%s: database unavailable in a batch, running alone: %s", spec.name, exc.orig)
        pause = 0.1
        while True:
            try:
                run_handler(wiring, spec, stored)
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


def run_handler(wiring: Wiring, spec: HandlerSpec, stored: StoredEvent) -> bool:
    """Run ``spec`` on ``stored`` at most once: False if the pair was already done.

    Its connection is not pre-pinged: a lost one fails the delivery as "database unavailable",
    which :func:`actor_function` retries at no cost to the retry budget."""
    with unpinged():
        return _run_handler(wiring, spec, stored)


def _run_handler(wiring: Wiring, spec: HandlerSpec, stored: StoredEvent) -> bool:
    started = time.perf_counter()
    session = wiring.session_factory()
    uow = SqlUnitOfWork(session, managed=True)
    released: list[Any] = []
    try:
        # An ordered handler passes its key's gate, which also claims the inbox row (see ordering).
        gate = ordering.enter(session, spec.name, stored.event_id) if spec.ordered_by is not None else None
        if gate is not None and gate.blocker is not None:
            session.commit()  # blocked: the delivery that finishes the blocker sends it again
            log.debug("%s: %s waits for delivery %s of its key", spec.name, stored.event_id, gate.blocker)
            outcome(WAITING)
            return False
        if gate is not None:
            claimed, released = gate.claimed, gate.released
        else:
            claimed = inbox_claim(session, stored.event_id, spec.name)
        if claimed is None:
            session.rollback()
            outcome(DUPLICATE)
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
    if released:
        ordering.send_released(wiring, released)
    if uow.written:
        wiring.wake_relays()
    # Per event, so DEBUG: at INFO a busy worker spent a measurable share of its time on log lines.
    # One line per event: at INFO in development; at DEBUG in production, where at INFO a busy worker
    # spent a measurable share of its time on log lines. Ids and types only, never the payload.
    log.log(logging.INFO if wiring.config.dev else logging.DEBUG, "%s handled %s %s in %.1f ms, raised %d",
            spec.name, stored.type, stored.event_id, (time.perf_counter() - started) * 1000, len(uow.written))
    return True


def run_in_batch(wiring: Wiring, spec: HandlerSpec, stored: StoredEvent, batch: Batch) -> bool:
    """Run ``spec`` on ``stored`` inside ``batch``'s transaction, in a savepoint of its own: False if
    the pair was already done. What it wrote is committed with the batch (see batching)."""
    started = time.perf_counter()
    connection = batch.connect()
    session = wiring.session_factory(bind=connection, join_transaction_mode="rollback_only")
    uow = SqlUnitOfWork(session, managed=True)
    try:
        claimed = inbox_claim_in_batch(batch, connection, stored.event_id, spec.name)
        if claimed is None:
            outcome(DUPLICATE)
            log.debug("skipping %s for %s: already done", spec.name, stored.event_id)
            return False
        event = decode(stored)
        with causal_context(correlation_id=stored.correlation_id, causation_id=stored.event_id):
            spec.fn(event, uow)
            uow.flush()  # the handler's effects, its events and the inbox row, in its savepoint
    except BaseException as exc:
        _undo(batch, connection)
        if isinstance(exc, StaleDataError):
            raise ConcurrencyError() from exc
        raise
    finally:
        session.close()  # joined to the batch's transaction: leaves it as it is
    batch.delivered(spec.name, stored.event_id, events=bool(uow.written))
    log.log(logging.INFO if wiring.config.dev else logging.DEBUG, "%s handled %s %s in %.1f ms, raised %d (batched)",
            spec.name, stored.type, stored.event_id, (time.perf_counter() - started) * 1000, len(uow.written))
    return True


def inbox_claim_in_batch(batch: Batch, connection: Any, event_id: uuid.UUID, handler: str) -> Any:
    """The inbox claim behind the delivery's SAVEPOINT, in one round trip: behind the BEGIN too for
    the first delivery, behind the RELEASE of the previous delivery's savepoint for the others."""
    driver = connection.connection.driver_connection
    status = driver.info.transaction_status
    if status == pq.TransactionStatus.INERROR:  # a failure whose rollback was interrupted
        _undo(batch, connection)
        status = driver.info.transaction_status
    if status == pq.TransactionStatus.IDLE:
        batch.transaction_lost()  # nothing, or a handler rolled the whole transaction back
        template = f"BEGIN; SAVEPOINT {SAVEPOINT}; {INBOX_CLAIM_LITERAL}"
    else:
        template = f"RELEASE SAVEPOINT {SAVEPOINT}; SAVEPOINT {SAVEPOINT}; {INBOX_CLAIM_LITERAL}"
    return _claim_on_driver(connection, driver, event_id, handler, template)


def _undo(batch: Batch, connection: Any) -> None:
    """Roll the batch back to the failed delivery's savepoint; if its transaction or connection is
    gone, the batch learns that what it held runs again."""
    batch.settled = False
    try:
        driver = connection.connection.driver_connection
        status = driver.info.transaction_status
        if status == pq.TransactionStatus.IDLE:
            batch.transaction_lost()  # the session (the handler, a version conflict) rolled it all back
        else:
            result = driver.pgconn.exec_(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}".encode())
            if result.status != pq.ExecStatus.COMMAND_OK:
                raise psycopg.OperationalError(result.error_message.decode(errors="replace"))
        batch.settled = True
    except Exception as exc:  # noqa: BLE001 - the delivery's own error is the one to report
        log.warning("a batch lost its transaction: %s", exc)
        batch.abandon()


def inbox_claim(session: Session, event_id: uuid.UUID, handler: str) -> Any:
    """:data:`shared.db.sql.INBOX_CLAIM` as the first statement of the session's transaction: the
    delivery's row id, or None if the pair was already done.

    The claim and the BEGIN go out as one simple query, in one round trip (through SQLAlchemy or
    the driver, the BEGIN is a round trip of its own). Only on a connection at rest with the
    driver's default transaction settings; anywhere else, the same statement through the session."""
    connection = session.connection()
    driver = connection.connection.driver_connection
    if ordering.at_rest(driver):
        return _claim_on_driver(connection, driver, event_id, handler)
    return session.execute(sql.INBOX_CLAIM, {"event_id": event_id, "handler": handler}).scalar()


def _claim_on_driver(connection: Any, driver: psycopg.Connection[Any], event_id: uuid.UUID, handler: str,
                     template: str = INBOX_BEGIN_AND_CLAIM) -> Any:
    pgconn = driver.pgconn
    encoding = driver.info.encoding
    query = ""
    try:
        escape = pq.Escaping(pgconn).escape_literal
        query = template.format(
            event_id=escape(str(event_id).encode(encoding)).decode(encoding),
            handler=escape(handler.encode(encoding)).decode(encoding),
        )
        result = pgconn.exec_(query.encode(encoding))
        if result.status == pq.ExecStatus.TUPLES_OK:
            value = result.get_value(0, 0) if result.ntuples else None
            return None if value is None else int(value)
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result, encoding=encoding)
        raise psycopg.OperationalError(f"unexpected result of the inbox claim: {pq.ExecStatus(result.status).name}")
    except psycopg.Error as exc:
        # As SQLAlchemy reports an error of its own statements: a lost connection is invalidated
        # (not returned to the pool), and the error says so, so the delivery is retried.
        disconnected = pgconn.status == pq.ConnStatus.BAD or connection.dialect.is_disconnect(exc, driver, None)
        if disconnected:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            query, None, exc, psycopg.Error, connection_invalidated=disconnected, dialect=connection.dialect
        ) from exc


class DeliveryState(Middleware):
    """Records each failed attempt in ``ozzy_deliveries``: retrying, or dead once Retries gave up."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring

    def after_process_message(
        self, broker: dramatiq.Broker, message: MessageProxy, *, result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
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
        batch = batching.current()
        if batch is not None and not batch.settled:  # never waiting on the batch's own locks
            batch.later(lambda: self._record(params))
        else:
            self._record(params)
        # Retries has counted this failure already, unless it was one no retry can fix.
        attempt = message.options.get("retries", 0) + (1 if isinstance(exception, PERMANENT) else 0)
        what = (message.actor_name, envelope.get("type"), envelope["event_id"], attempt, type(exception).__name__)
        if status == DEAD:
            # The traceback once, when the delivery is dead (it is also kept in ozzy_deliveries).
            log.error("%s gave up on %s %s after attempt %d: %s", *what, exc_info=exception)
        else:
            log.warning("%s failed on %s %s (attempt %d, will retry): %s: %s", *what, _first_line(exception))

    def _record(self, params: dict[str, Any]) -> None:
        try:
            with self.wiring.engine.begin() as conn:
                conn.execute(sql.RECORD_FAILURE, params)
        except SQLAlchemyError:
            log.exception("could not record the failure of %s for %s", params["handler"], params["event_id"])


def _first_line(exception: BaseException) -> str:
    text = str(exception).strip().splitlines()
    return text[0][:200] if text else ""


def dead_reason(exception: BaseException) -> str:
    """Why a delivery is dead, in the words operators filter by."""
    if isinstance(exception, UnknownEventType):
        return UNKNOWN_EVENT_TYPE
    if isinstance(exception, EventDecodeError):
        return INVALID_PAYLOAD
    if isinstance(exception, PermanentError):
        return PERMANENT_ERROR
    reason: str = getattr(exception, "dead_reason", RETRIES_EXHAUSTED)
    return reason


#: Errors no retry can fix: the delivery is dead at the first failure.
PERMANENT = (PermanentError, UnknownEventType, EventDecodeError)


def build_broker(wiring: Wiring) -> OzzyBroker:
    """The Dramatiq broker of this process, with its middleware and one actor per handler; also
    set as Dramatiq's global broker (before any actor could be declared elsewhere)."""
    c = wiring.config
    middleware = [
        # First, so its "after" hook runs last: metrics, log context and span of each message.
        HandlerObservability(),
        AgeLimit(),
        TimeLimit(time_limit=c.time_limit_ms),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        # Dramatiq runs "after" hooks in reverse order: listed before Retries, DeliveryState runs
        # after it and knows whether a failure will be retried or was final.
        DeliveryState(wiring),
        Retries(max_retries=c.max_retries, min_backoff=c.min_backoff_ms, max_backoff=c.max_backoff_ms),
    ]
    broker = OzzyBroker(
        client=wiring.redis, namespace=c.redis_namespace, middleware=middleware, heartbeat_timeout=c.heartbeat_timeout_ms
    )
    broker.batching = Batching(
        engine=wiring.engine, size=c.worker_batch, on_events=wiring.wake_relays,
        handlers=frozenset(spec.name for spec in wiring.handlers.values() if spec.ordered_by is None),
    )
    dramatiq.set_broker(broker)
    for spec in wiring.handlers.values():
        actor = dramatiq.Actor(
            actor_function(wiring, spec),
            broker=broker,
            actor_name=spec.name,
            queue_name=spec.queue,
            priority=0,
            options={**spec.options, "throws": PERMANENT},
        )
        logs.hide_payloads(actor.logger)  # whoever runs these actors: Dramatiq would log payloads
    return broker
