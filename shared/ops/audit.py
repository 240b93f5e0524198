"""The audit trail: every operator action is an ``ozzy.audit`` event in the log.

An :class:`Audited` event names the actor (``user:NAME``, ``token:NAME`` with the token's user, or
``cli:<os user>``), the client address, the action and what it touched. It is written in the same
transaction as the change when there is one (settings, flags, control commands, user and token
changes), otherwise right after it. :func:`page` reads the trail newest first, through the log's
``(event_type, id)`` index.

Actions: ``login.succeeded``, ``login.failed``, ``login.throttled``, ``logout``, ``delivery.retried``,
``deliveries.retried`` (bulk, with the count), ``deliveries.resolved``, ``setting.changed``,
``flag.changed``, ``control.issued``, ``user.created``, ``user.disabled``, ``user.enabled``,
``user.role_set``, ``user.password_set``, ``token.created``, ``token.revoked``, and ``request`` for
any other change made through the back office or the API (method and path), so a route added later
is on the trail before it is given a name of its own.
"""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from shared.db.tables import outbox
from shared.model.events import Event, causal_context
from shared.model.stored import to_stored
from shared.model.unit_of_work import UnitOfWork
from shared.outbox.write import write_events

EVENT_TYPE = "ozzy.audit"


class Audited(Event, name=EVENT_TYPE, version=1):
    """An operator did something: who, from where, what, to what."""

    action: str
    actor: str
    client: str | None = None
    #: What the action touched: a delivery id, a setting key, a flag, a user or token name, a path.
    target: str | None = None
    #: Counts and small facts (never values that could be secrets, never payloads).
    details: dict[str, Any] = {}


def record(uow: UnitOfWork, action: str, actor: str, *, client: str | None = None, target: str | None = None,
           **details: Any) -> None:
    """Add the audit event to ``uow``: it commits with the change it describes."""
    uow.publish(Audited(action=action, actor=actor, client=client, target=target, details=details))


def cli_actor() -> str:
    """``cli:<os user>``: who ran an ``ozzy`` command."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        name = "unknown"
    return f"cli:{name}"


def record_in_session(session: Session, action: str, actor: str, *, target: str | None = None, **details: Any) -> None:
    """Write the audit event in ``session``'s transaction (commands that use a plain session)."""
    event = Audited(action=action, actor=actor, client=None, target=target, details=details)
    with causal_context(actor=actor):
        write_events(session, [to_stored(event)])


#: Largest page :func:`page` returns.
MAX_PAGE = 500


def page(conn: Connection | Session, *, actor: str | None = None, action: str | None = None,
         since: datetime | None = None, until: datetime | None = None, cursor: int | None = None,
         limit: int = 50) -> tuple[list[dict[str, Any]], int | None]:
    """Audit events newest first, filtered, and the cursor of the next page (None at the end)."""
    query = (select(outbox.c.id, outbox.c.occurred_at, outbox.c.payload)
             .where(outbox.c.event_type == EVENT_TYPE).order_by(outbox.c.id.desc()).limit(limit + 1))
    if cursor is not None:
        query = query.where(outbox.c.id < cursor)
    if actor is not None:
        query = query.where(outbox.c.payload["actor"].astext == actor)
    if action is not None:
        query = query.where(outbox.c.payload["action"].astext == action)
    if since is not None:
        query = query.where(outbox.c.occurred_at >= since)
    if until is not None:
        query = query.where(outbox.c.occurred_at < until)
    rows = conn.execute(query).all()
    items = [entry(row) for row in rows[:limit]]
    return items, (items[-1]["id"] if len(rows) > limit else None)


def entry(row: Any) -> dict[str, Any]:
    payload = row.payload
    return {"id": row.id, "at": row.occurred_at.isoformat(), "action": payload.get("action"),
            "actor": payload.get("actor"), "client": payload.get("client"), "target": payload.get("target"),
            "details": payload.get("details") or {}}
