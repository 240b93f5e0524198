"""The management API under ``/api``: JSON in and out, bearer tokens or an operator's session.

Documented in ``docs/api.md``. Every route needs authentication; with a session cookie, unsafe
methods also need the CSRF token (``X-CSRFToken``); bearer-token calls are not cookie-based and so
are exempt. Every route of this blueprint, including those other modules add to it, is held to a
role by :func:`admin.auth.required_role` (reads: viewer; changes: operator; ``@requires("admin")``
for more), before it runs.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from sqlalchemy import select

from admin.auth import actor, audit, current_role, forbidden_json, required_role, requires
from shared.ops.accounts import authenticate_token, role_allows, token_role
from admin.db import db_session
from admin.models import Delivery, NodeRow, OutboxEvent
from admin.views import NEWEST_BY_TIME, before_in_time, caused_chain, not_dispatched
from shared.web.http import BadRequest, parse_id
from shared.cluster import control
from shared.cluster import values as dynamic
from shared.db.tables import BLOCKED
from shared.delivery import deadletters, ordering
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
        found = authenticate_token(db_session(), header[len("Bearer "):].strip())
        if found is None:
            raise BadRequest("invalid, expired or revoked API token", status=401, code="unauthorized")
        g.api_user, g.api_token = found
        g.role = token_role(found[1], found[0])
        g.actor_name = f"token:{found[1].name}"
        return _authorize()
    if not current_user.is_authenticated:
        raise BadRequest("log in or send 'Authorization: Bearer <token>'", status=401, code="unauthorized")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        try:
            current_app.extensions["csrf"].protect()
        except CSRFError as exc:
            raise BadRequest(f"CSRF check failed: {exc.description}", status=403, code="csrf_failed") from None
    return _authorize()


def _authorize():  # type: ignore[no-untyped-def]
    """403 unless this request's role is enough for the route (see :func:`admin.auth.required_role`)."""
    needed = required_role(request.method, current_app.view_functions.get(request.endpoint or ""))
    if not role_allows(current_role(), needed):
        return forbidden_json(needed)
    return None


def _limit() -> int:
    value = parse_id(request.args.get("limit", "50"))
    if value is None or not 1 <= value <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", fields={"limit": "out of range"})
    return value


def _cursor() -> int | None:
    raw = request.args.get("cursor")
    if raw is None:
        return None
    value = parse_id(raw)
    if value is None:
        raise BadRequest("cursor must be the next_cursor of a previous page", fields={"cursor": "invalid"})
    return value


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
        # An ordered handler's delivery waiting for an earlier one of its key: the one holding it up.
        "order_key": d.order_key,
        "blocked_by": ordering.blockers(db_session(), [d.id]).get(d.id) if d.status == BLOCKED else None,
        "replay_id": d.replay_id,
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
    since, until = _time_arg("since"), _time_arg("until")
    timed = since is not None or until is not None  # then newest first by time (see NEWEST_BY_TIME)
    query = select(OutboxEvent).order_by(*(NEWEST_BY_TIME if timed else (OutboxEvent.id.desc(),))).limit(limit + 1)
    if cursor is not None:
        query = query.where(before_in_time(cursor) if timed else OutboxEvent.id < cursor)
    if (kind := request.args.get("type")) is not None:
        query = query.where(OutboxEvent.event_type == kind)
    if (aggregate_id := request.args.get("aggregate_id")) is not None:
        query = query.where(OutboxEvent.aggregate_id == aggregate_id)
    if (correlation := _uuid_arg("correlation_id")) is not None:
        query = query.where(OutboxEvent.correlation_id == correlation)
    if since is not None:
        query = query.where(OutboxEvent.occurred_at >= since)
    if until is not None:
        query = query.where(OutboxEvent.occurred_at < until)
    dispatched = request.args.get("dispatched")
    if dispatched is not None:
        if dispatched not in ("true", "false"):
            raise BadRequest("dispatched must be true or false", fields={"dispatched": "not a boolean"})
        query = query.where(OutboxEvent.dispatched_at.is_not(None) if dispatched == "true" else not_dispatched())
    return jsonify(_page(db_session().scalars(query).all(), limit, event_json))


def _find_event(ident: str) -> OutboxEvent:
    session = db_session()
    if (position := parse_id(ident)) is not None:
        event = session.get(OutboxEvent, position)
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
    audit("delivery.retried", target=delivery_id, count=count)
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
    audit("deliveries.retried", target=",".join(f"{k}={body[k]}" for k in sorted(body)), matched=len(ids), count=count)
    return jsonify({"matched": len(ids), "retried": count})


def _setting_json(s: dynamic.Setting) -> dict[str, Any]:
    return {"key": s.key, "type": s.type, "value": s.value, "description": s.description,
            "updated_at": s.updated_at.isoformat() if s.updated_at else None, "updated_by": s.updated_by,
            "version": s.version}


def _flag_json(f: dynamic.FeatureFlag) -> dict[str, Any]:
    return {"name": f.name, "enabled": f.enabled, "description": f.description,
            "updated_at": f.updated_at.isoformat() if f.updated_at else None, "updated_by": f.updated_by,
            "version": f.version}


def _change(apply, action: str, target: str):  # type: ignore[no-untyped-def]
    """Run a settings or flag change through a unit of work, as the current operator, audited in it."""
    try:
        with causal_context(correlation_id=g.get("correlation_id"), actor=actor()):
            with runtime().unit_of_work() as uow:
                result = apply(uow)
                audit(action, target=target, uow=uow, version=result.version)
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

    setting = _change(apply, "setting.changed", key)
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
    flag = _change(lambda uow: dynamic.set_flag(uow, name, body["enabled"], actor(), description), "flag.changed", name)
    return jsonify(_flag_json(flag))


def _command(command: str, target: str | None) -> dict[str, Any]:
    with causal_context(correlation_id=g.get("correlation_id"), actor=actor()):
        with runtime().unit_of_work() as uow:
            control.issue(uow, command, target, actor())  # type: ignore[arg-type]
            audit("control.issued", target=target, uow=uow, command=command)
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
@requires("admin")
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
