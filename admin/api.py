"""The management API under ``/api``: JSON in and out, bearer tokens or an operator's session.

Documented in ``docs/api.md``. Every route needs authentication; with a session cookie, unsafe
methods also need the CSRF token (``X-CSRFToken``); bearer-token calls are not cookie-based and so
are exempt.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from sqlalchemy import select

from admin.auth import actor, user_for_token
from admin.db import db_session
from admin.models import Delivery, NodeRow, OutboxEvent
from admin.views import caused_chain, not_dispatched
from shared.web.http import BadRequest
from shared.cluster import control
from shared.cluster import values as dynamic
from shared.delivery import deadletters
from shared.ops import monitoring
from shared.errors import ConcurrencyError
from shared.model.events import causal_context

bp = Blueprint("api", __name__, url_prefix="/api")
MAX_LIMIT = 500


def runtime():  # type: ignore[no-untyped-def]
    return current_app.extensions["ozzy"]


@bp.before_request
def _authenticate():  # type: ignore[no-untyped-def]
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        user = user_for_token(db_session(), header[len("Bearer "):].strip())
        if user is None:
            raise BadRequest("invalid or revoked API token", status=401, code="unauthorized")
        g.api_user = user
        return None
    if not current_user.is_authenticated:
        raise BadRequest("log in or send 'Authorization: Bearer <token>'", status=401, code="unauthorized")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        try:
            current_app.extensions["csrf"].protect()
        except CSRFError as exc:
            raise BadRequest(f"CSRF check failed: {exc.description}", status=403, code="csrf_failed") from None
    return None


def _limit() -> int:
    raw = request.args.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", fields={"limit": "out of range"})
    return int(raw)


def _cursor() -> int | None:
    raw = request.args.get("cursor")
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest("cursor must be the next_cursor of a previous page", fields={"cursor": "invalid"})
    return int(raw)


def _uuid_arg(name: str) -> uuid.UUID | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a UUID", fields={name: "not a UUID"}) from None


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time", fields={name: "not an ISO 8601 time"}) from None
    if moment.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone", fields={name: "no time zone"})
    return moment


def _json_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not request.is_json or not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", status=415 if not request.is_json else 400,
                         code="unsupported_media_type" if not request.is_json else "malformed_json")
    return body


def event_json(e: OutboxEvent, full: bool = False) -> dict[str, Any]:
    data = {
        "id": e.id,
        "event_id": str(e.event_id),
        "type": e.event_type,
        "version": e.event_version,
        "aggregate_type": e.aggregate_type,
        "aggregate_id": e.aggregate_id,
        "correlation_id": str(e.correlation_id) if e.correlation_id else None,
        "causation_id": str(e.causation_id) if e.causation_id else None,
        "occurred_at": e.occurred_at.isoformat(),
        "dispatched_at": e.dispatched_at.isoformat() if e.dispatched_at else None,
        "parked_at": e.parked_at.isoformat() if e.parked_at else None,
    }
    if full:
        data.update(payload=e.payload, metadata=e.metadata_, park_reason=e.park_reason)
    return data


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "event_id": str(d.event_id),
        "event_type": d.event.event_type if d.event is not None else None,
        "handler": d.handler,
        "status": d.status,
        "attempts": d.attempts,
        "dead_reason": d.dead_reason,
        "last_error": d.last_error,
        "enqueued_at": d.enqueued_at.isoformat() if d.enqueued_at else None,
        "updated_at": d.updated_at.isoformat() if d.updated_at else None,
        "completed_at": d.completed_at.isoformat() if d.completed_at else None,
        "first_failed_at": d.first_failed_at.isoformat() if d.first_failed_at else None,
        "last_failed_at": d.last_failed_at.isoformat() if d.last_failed_at else None,
    }


def _page(items: list[Any], limit: int, to_json) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    more = len(items) > limit
    items = items[:limit]
    return {"items": [to_json(i) for i in items], "next_cursor": items[-1].id if more else None}


@bp.get("/status")
def status():  # type: ignore[no-untyped-def]
    return jsonify(monitoring.status(runtime().engine, sorted(runtime().handlers)))


@bp.get("/nodes")
def nodes():  # type: ignore[no-untyped-def]
    return jsonify({"items": monitoring.status(runtime().engine, [])["nodes"]})


@bp.get("/events")
def events():  # type: ignore[no-untyped-def]
    """Newest first; every filter is a bound parameter on an indexed column."""
    limit, cursor = _limit(), _cursor()
    query = select(OutboxEvent).order_by(OutboxEvent.id.desc()).limit(limit + 1)
    if cursor is not None:
        query = query.where(OutboxEvent.id < cursor)
    if (kind := request.args.get("type")) is not None:
        query = query.where(OutboxEvent.event_type == kind)
    if (aggregate_id := request.args.get("aggregate_id")) is not None:
        query = query.where(OutboxEvent.aggregate_id == aggregate_id)
    if (correlation := _uuid_arg("correlation_id")) is not None:
        query = query.where(OutboxEvent.correlation_id == correlation)
    if (since := _time_arg("since")) is not None:
        query = query.where(OutboxEvent.occurred_at >= since)
    if (until := _time_arg("until")) is not None:
        query = query.where(OutboxEvent.occurred_at < until)
    dispatched = request.args.get("dispatched")
    if dispatched is not None:
        if dispatched not in ("true", "false"):
            raise BadRequest("dispatched must be true or false", fields={"dispatched": "not a boolean"})
        query = query.where(OutboxEvent.dispatched_at.is_not(None) if dispatched == "true" else not_dispatched())
    return jsonify(_page(db_session().scalars(query).all(), limit, event_json))


def _find_event(ident: str) -> OutboxEvent:
    session = db_session()
    if ident.isdigit():
        event = session.get(OutboxEvent, int(ident))
    else:
        try:
            key = uuid.UUID(ident)
        except ValueError:
            raise BadRequest("no such event", status=404, code="not_found") from None
        event = session.scalar(select(OutboxEvent).where(OutboxEvent.event_id == key))
    if event is None:
        raise BadRequest("no such event", status=404, code="not_found")
    return event


@bp.get("/events/<ident>")
def event(ident: str):  # type: ignore[no-untyped-def]
    """One event by position or event id, with its deliveries and the events it caused."""
    e = _find_event(ident)
    session = db_session()
    body = event_json(e, full=True)
    body["caused"] = [{"depth": level, **event_json(c)} for level, c in caused_chain(session, e.event_id)]
    body["deliveries"] = [
        delivery_json(d) for d in session.scalars(select(Delivery).where(Delivery.event_id == e.event_id))
    ]
    return jsonify(body)


def _delivery_filters(query, source: dict[str, Any]):  # type: ignore[no-untyped-def]
    for field, column in (("status", Delivery.status), ("handler", Delivery.handler), ("event_type", OutboxEvent.event_type)):
        value = source.get(field)
        if value is not None:
            if not isinstance(value, str):
                raise BadRequest(f"{field} must be a string", fields={field: "not a string"})
            query = query.where(column == value)
    return query


@bp.get("/deliveries")
def deliveries():  # type: ignore[no-untyped-def]
    limit, cursor = _limit(), _cursor()
    query = select(Delivery).join(OutboxEvent, OutboxEvent.event_id == Delivery.event_id)
    query = _delivery_filters(query, request.args).order_by(Delivery.id.desc()).limit(limit + 1)
    if cursor is not None:
        query = query.where(Delivery.id < cursor)
    return jsonify(_page(db_session().scalars(query).unique().all(), limit, delivery_json))


@bp.post("/deliveries/<int:delivery_id>/retry")
def retry_one(delivery_id: int):  # type: ignore[no-untyped-def]
    d = db_session().get(Delivery, delivery_id)
    if d is None:
        raise BadRequest("no such delivery", status=404, code="not_found")
    if d.status not in deadletters.RETRYABLE:
        raise BadRequest(f"delivery is {d.status}; only unfinished deliveries can be retried", status=409,
                         code="conflict")
    count = deadletters.retry_dead(runtime(), ids=[delivery_id], statuses=deadletters.RETRYABLE)
    return jsonify({"retried": count})


@bp.post("/deliveries/retry")
def retry_matching():  # type: ignore[no-untyped-def]
    """Retry every unfinished delivery matching the filter (all of them, not a page)."""
    body = _json_object()
    unknown = set(body) - {"status", "handler", "event_type"}
    if unknown:
        raise BadRequest("unknown filter fields", fields={k: "unknown field" for k in sorted(unknown)})
    if not body:
        raise BadRequest("give at least one filter: status, handler or event_type", fields={"body": "empty filter"})
    query = _delivery_filters(
        select(Delivery.id).join(OutboxEvent, OutboxEvent.event_id == Delivery.event_id), body
    )
    ids = list(db_session().scalars(query))
    count = deadletters.retry_dead(runtime(), ids=ids, statuses=deadletters.RETRYABLE) if ids else 0
    return jsonify({"matched": len(ids), "retried": count})


def _setting_json(s: dynamic.Setting) -> dict[str, Any]:
    return {"key": s.key, "type": s.type, "value": s.value, "description": s.description,
            "updated_at": s.updated_at.isoformat() if s.updated_at else None, "updated_by": s.updated_by,
            "version": s.version}


def _flag_json(f: dynamic.FeatureFlag) -> dict[str, Any]:
    return {"name": f.name, "enabled": f.enabled, "description": f.description,
            "updated_at": f.updated_at.isoformat() if f.updated_at else None, "updated_by": f.updated_by,
            "version": f.version}


def _change(apply):  # type: ignore[no-untyped-def]
    """Run a settings or flag change through a unit of work, as the current operator."""
    try:
        with causal_context(correlation_id=g.get("correlation_id"), actor=actor()):
            with runtime().unit_of_work() as uow:
                result = apply(uow)
                uow.commit()
                return result
    except (dynamic.InvalidSettingValue, dynamic.UnknownSetting) as exc:
        raise BadRequest(str(exc), fields={"value": str(exc)}) from None
    except ConcurrencyError:
        raise BadRequest("changed by someone else at the same time; try again", status=409, code="conflict") from None


@bp.get("/settings/<key>")
def get_setting(key: str):  # type: ignore[no-untyped-def]
    s = db_session().get(dynamic.Setting, key)
    if s is None:
        raise BadRequest("no such setting", status=404, code="not_found")
    return jsonify(_setting_json(s))


@bp.put("/settings/<key>")
def put_setting(key: str):  # type: ignore[no-untyped-def]
    """Change a setting's value; create it when a ``type`` is given and it does not exist."""
    body = _json_object()
    if "value" not in body:
        raise BadRequest("value is required", fields={"value": "missing"})
    unknown = set(body) - {"value", "type", "description"}
    if unknown:
        raise BadRequest("unknown fields", fields={k: "unknown field" for k in sorted(unknown)})

    def apply(uow):  # type: ignore[no-untyped-def]
        existing = uow.get(dynamic.Setting, key)
        if existing is None:
            if "type" not in body:
                raise BadRequest("no such setting; give its type to create it", status=404, code="not_found")
            setting = dynamic.define_setting(uow, key, body["type"], body["value"], body.get("description", ""), actor())
        else:
            setting = dynamic.change_setting(uow, key, body["value"], actor())
        if isinstance(body.get("description"), str):
            setting.description = body["description"]
        return setting

    setting = _change(apply)
    return jsonify(_setting_json(setting))


@bp.get("/flags/<name>")
def get_flag(name: str):  # type: ignore[no-untyped-def]
    f = db_session().get(dynamic.FeatureFlag, name)
    if f is None:
        raise BadRequest("no such flag", status=404, code="not_found")
    return jsonify(_flag_json(f))


@bp.put("/flags/<name>")
def put_flag(name: str):  # type: ignore[no-untyped-def]
    body = _json_object()
    if not isinstance(body.get("enabled"), bool):
        raise BadRequest("enabled must be true or false", fields={"enabled": "not a boolean"})
    unknown = set(body) - {"enabled", "description"}
    if unknown:
        raise BadRequest("unknown fields", fields={k: "unknown field" for k in sorted(unknown)})
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise BadRequest("description must be a string", fields={"description": "not a string"})
    flag = _change(lambda uow: dynamic.set_flag(uow, name, body["enabled"], actor(), description))
    return jsonify(_flag_json(flag))


def _command(command: str, target: str | None) -> dict[str, Any]:
    with causal_context(correlation_id=g.get("correlation_id"), actor=actor()):
        with runtime().unit_of_work() as uow:
            control.issue(uow, command, target, actor())  # type: ignore[arg-type]
            uow.commit()
    return {"command": command, "target": target, "issued": True}


@bp.post("/handlers/<name>/<any(pause, resume):verb>")
def handler_command(name: str, verb: str):  # type: ignore[no-untyped-def]
    """Pause or resume a handler on every worker: its messages wait in Redis meanwhile."""
    if name not in runtime().handlers:
        raise BadRequest("no such handler", status=404, code="not_found")
    return jsonify(_command(f"{verb}_handler", name)), 202


@bp.post("/relay/<any(pause, resume):verb>")
def relay_command(verb: str):  # type: ignore[no-untyped-def]
    """Pause or resume dispatching on every relay: events wait in the outbox meanwhile."""
    return jsonify(_command(f"{verb}_relay", None)), 202


@bp.post("/nodes/<node_id>/stop")
def node_stop(node_id: str):  # type: ignore[no-untyped-def]
    """Ask one node to finish what it is doing and exit (as on SIGTERM)."""
    try:
        key = uuid.UUID(node_id)
    except ValueError:
        raise BadRequest("no such node", status=404, code="not_found") from None
    node = db_session().get(NodeRow, key)
    if node is None or node.stopped_at is not None:
        raise BadRequest("no such running node", status=404, code="not_found")
    return jsonify(_command("drain_stop", str(key))), 202
