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

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
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

    The two statements (and the transaction's BEGIN) go to the driver in one pipeline: one round
    trip, like the unordered inbox claim, where they took two through SQLAlchemy (bench/ordered.py).
    The server still runs them one after the other, so the claim's snapshot follows the lock."""
    connection = session.connection()
    driver: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
    params = {"event_id": event_id, "handler": handler}
    try:
        with driver.cursor(row_factory=namedtuple_row) as cursor:
            with driver.pipeline():
                cursor.execute(sql.LOCK_KEY, params, prepare=True)
                cursor.execute(sql.ORDERED_CLAIM, params, prepare=True)
            rows: list[Any] = cursor.fetchall()
    except psycopg.Error as exc:
        disconnected = connection.dialect.is_disconnect(exc, driver, None)  # type: ignore[arg-type]
        if disconnected:
            connection.invalidate(exc)
        raise DBAPIError.instance(sql.ORDERED_CLAIM, params, exc, psycopg.Error,
                                  connection_invalidated=disconnected, dialect=connection.dialect) from exc
    if not rows[0].keyed:
        return None
    return Gate(rows[0].blocker, rows[0].claimed, [r for r in rows if r.delivery_id is not None])


def release_next(session: Session | Connection, handler: str, key: str) -> list[Any]:
    """In the transaction that finished a delivery of ``key`` (holding its lock): the next one, if
    it was blocked, made pending; send what this returns with :func:`send_released` after commit."""
    return list(session.execute(sql.RELEASE_NEXT, {"handler": handler, "key": key}).all())


def send_released(wiring: Wiring, rows: Sequence[Any]) -> None:
    """Send released deliveries (after the commit that released them). A failure is logged: they
    are pending in PostgreSQL, and the redelivery sweep sends them."""
    known = [row for row in rows if row.handler in wiring.handlers]
    if not known:
        return
    try:
        send(wiring.redis, wiring.config.redis_namespace,
             [(wiring.handlers[row.handler], envelope_json(row)) for row in known])
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
