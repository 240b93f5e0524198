"""``GET /api/feed``: the event log in dispatch order, for another service to follow reliably.

Registered on the management API's blueprint (its authentication applies). See ``docs/api.md``,
"Following the event log".
"""

from __future__ import annotations

import math
import threading

from flask import current_app, jsonify, request

from admin.api import MAX_LIMIT, bp, runtime
from shared.ops.feed import LogWaiter, follow
from shared.web.http import BadRequest

#: The longest a long-poll waits, in seconds (a waiting request holds a server thread, not a
#: database connection).
MAX_WAIT = 30.0
DEFAULT_LIMIT = 100
_lock = threading.Lock()


def _waiter() -> LogWaiter:
    """This app's waiter, created on the first long-poll (its subscriber starts then)."""
    with _lock:
        waiter = current_app.extensions.get("ozzy_feed_waiter")
        if waiter is None:
            rt = runtime()
            waiter = current_app.extensions["ozzy_feed_waiter"] = LogWaiter(rt.redis, rt.config)
        return waiter


def _int_arg(name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        bound = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise BadRequest(f"{name} must be an integer {bound}", fields={name: "out of range"})
    return int(raw)


def _wait_arg() -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not 0 <= wait <= MAX_WAIT:  # also refuses nan and inf
        raise BadRequest(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}", fields={"wait": "out of range"})
    return wait


@bp.get("/feed")
def feed():  # type: ignore[no-untyped-def]
    """Events after position ``after`` in dispatch order; ``next_after`` is the cursor to send next."""
    after = _int_arg("after", 0, 0)
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    types = [t for t in request.args.get("types", "").split(",") if t.strip()] or None
    wait = _wait_arg()
    rt = runtime()
    page = follow(rt.engine, _waiter() if wait > 0 else None, after, limit,
                  [t.strip() for t in types] if types else None, wait)
    return jsonify(page)
