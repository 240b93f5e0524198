"""Replay and backfill on the management API (``/api/replays``, on the api blueprint and so behind
its authentication and roles) and in the back office (``/admin/replays``; "Replay" on a finished
delivery's page). A job started here runs on a thread of this web process; if the process stops,
the job waits at its position: ``POST /api/replays/<id>/resume`` (or ``ozzy replay --resume``)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import current_app, flash, jsonify, redirect, request, url_for
from flask_admin import BaseView, expose
from sqlalchemy import select

from admin.api import _json_object, bp
from admin.auth import actor, audit
from admin.db import db_session
from admin.models import Delivery
from admin.views import Secured
from shared.db.tables import BLOCKED, DEAD, FINISHED, replays as replays_table
from shared.delivery import ordering, replay as replays
from shared.web.http import MAX_ID, BadRequest, parse_id

FIELDS = {"handler", "event_type", "since", "until", "from_position", "aggregate_id", "dry_run"}


def _runtime():  # type: ignore[no-untyped-def]
    return current_app.extensions["ozzy"]


def _time(body: dict[str, Any], name: str) -> datetime | None:
    raw = body.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BadRequest(f"{name} must be an ISO 8601 time with a time zone", fields={name: "not a time"})
    return moment


def _filters(body: dict[str, Any]) -> replays.Filters:
    unknown = set(body) - FIELDS
    if unknown:
        raise BadRequest("unknown fields", fields={k: "unknown field" for k in sorted(unknown)})
    position = body.get("from_position")
    if position is not None and (not isinstance(position, int) or isinstance(position, bool)
                                 or not 1 <= position <= MAX_ID):
        raise BadRequest("from_position must be a positive integer", fields={"from_position": "not a position"})
    aggregate_id = body.get("aggregate_id")
    if aggregate_id is not None and (not isinstance(aggregate_id, str) or "\x00" in aggregate_id):
        raise BadRequest("aggregate_id must be a string", fields={"aggregate_id": "not a string"})
    return replays.Filters(since=_time(body, "since"), until=_time(body, "until"), from_position=position,
                           aggregate_id=aggregate_id)


def _handler(body: dict[str, Any]) -> tuple[str, str | None]:
    handler, event_type = body.get("handler"), body.get("event_type")
    if not isinstance(handler, str) or "\x00" in handler:
        raise BadRequest("handler is required", fields={"handler": "missing"})
    if event_type is not None and (not isinstance(event_type, str) or "\x00" in event_type):
        raise BadRequest("event_type must be a string", fields={"event_type": "not a string"})
    return handler, event_type


def _job_or_404(job_id: int) -> dict[str, Any]:
    job = replays.get(_runtime(), job_id)
    if job is None:
        raise BadRequest("no such replay", status=404, code="not_found")
    return job


@bp.post("/replays")
def replay_start():  # type: ignore[no-untyped-def]
    """Count (``"dry_run": true``) or start a replay of a handler over the events that match."""
    body = _json_object()
    filters, (handler, event_type) = _filters(body), _handler(body)
    if not isinstance(body.get("dry_run", False), bool):
        raise BadRequest("dry_run must be true or false", fields={"dry_run": "not a boolean"})
    try:
        if body.get("dry_run") is True:
            return jsonify(replays.count(_runtime(), handler, filters, event_type))
        job_id = replays.create(_runtime(), handler, filters, event_type=event_type, created_by=actor())
    except replays.ReplayError as exc:
        raise BadRequest(str(exc), fields={"handler": str(exc)}) from None
    _audit_started(job_id, handler)
    replays.run_in_background(_runtime(), job_id)
    return jsonify(_job_or_404(job_id)), 202


@bp.get("/replays")
def replay_list():  # type: ignore[no-untyped-def]
    """The latest replay jobs, newest first."""
    rows = db_session().execute(select(replays_table).order_by(replays_table.c.id.desc()).limit(100)).mappings()
    return jsonify({"items": [replays.job_json(row) for row in rows]})


@bp.get("/replays/<int:job_id>")
def replay_get(job_id: int):  # type: ignore[no-untyped-def]
    return jsonify(_job_or_404(job_id))


@bp.post("/replays/<int:job_id>/resume")
def replay_resume(job_id: int):  # type: ignore[no-untyped-def]
    """Go on with a job whose process stopped (running it twice at once is harmless)."""
    job = _job_or_404(job_id)
    if job["status"] != "running":
        raise BadRequest(f"replay is {job['status']}; only a running one can be resumed", status=409, code="conflict")
    audit("replay.resumed", target=f"replay:{job_id}", handler=job["handler"], position=job["position"])
    replays.run_in_background(_runtime(), job_id)
    return jsonify(job), 202


@bp.post("/replays/<int:job_id>/cancel")
def replay_cancel(job_id: int):  # type: ignore[no-untyped-def]
    _job_or_404(job_id)
    if not replays.cancel(_runtime(), job_id):
        raise BadRequest("replay is not running", status=409, code="conflict")
    audit("replay.cancelled", target=f"replay:{job_id}")
    return jsonify(_job_or_404(job_id))


@bp.post("/deliveries/<int:delivery_id>/replay")
def delivery_replay(delivery_id: int):  # type: ignore[no-untyped-def]
    """Run a finished (or dead) delivery's handler once more on its event."""
    job_id = replay_delivery(delivery_id)
    return jsonify(_job_or_404(job_id)), 202


def replay_delivery(delivery_id: int) -> int:
    """Start a one-event replay of delivery ``delivery_id`` (shared with the back office)."""
    d = db_session().get(Delivery, delivery_id)
    if d is None:
        raise BadRequest("no such delivery", status=404, code="not_found")
    if d.status not in (*FINISHED, DEAD):
        raise BadRequest(f"delivery is {d.status}; it will run anyway", status=409, code="conflict")
    try:
        # From the event's own position: the job reads one row, not the log up to it.
        seq = d.event.dispatch_seq if d.event is not None else None
        job_id = replays.create(_runtime(), d.handler, replays.Filters(event_id=str(d.event_id), from_position=seq),
                                created_by=actor())
    except replays.ReplayError as exc:
        raise BadRequest(str(exc), status=409, code="conflict") from None
    audit("delivery.replayed", target=delivery_id, handler=d.handler, event_id=str(d.event_id), replay=job_id)
    replays.run_in_background(_runtime(), job_id)
    return job_id


def _audit_started(job_id: int, handler: str) -> None:
    """A replay or backfill started: the audit trail names the handler, the job and how many events."""
    job = replays.get(_runtime(), job_id) or {}
    audit("replay.started", target=f"replay:{job_id}", handler=handler, count=job.get("total"),
          filters=job.get("filters"))


@bp.get("/deliveries/<int:delivery_id>/history")
def delivery_history(delivery_id: int):  # type: ignore[no-untyped-def]
    """A delivery's earlier outcomes (one per replay that ran it again), oldest first."""
    if db_session().get(Delivery, delivery_id) is None:
        raise BadRequest("no such delivery", status=404, code="not_found")
    return jsonify({"items": replays.history(_runtime(), delivery_id)})


# --- the back office: /admin/replays, and "Replay" on a delivery's page --------------------------


def _form_body(form: Any) -> dict[str, Any]:
    """The replay form as an API body (empty fields left out; times without a zone are UTC)."""
    body: dict[str, Any] = {}
    for name in ("handler", "event_type", "aggregate_id"):
        if form.get(name, "").strip():
            body[name] = form[name].strip()
    for name in ("since", "until"):
        raw = form.get(name, "").strip()
        if raw:
            try:
                moment = datetime.fromisoformat(raw)
                body[name] = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()
            except ValueError:
                body[name] = raw  # refused, with its field named, by _filters
    raw = form.get("from_position", "").strip()
    if raw:
        body["from_position"] = parse_id(raw) or -1
    return body


class ReplaysView(Secured, BaseView):
    """Start a replay or backfill (its count shown and confirmed first), follow and cancel jobs."""

    @expose("/")
    def index(self):  # type: ignore[no-untyped-def]
        rows = db_session().execute(select(replays_table).order_by(replays_table.c.id.desc()).limit(50)).mappings()
        return self.render("admin/replays.html", jobs=[replays.job_json(r) for r in rows],
                           handlers=sorted(_runtime().handlers), form=request.args)

    @expose("/confirm/", methods=["POST"])
    def confirm(self):  # type: ignore[no-untyped-def]
        body = _form_body(request.form)
        try:
            filters, (handler, event_type) = _filters(body), _handler(body)
            counts = replays.count(_runtime(), handler, filters, event_type)
        except (BadRequest, replays.ReplayError) as exc:
            flash(f"Cannot replay: {exc}", "error")
            return redirect(url_for(".index", **body))
        return self.render("admin/replay_confirm.html", body=body, counts=counts, back=url_for(".index", **body))

    @expose("/start/", methods=["POST"])
    def start(self):  # type: ignore[no-untyped-def]
        body = _form_body(request.form)
        if parse_id(request.form.get("confirmed_count")) is None:  # the count is confirmed first
            return redirect(url_for(".index", **body))
        try:
            filters, (handler, event_type) = _filters(body), _handler(body)
            job_id = replays.create(_runtime(), handler, filters, event_type=event_type, created_by=actor())
        except (BadRequest, replays.ReplayError) as exc:
            flash(f"Cannot replay: {exc}", "error")
            return redirect(url_for(".index", **body))
        _audit_started(job_id, handler)
        replays.run_in_background(_runtime(), job_id)
        job = replays.get(_runtime(), job_id) or {}
        flash(f"Replay {job_id} of {handler} started over {job.get('total')} events.", "success")
        return redirect(url_for(".index"))

    @expose("/<int:job_id>/cancel/", methods=["POST"])
    def cancel(self, job_id: int):  # type: ignore[no-untyped-def]
        return self._job_command(job_id, "cancel")

    @expose("/<int:job_id>/resume/", methods=["POST"])
    def resume(self, job_id: int):  # type: ignore[no-untyped-def]
        return self._job_command(job_id, "resume")

    def _job_command(self, job_id: int, verb: str):  # type: ignore[no-untyped-def]
        job = replays.get(_runtime(), job_id)
        if job is None or job["status"] != "running":
            flash(f"Replay {job_id} is not running.", "warning")
        elif verb == "cancel":
            replays.cancel(_runtime(), job_id)
            audit("replay.cancelled", target=f"replay:{job_id}")
            flash(f"Replay {job_id} cancelled (what it already sent still runs).", "success")
        else:
            audit("replay.resumed", target=f"replay:{job_id}", handler=job["handler"], position=job["position"])
            replays.run_in_background(_runtime(), job_id)
            flash(f"Replay {job_id} resumed at position {job['position']}.", "success")
        return redirect(url_for(".index"))

    @expose("/delivery/<int:delivery_id>/", methods=["POST"])
    def delivery(self, delivery_id: int):  # type: ignore[no-untyped-def]
        try:
            job_id = replay_delivery(delivery_id)
            flash(f"Delivery {delivery_id} sent again as replay {job_id}: its handler runs once more.", "success")
        except BadRequest as exc:
            flash(f"Cannot replay delivery {delivery_id}: {exc}", "error")
        return redirect(url_for("deliveries.details_view", id=delivery_id))


def delivery_page_context(model: Any) -> dict[str, Any]:
    """What a delivery's details page adds: the delivery holding it up, its earlier outcomes, and
    whether it can be replayed."""
    blocked_by = ordering.blockers(db_session(), [model.id]).get(model.id) if model.status == BLOCKED else None
    return {"blocked_by": blocked_by, "history": replays.history(_runtime(), model.id),
            "replayable": model.status in (*FINISHED, DEAD)}
