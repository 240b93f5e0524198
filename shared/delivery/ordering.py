"""Ordered handlers: one delivery at a time per key, in the log's dispatch order.

A handler declared with ``@handles(Event, name=..., ordered_by=<field or function>)`` is ordered.

* **The relay** records, for each of its deliveries, the event's key and dispatch position, in the
  transaction that gives the positions (under the dispatch lock). Its messages are sent after that
  commit, so a worker always finds the key and position (a lost send is found by the sweep).
* **The worker** (:func:`enter`) takes the key's lock (a transaction-scoped advisory lock) and
  looks for an earlier unfinished delivery of the key. If there is one, the delivery is marked
  ``blocked`` and its message acknowledged: it costs no retry. Otherwise it claims its inbox row
  and, in the same statement and transaction, hands the key over: if the next unfinished delivery
  of the key is blocked, it becomes pending, to be sent once the handler's transaction commits (a
  failure rolls the release back with the rest). Then the handler runs as any handler does.
* **A delivery that fails for good** stays unfinished, so the later ones of its key stay blocked
  while other keys flow. An operator's retry runs it (and its success releases the next); a resolve
  (:func:`shared.delivery.deadletters.resolve`) releases the next at once.

Two deliveries of one key never run at the same time: the second waits on the key's lock until the
first commits, then finds it finished. Unordered handlers take none of these steps.
"""

from __future__ import annotations

import functools
import logging
import uuid
import weakref
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared.db.sql import ordering as sql
from shared.delivery.handlers import HandlerSpec
from shared.delivery.messages import send
from shared.delivery.wiring import Wiring
from shared.model.stored import decode, envelope_json, from_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gate:
    """What an ordered delivery's gate found: the delivery holding it up (it is then blocked), or
    else whether it claimed the inbox row, and the next delivery of its key that it released."""

    blocker: int | None
    claimed: int | None
    released: list[Any]


def enter(session: Session, handler: str, event_id: uuid.UUID) -> Gate | None:
    """Pass the gate of an ordered delivery, in the handler's transaction: take its key's lock (held
    until the transaction ends), then, in a second statement, block it behind an earlier unfinished
    delivery of its key, or claim its inbox row and release the next one of its key (sent with
    :func:`send_released` once the transaction commits). None: the delivery has no key.

    The transaction's BEGIN and the two statements leave as one simple query (:data:`sql.GATE`), in
    one round trip and one call into libpq, run from plans the server keeps for the connection; the
    server still runs them one after the other, so the claim's snapshot follows the lock. A psycopg
    pipeline (the way used when the connection is not at rest) costs the same round trip but several
    calls, each giving up and taking back the GIL: with 8 worker threads, gates took twice as long
    as the unordered inbox claim (bench/ordered.py)."""
    connection = session.connection()
    driver: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
    try:
        gate = _gate_at_rest if at_rest(driver) else _gate_pipelined
        rows = gate(driver, handler, event_id)
    except psycopg.Error as exc:
        disconnected = (driver.pgconn.status == pq.ConnStatus.BAD
                        or connection.dialect.is_disconnect(exc, driver, None))  # type: ignore[arg-type]
        if disconnected:
            connection.invalidate(exc)
        params = {"event_id": event_id, "handler": handler}
        raise DBAPIError.instance(sql.ORDERED_CLAIM, params, exc, psycopg.Error,
                                  connection_invalidated=disconnected, dialect=connection.dialect) from exc
    if not rows[0].keyed:
        return None
    return Gate(rows[0].blocker, rows[0].claimed, [r for r in rows if r.delivery_id is not None])


def at_rest(driver: Any) -> TypeGuard[psycopg.Connection[Any]]:
    """A psycopg connection outside any transaction, with the driver's default settings: the gate
    may send its own BEGIN (the inbox claim too)."""
    return (
        isinstance(driver, psycopg.Connection)
        and driver.info.transaction_status == pq.TransactionStatus.IDLE
        and not driver.autocommit
        and driver.isolation_level is None
        and driver.read_only is None
        and driver.deferrable is None
    )


#: The connections on which this process prepared the gate's statements (``sql.GATE_PREPARE``).
_prepared: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()

#: A prepared statement missing (psycopg deallocates all of a connection's prepared statements on
#: a rollback) or already there.
_STATEMENT_STATES = (b"26000", b"42P05")


def _gate_at_rest(driver: psycopg.Connection[Any], handler: str, event_id: uuid.UUID) -> list[Any]:
    pgconn = driver.pgconn
    encoding = driver.info.encoding
    escape = pq.Escaping(pgconn).escape_literal
    query = sql.GATE.format(event_id=escape(str(event_id).encode(encoding)).decode(encoding),
                            handler=escape(handler.encode(encoding)).decode(encoding))
    fresh = driver not in _prepared
    result = pgconn.exec_(((sql.GATE_PREPARE if fresh else "") + query).encode(encoding))
    failed = result.status == pq.ExecStatus.FATAL_ERROR
    if failed and result.error_field(pq.DiagnosticField.SQLSTATE) in _STATEMENT_STATES:
        _prepare_again(driver)
        result = pgconn.exec_(query.encode(encoding))
    if result.status == pq.ExecStatus.FATAL_ERROR:
        raise psycopg.errors.error_from_result(result, encoding=encoding)
    if result.status != pq.ExecStatus.TUPLES_OK:
        raise psycopg.OperationalError(f"unexpected result of the gate: {pq.ExecStatus(result.status).name}")
    _prepared.add(driver)
    loader = Transformer(driver)
    loader.set_pgresult(result)
    names = tuple(result.fname(k) or b"" for k in range(result.nfields))
    return loader.load_rows(0, result.ntuples, _row_type(names, encoding)._make)


def _prepare_again(driver: psycopg.Connection[Any]) -> None:
    """After the gate found its prepared statements missing (or there when it thought not): roll
    back what it began, drop what is left of them, and prepare them again."""
    pgconn = driver.pgconn
    encoding = driver.info.encoding

    def run(command: str) -> Any:
        result = pgconn.exec_(command.encode(encoding))
        if result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            raise psycopg.errors.error_from_result(result, encoding=encoding)
        return result

    _prepared.discard(driver)
    if driver.info.transaction_status != pq.TransactionStatus.IDLE:
        run("ROLLBACK")
    found = run("SELECT name FROM pg_prepared_statements WHERE name IN ('ozzy_gate_lock','ozzy_gate_claim')")
    for k in range(found.ntuples):
        run(f"DEALLOCATE {(found.get_value(k, 0) or b'').decode(encoding)}")
    run(sql.GATE_PREPARE)
    _prepared.add(driver)


@functools.lru_cache(maxsize=8)
def _row_type(names: tuple[bytes, ...], encoding: str) -> Any:
    return namedtuple("GateRow", [name.decode(encoding) for name in names])


def _gate_pipelined(driver: psycopg.Connection[Any], handler: str, event_id: uuid.UUID) -> list[Any]:
    """The gate on a connection not at rest: its two statements in one psycopg pipeline."""
    params = {"event_id": event_id, "handler": handler}
    with driver.cursor(row_factory=namedtuple_row) as cursor:
        with driver.pipeline():
            cursor.execute(sql.LOCK_KEY, params, prepare=True)
            cursor.execute(sql.ORDERED_CLAIM, params, prepare=True)
        return cursor.fetchall()


def release_next(session: Session | Connection, handler: str, key: str) -> list[Any]:
    """In the transaction that finished a delivery of ``key`` (holding its lock): the next one, if
    it was blocked, made pending; send what this returns with :func:`send_released` after commit."""
    return list(session.execute(sql.RELEASE_NEXT, {"handler": handler, "key": key}).all())


def send_released(wiring: Wiring, rows: Sequence[Any]) -> None:
    """Send released deliveries (after the commit that released them) to the head of their queues.
    A failure is logged: they are pending in PostgreSQL, and the redelivery sweep sends them.

    The head, not the tail: a released delivery already waited, and behind a backlog every later
    delivery of its key that arrived first would find it unfinished and be blocked too, each then
    released one queue trip after the other (bench/ordered.py: 3-7 % of a backlog's deliveries
    blocked at the tail, under 0.7 % at the head)."""
    known = [row for row in rows if row.handler in wiring.handlers]
    if not known:
        return
    try:
        send(wiring.redis, wiring.config.redis_namespace,
             [(wiring.handlers[row.handler], envelope_json(row)) for row in known], front=True)
    except Exception as exc:  # noqa: BLE001 - the sweep redelivers pending rows
        log.warning("could not send %d released ordered deliveries (the sweep will): %s", len(known), exc)


def resolve_and_release(conn: Connection, ids: Sequence[int], resolve: Any, params: dict[str, Any]) -> tuple[int, list[Any]]:
    """Run the ``resolve`` statement over ``ids`` holding the locks of their keys, and release the
    next delivery of each key; return the number resolved and the released rows."""
    keys = conn.execute(sql.KEYS_OF, {"ids": list(ids)}).all()
    for handler, key in keys:  # in a stable order: two resolves never wait on each other's keys
        conn.execute(sql.LOCK_ONE_KEY, {"handler": handler, "key": key})
    count = conn.execute(resolve, params).rowcount
    released = [row for handler, key in keys for row in release_next(conn, handler, key)]
    return count, released


def keys_for(specs: Sequence[HandlerSpec], row: Any) -> list[str | None]:
    """The key of the outbox ``row`` for each ordered spec (None when it cannot be decoded: the
    worker then dead-letters it, and it blocks nothing)."""
    try:
        event = decode(from_row(row))
    except Exception as exc:  # noqa: BLE001 - the worker reports the payload error itself
        log.warning("no ordering key for %s %s: %s", row.event_type, row.event_id, type(exc).__name__)
        return [None] * len(specs)
    keys: list[str | None] = []
    for spec in specs:
        try:
            keys.append(spec.order_key(event))
        except Exception as exc:  # noqa: BLE001 - a key function's bug must not stop the relay
            log.warning("%s: no ordering key for %s: %s", spec.name, row.event_id, type(exc).__name__)
            keys.append(None)
    return keys


def blockers(conn: Connection | Session, ids: Sequence[int]) -> dict[int, int]:
    """For the blocked deliveries among ``ids``: the delivery that holds each one up."""
    if not ids:
        return {}
    return {r.blocked_id: r.blocker_id for r in conn.execute(sql.BLOCKERS, {"ids": list(ids)})}
