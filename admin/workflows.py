"""Sagas and recurring jobs in the back office (``/admin/sagas``, ``/admin/recurring``) and the
API (``/api/sagas``, ``/api/recurring``): saga instances by type and status with their state, steps
and pending timeouts; recurring jobs with their last and next run, paused or resumed."""

from __future__ import annotations

from typing import Any

from flask import flash, jsonify, request, url_for
from flask_admin.actions import action
from flask_admin.contrib.sqla.filters import FilterEqual
from markupsafe import Markup, escape
from sqlalchemy import select

from admin.api import _limit, bp, runtime
from admin.db import db_session
from admin.models import RecurringRow
from admin.models import OutboxEvent
from admin.views import ReadOnlyModelView, _pretty_json, _status_badge, badge, compact_time, short_id
from shared.web.http import BadRequest
from shared.workflows import recurring
from shared.workflows.instances import COMPLETED, RUNNING, SagaInstance, SagaStep

STATUSES = (RUNNING, COMPLETED)


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def saga_json(s: SagaInstance, full: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": s.saga_type, "key": s.instance_key, "status": s.status, "steps": s.steps, "version": s.version,
        "started_at": _iso(s.started_at), "updated_at": _iso(s.updated_at), "completed_at": _iso(s.completed_at),
        "pending_timeouts": s.timeouts or [],
    }
    if full:
        data["state"] = s.state
        history = db_session().scalars(select(SagaStep).where(
            SagaStep.saga_type == s.saga_type, SagaStep.instance_key == s.instance_key).order_by(SagaStep.seq))
        data["history"] = [{"seq": h.seq, "step": h.step, "event_type": h.event_type,
                            "event_id": str(h.event_id) if h.event_id else None, "status": h.status,
                            "state": h.state, "at": _iso(h.at)} for h in history]
    return data


@bp.get("/sagas")
def list_sagas():  # type: ignore[no-untyped-def]
    """Saga instances, most recently changed first; ``type`` and ``status`` filter."""
    limit = _limit()
    query = select(SagaInstance).order_by(SagaInstance.updated_at.desc()).limit(limit)
    if (kind := request.args.get("type")) is not None:
        query = query.where(SagaInstance.saga_type == kind)
    if (status := request.args.get("status")) is not None:
        if status not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}", fields={"status": "unknown"})
        query = query.where(SagaInstance.status == status)
    return jsonify({"items": [saga_json(s) for s in db_session().scalars(query)]})


@bp.get("/sagas/<saga_type>/<path:key>")
def get_saga(saga_type: str, key: str):  # type: ignore[no-untyped-def]
    """One instance with its state, the history of its steps and its pending timeouts."""
    instance = db_session().get(SagaInstance, (saga_type, key))
    if instance is None:
        raise BadRequest("no such saga instance", status=404, code="not_found")
    return jsonify(saga_json(instance, full=True))


def recurring_json(r: RecurringRow) -> dict[str, Any]:
    return {"name": r.name, "schedule": r.schedule, "missed": r.missed, "paused": r.paused,
            "last_run_at": _iso(r.last_due_at), "next_run_at": _iso(r.next_due_at), "updated_at": _iso(r.updated_at)}


@bp.get("/recurring")
def list_recurring():  # type: ignore[no-untyped-def]
    rows = db_session().scalars(select(RecurringRow).order_by(RecurringRow.name))
    return jsonify({"items": [recurring_json(r) for r in rows]})


@bp.post("/recurring/<name>/<any(pause, resume):verb>")
def pause_or_resume(name: str, verb: str):  # type: ignore[no-untyped-def]
    """Pause a job (its waiting occurrence is cancelled) or resume it (the next one is scheduled)."""
    engine = runtime().engine
    found = recurring.pause(engine, name) if verb == "pause" else recurring.resume(engine, name, runtime().recurring)
    if not found:
        raise BadRequest("no such recurring job", status=404, code="not_found")
    db_session().expire_all()
    row = db_session().get(RecurringRow, name)
    return jsonify(recurring_json(row))


def _history(view, context, model, name):  # type: ignore[no-untyped-def]
    steps = db_session().scalars(select(SagaStep).where(
        SagaStep.saga_type == model.saga_type, SagaStep.instance_key == model.instance_key).order_by(SagaStep.seq)).all()
    # Each step's event, linked to its details: one indexed read for the whole history.
    wanted = [s.event_id for s in steps if s.event_id is not None]
    found = dict(db_session().execute(
        select(OutboxEvent.event_id, OutboxEvent.id).where(OutboxEvent.event_id.in_(wanted))).all()) if wanted else {}

    def event(s: SagaStep) -> Markup:
        if s.event_id is None:
            return escape(s.event_type)
        pk = found.get(s.event_id)
        link = (Markup(f'<a href="{escape(url_for("events.details_view", id=pk))}">{escape(s.event_type)}</a>')
                if pk is not None else escape(s.event_type))
        return link + Markup(" ") + short_id(s.event_id)

    rows = "".join(f"<tr><td>{s.seq}</td><td>{escape(s.step)}</td><td>{event(s)}</td>"
                   f"<td>{badge(s.status)}</td><td>{compact_time(s.at)}</td></tr>" for s in steps)
    return Markup(f'<table class="table table-sm" id="saga-history"><tr><th>#</th><th>step</th><th>event</th>'
                  f"<th>status</th><th>at</th></tr>{rows}</table>")


class SagasView(ReadOnlyModelView):
    column_default_sort = ("updated_at", True)
    column_list = ["saga_type", "instance_key", "status", "steps", "started_at", "updated_at", "completed_at"]
    column_details_list = ["saga_type", "instance_key", "status", "version", "state", "timeouts", "history",
                           "started_at", "updated_at", "completed_at"]
    column_labels = {"saga_type": "Saga", "instance_key": "Key", "timeouts": "Pending timeouts"}
    column_formatters = {"status": _status_badge}
    column_formatters_detail = {"state": _pretty_json, "timeouts": _pretty_json, "history": _history,
                                "status": _status_badge}
    column_filters = [
        FilterEqual(SagaInstance.saga_type, "Saga"),
        FilterEqual(SagaInstance.status, "Status", options=[(s, s) for s in STATUSES]),
    ]


class RecurringView(ReadOnlyModelView):
    column_default_sort = ("name", False)
    column_list = ["name", "schedule", "missed", "paused", "last_due_at", "next_due_at"]
    column_labels = {"last_due_at": "Last run", "next_due_at": "Next run", "missed": "Missed runs", "paused": "State"}
    column_formatters = {"paused": lambda v, c, m, n: badge("paused" if m.paused else "active")}

    @action("pause", "Pause", "Pause the {n} selected recurring jobs? Their waiting occurrence is cancelled and they"
                              " do not run until resumed.")
    def action_pause(self, ids: list[str]) -> None:
        done = sum(recurring.pause(runtime().engine, name) for name in ids)
        flash(f"{done} recurring {'job' if done == 1 else 'jobs'} paused.", "success")

    @action("resume", "Resume", "Resume the {n} selected recurring jobs? Their next occurrence is scheduled.")
    def action_resume(self, ids: list[str]) -> None:
        done = sum(recurring.resume(runtime().engine, name, runtime().recurring) for name in ids)
        flash(f"{done} recurring {'job' if done == 1 else 'jobs'} resumed.", "success")


__all__ = ["RecurringView", "SagasView"]
