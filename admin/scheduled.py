"""Scheduled events in the back office (``/admin/scheduled``) and the API (``/api/scheduled``):
list them with their due times and state, and cancel those still waiting."""

from __future__ import annotations

import uuid
from typing import Any

from flask import flash, jsonify, request
from flask_admin.actions import action
from flask_admin.contrib.sqla.filters import FilterEqual
from sqlalchemy import select, tuple_

from admin.api import _cursor, _limit, bp, runtime
from admin.db import db_session
from admin.models import ScheduledRow
from admin.views import ReadOnlyModelView, _pretty_json, _status_badge, _uuid
from shared.db import sql
from shared.db.tables import CANCELLED, FIRED, SCHEDULED
from shared.web.http import BadRequest

STATUSES = (SCHEDULED, FIRED, CANCELLED)


def cancel(event_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Cancel the events among ``event_ids`` that still wait; return those cancelled."""
    with runtime().engine.begin() as conn:
        return [r for (r,) in conn.execute(sql.CANCEL_SCHEDULED, {"ids": event_ids, "keys": []})]


def scheduled_json(s: ScheduledRow, full: bool = False) -> dict[str, Any]:
    data = {
        "id": s.id,
        "event_id": str(s.event_id),
        "type": s.event_type,
        "aggregate_type": s.aggregate_type,
        "aggregate_id": s.aggregate_id,
        "key": s.key,
        "due_at": s.due_at.isoformat(),
        "status": s.status,
        "created_at": s.created_at.isoformat(),
        "fired_at": s.fired_at.isoformat() if s.fired_at else None,
        "cancelled_at": s.cancelled_at.isoformat() if s.cancelled_at else None,
    }
    if full:
        data.update(payload=s.payload, metadata=s.metadata_)
    return data


@bp.get("/scheduled")
def list_scheduled():  # type: ignore[no-untyped-def]
    """Scheduled events, earliest due first; ``status`` (default ``scheduled``: still waiting) and
    ``type`` filter; pagination by ``cursor`` as elsewhere."""
    limit, cursor = _limit(), _cursor()
    status = request.args.get("status", SCHEDULED)
    if status not in (*STATUSES, "all"):
        raise BadRequest(f"status must be one of {', '.join(STATUSES)} or all", fields={"status": "unknown"})
    query = select(ScheduledRow).order_by(ScheduledRow.due_at, ScheduledRow.id).limit(limit + 1)
    if status != "all":
        query = query.where(ScheduledRow.status == status)
    if (kind := request.args.get("type")) is not None:
        query = query.where(ScheduledRow.event_type == kind)
    if cursor is not None:
        after = db_session().get(ScheduledRow, cursor)
        if after is not None:
            query = query.where(tuple_(ScheduledRow.due_at, ScheduledRow.id) > tuple_(after.due_at, after.id))
    rows = db_session().scalars(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return jsonify({"items": [scheduled_json(r) for r in rows], "next_cursor": rows[-1].id if more else None})


def _find(ident: str) -> ScheduledRow:
    try:
        key = uuid.UUID(ident)
    except ValueError:
        raise BadRequest("no such scheduled event", status=404, code="not_found") from None
    row = db_session().scalar(select(ScheduledRow).where(ScheduledRow.event_id == key))
    if row is None:
        raise BadRequest("no such scheduled event", status=404, code="not_found")
    return row


@bp.get("/scheduled/<event_id>")
def get_scheduled(event_id: str):  # type: ignore[no-untyped-def]
    return jsonify(scheduled_json(_find(event_id), full=True))


@bp.post("/scheduled/<event_id>/cancel")
def cancel_scheduled(event_id: str):  # type: ignore[no-untyped-def]
    """Cancel a waiting event: ``200`` with its new state; ``409`` if it already fired or was cancelled."""
    row = _find(event_id)
    if not cancel([row.event_id]):
        db_session().refresh(row)
        raise BadRequest(f"the scheduled event is {row.status}; only waiting events can be cancelled",
                         status=409, code="conflict")
    db_session().refresh(row)
    return jsonify(scheduled_json(row))


class ScheduledView(ReadOnlyModelView):
    column_default_sort = ("due_at", True)  # latest due first: what waits, then what fired most recently
    column_list = ["due_at", "event_type", "status", "key", "aggregate_id", "created_at", "fired_at", "cancelled_at"]
    column_details_list = ["id", "event_id", "event_type", "event_version", "aggregate_type", "aggregate_id", "key",
                           "due_at", "status", "created_at", "fired_at", "cancelled_at", "payload", "metadata_"]
    column_labels = {"metadata_": "Metadata", "event_type": "Type", "due_at": "Due"}
    column_sortable_list = ["due_at", "created_at"]
    column_formatters = {"status": _status_badge}
    column_formatters_detail = {"payload": _pretty_json, "metadata_": _pretty_json, "status": _status_badge,
                                "event_id": _uuid}
    column_filters = [
        FilterEqual(ScheduledRow.status, "Status", options=[(s, s) for s in STATUSES]),
        FilterEqual(ScheduledRow.event_type, "Type"),
        FilterEqual(ScheduledRow.key, "Key"),
    ]

    @action("cancel", "Cancel", "Cancel the {n} selected scheduled events? They will not fire; those that already"
                                " fired are left as they are.")
    def action_cancel(self, ids: list[str]) -> None:
        event_ids = list(db_session().scalars(select(ScheduledRow.event_id).where(ScheduledRow.id.in_([int(i) for i in ids]))))
        done = cancel(event_ids)
        flash(f"{len(done)} of {len(ids)} scheduled events cancelled.", "success")


__all__ = ["ScheduledView", "cancel"]
