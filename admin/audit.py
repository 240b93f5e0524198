"""The audit trail, read: ``GET /api/audit`` and the back office's Audit page.

Both list ``ozzy.audit`` events (see :mod:`shared.ops.audit`) newest first, filtered by ``actor``,
``action``, ``since`` and ``until``, a page at a time (``cursor`` is the previous page's
``next_cursor``). Reading the trail needs the viewer role, like every read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import flash, jsonify, request, url_for
from flask_admin import BaseView, expose

from admin.api import _cursor, _limit, _time_arg, bp
from admin.db import db_session
from admin.views import Secured, compact_time
from shared.ops import audit as trail
from shared.web.http import BadRequest

FILTERS = ("actor", "action", "since", "until")


def _filters() -> dict[str, Any]:
    return {"actor": request.args.get("actor") or None, "action": request.args.get("action") or None,
            "since": _time_arg("since"), "until": _time_arg("until"), "cursor": _cursor()}


@bp.get("/audit")
def list_audit():  # type: ignore[no-untyped-def]
    """``{"items": [{"id", "at", "action", "actor", "client", "target", "details"}], "next_cursor"}``."""
    items, next_cursor = trail.page(db_session(), limit=_limit(), **_filters())
    return jsonify({"items": items, "next_cursor": next_cursor})


class AuditView(Secured, BaseView):
    """Who did what, from where, newest first, with the same filters as the API."""

    page_size = 50

    @expose("/")
    def index(self):  # type: ignore[no-untyped-def]
        try:
            filters = _filters()
        except BadRequest as exc:
            flash(str(exc), "error")
            filters = {"actor": None, "action": None, "since": None, "until": None, "cursor": None}
        items, next_cursor = trail.page(db_session(), limit=self.page_size, **filters)
        args = {k: request.args[k] for k in FILTERS if request.args.get(k)}
        older = url_for(".index", cursor=next_cursor, **args) if next_cursor is not None else None
        return self.render("admin/audit.html", items=items, older=older, args=args, compact_time=compact_time,
                           parse_time=datetime.fromisoformat)
