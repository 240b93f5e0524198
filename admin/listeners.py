"""Cluster-wide listeners stuck on an event: see them, retry them, or skip that one event.

``POST /api/listeners/<name>/retry`` and ``/skip`` (on the management API's blueprint, with its
authentication and roles), and the back office's "Listeners" page, linked from the dashboard. Both
send a :class:`~shared.cluster.listeners.ListenerCommand` through the log; the reader of each node
it targets applies it (see :mod:`shared.cluster.reader`).
"""

from __future__ import annotations

from typing import Any

from flask import abort, flash, g, jsonify, redirect, request, url_for
from flask_admin import BaseView, expose

from admin.api import _json_object, bp, runtime
from admin.auth import actor
from admin.views import Secured
from shared.cluster.listeners import ListenerCommand
from shared.model.events import causal_context
from shared.ops import monitoring
from shared.web.http import BadRequest


def stuck(listener: str | None = None, node: str | None = None) -> list[dict[str, Any]]:
    """Listener failures as the live nodes last reported them (every heartbeat)."""
    failures = monitoring.status(runtime().engine, [])["listener_failures"]
    return [f for f in failures if (listener is None or f["listener"] == listener) and (node is None or f["node"] == node)]


def issue(action: str, listener: str, node: str | None, position: int | None) -> None:
    with causal_context(correlation_id=g.get("correlation_id"), actor=actor()):
        with runtime().unit_of_work() as uow:
            uow.publish(ListenerCommand(action=action, listener=listener, node=node, position=position))  # type: ignore[arg-type]
            uow.commit()


def _node_arg(body: dict[str, Any]) -> str | None:
    node = body.get("node")
    if node is not None and not isinstance(node, str):
        raise BadRequest("node must be a node id", fields={"node": "not a string"})
    return node


@bp.post("/listeners/<name>/retry")
def listener_retry(name: str):  # type: ignore[no-untyped-def]
    """Try a stuck listener again on its event, with a fresh budget of tries. Body (optional):
    ``{"node": "<node id>"}``, else on every node where it is stuck."""
    return _listener_command(name, "retry")


@bp.post("/listeners/<name>/skip")
def listener_skip(name: str):  # type: ignore[no-untyped-def]
    """Move a stuck listener past the one event it is stuck on. Body: ``{"position": <position>}``
    (required: only a listener stuck at that position skips), optionally ``"node"``."""
    return _listener_command(name, "skip")


def _listener_command(name: str, verb: str):  # type: ignore[no-untyped-def]
    body = _json_object() if request.get_data() or verb == "skip" else {}
    unknown = set(body) - {"node", "position"}
    if unknown:
        raise BadRequest("unknown fields", fields={k: "unknown field" for k in sorted(unknown)})
    node = _node_arg(body)
    position = body.get("position")
    if verb == "skip" and (not isinstance(position, int) or isinstance(position, bool) or position < 1):
        raise BadRequest("position (the event the listener is stuck on) is required to skip",
                         fields={"position": "missing or not a position"})
    matching = [f for f in stuck(name, node) if verb == "retry" or f["position"] == position]
    if not matching:
        raise BadRequest("no live node reports this listener stuck" + (" at that position" if verb == "skip" else ""),
                         status=404, code="not_found")
    issue(verb, name, node, position if verb == "skip" else None)
    return jsonify({"command": verb, "listener": name, "node": node, "position": position,
                    "nodes": sorted({f["node"] for f in matching}), "issued": True}), 202


class ListenersView(Secured, BaseView):
    """Listeners stuck on an event, per node, with Retry and Skip (each asks first)."""

    @expose("/")
    def index(self):  # type: ignore[no-untyped-def]
        return self.render("admin/listeners.html", failures=stuck())

    @expose("/command/", methods=["POST"])
    def command(self):  # type: ignore[no-untyped-def]
        verb, name, node = request.form.get("verb", ""), request.form.get("listener", ""), request.form.get("node")
        raw = request.form.get("position", "")
        position = int(raw) if raw.isdigit() else None
        if verb not in ("retry", "skip") or not node or position is None:
            abort(400)
        found = [f for f in stuck(name, node) if f["position"] == position]
        if not found:
            flash(f"Listener {name} is no longer stuck at position {position} on that node.", "warning")
            return redirect(url_for(".index"))
        if request.form.get("confirm") != "yes":
            return self.render("admin/listener_confirm.html", verb=verb, failure=found[0])
        issue(verb, name, node, position if verb == "skip" else None)
        done = "retry" if verb == "retry" else f"skip of position {position}"
        flash(f"Sent to the node: {done} for listener {name}.", "success")
        return redirect(url_for(".index"))
