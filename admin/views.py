"""Flask-Admin views of the back office. Every view requires a logged-in operator, and the role its
method needs (:class:`Secured`, :func:`admin.auth.required_role`)."""

from __future__ import annotations

import json
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from flask import abort, current_app, flash, g, redirect, request, url_for
from flask_admin import AdminIndexView, BaseView, expose, tools
from flask_admin.model import typefmt
from flask_admin.actions import action
from flask_admin.contrib.sqla import ModelView
from flask_admin.contrib.sqla.filters import BaseSQLAFilter, DateTimeBetweenFilter, FilterEqual
from flask_login import current_user
from markupsafe import Markup, escape
from sqlalchemy import ColumnElement, and_, func, or_, select, tuple_
from wtforms import BooleanField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Regexp

from admin.auth import actor, audit, can, current_role, forbidden_page, required_role
from admin.db import db_session
from admin.models import Delivery, NodeRow, OutboxEvent
from shared.cluster import control
from shared.cluster import values as dynamic
from shared.delivery import deadletters
from shared.ops import monitoring
from shared.model.events import causal_context
from shared.ops.accounts import role_allows
from shared.web.http import csv_safe


def runtime():  # type: ignore[no-untyped-def]
    return current_app.extensions["ozzy"]


# --- small pieces of markup shared by the views -------------------------------------------------

#: Bootstrap 4 badge colour of each status the back office shows.
BADGES = {
    # deliveries
    "done": "success", "pending": "warning", "retrying": "warning", "dead": "danger", "resolved": "secondary",
    "parked": "info",  # an event version newer than the worker knew (a rolling deploy)
    "blocked": "warning",  # an ordered handler's delivery waiting for an earlier one of its key
    # saga instances
    "running": "primary", "completed": "success",
    # scheduled events
    "scheduled": "info", "fired": "success", "cancelled": "secondary",
    # nodes and recurring jobs
    "live": "success", "stopped": "secondary", "gone": "secondary", "paused": "warning", "active": "success",
}


def badge(status: str | None) -> Markup:
    if not status:
        return Markup("")
    colour = BADGES.get(status, "light")
    return Markup(f'<span class="badge badge-{colour} status-{escape(status)}">{escape(status)}</span>')


def short_id(value: Any, href: str | None = None) -> Markup:
    """The last 8 characters of an id (event ids are UUIDv7: their first ones are a timestamp, shared
    by every id of the same minute), its full value in the title, a link if given, a copy button."""
    if value is None or value == "":
        return Markup("")
    full = escape(str(value))
    text = Markup(f'<code class="short-id" title="{full}">…{escape(str(value)[-8:])}</code>')
    if href:
        text = Markup(f'<a href="{escape(href)}" title="{full}">{text}</a>')
    return text + Markup(
        f'<button type="button" class="btn btn-link btn-sm p-0 ml-1 copy-id" data-copy="{full}"'
        f' title="Copy {full}" aria-label="Copy the full id"><span class="fa fa-clipboard"></span></button>')


def compact_time(value: Any) -> Markup:
    """``YYYY-MM-DD HH:MM:SS`` in UTC; the page's script rewrites it in the browser's local time."""
    if value is None:
        return Markup("")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    utc = value.astimezone(timezone.utc)
    return Markup(f'<time class="local-time" datetime="{utc.isoformat()}" title="{utc:%Y-%m-%d %H:%M:%S} UTC">'
                  f"{utc:%Y-%m-%d %H:%M:%S}</time>")


def _time_type_formatter(view, value, name):  # type: ignore[no-untyped-def]
    return compact_time(value)


#: Lists show timestamps compactly, without microseconds.
LIST_TYPE_FORMATTERS = {**typefmt.BASE_FORMATTERS, datetime: _time_type_formatter}


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 relay``, ``2 relays``."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def events_url(**filters: Any) -> str:
    """The event log filtered: ``correlation_id``, ``aggregate_id`` or ``type``."""
    names = {"correlation_id": "flt0_correlation_id_equals", "aggregate_id": "flt0_aggregate_id_equals",
             "type": "flt0_type_equals"}
    return url_for("events.index_view", **{names[k]: str(v) for k, v in filters.items()})


def event_details_url(event_id: Any) -> str | None:
    """The details page of the event with this UUID, if it is in the log (one indexed read)."""
    if event_id is None:
        return None
    pk = db_session().scalar(select(OutboxEvent.id).where(OutboxEvent.event_id == event_id))
    return url_for("events.details_view", id=pk) if pk is not None else None


def deliveries_of_event_url(event_id: Any) -> str:
    return url_for("deliveries.index_view", flt0_event_id_equals=str(event_id))


class Secured:
    """Mixin: only logged-in operators; everyone else is sent to the login page. Each exposed method
    needs the role :func:`admin.auth.required_role` gives it (reads: viewer, posts: operator, or its
    ``@requires`` mark): a view added later is covered by inheriting this. Actions are hidden and
    refused below operator, and CSV exports neutralise cells a spreadsheet would run."""

    def is_accessible(self) -> bool:
        return bool(current_user.is_authenticated)

    def _handle_view(self, name: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        refused = super()._handle_view(name, **kwargs)  # type: ignore[misc]
        if refused is not None:
            return refused
        needed = required_role(request.method, getattr(self, name, None))
        if not role_allows(current_role(), needed):
            return forbidden_page(needed)
        return None

    def is_action_allowed(self, name: str) -> bool:
        return can("operator") and bool(super().is_action_allowed(name))  # type: ignore[misc]

    def get_export_value(self, model: Any, name: str) -> Any:
        return csv_safe(super().get_export_value(model, name))  # type: ignore[misc]

    def handle_action(self, return_view: str | None = None):  # type: ignore[no-untyped-def]
        """A list action given row ids that are not ids of this list is a 400, not a 500."""
        try:
            return super().handle_action(return_view)  # type: ignore[misc]
        except ValueError:
            abort(400)

    def inaccessible_callback(self, name: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        return redirect(url_for("auth.login", next=request.full_path))

    @property
    def db(self):  # type: ignore[no-untyped-def]
        """This request's session."""
        return self.session


class DashboardView(Secured, AdminIndexView):
    @expose("/")
    def index(self):  # type: ignore[no-untyped-def]
        status = monitoring.status(runtime().engine, sorted(runtime().handlers))
        paused = set(self._setting(control.PAUSED_HANDLERS, []))
        live = [n for n in status["nodes"] if not n["stopped"]]
        return self.render("admin/dashboard.html", status=status, chart=events_chart(status["events_per_minute"]),
                           paused_handlers=paused, relay_paused=bool(self._setting(control.RELAY_PAUSED, False)),
                           live_nodes=live, plural=plural, question=control_question, node_name=node_name)

    def _setting(self, key: str, default: Any) -> Any:
        row = db_session().get(dynamic.Setting, key)
        return row.value if row is not None else default

    @expose("/control/", methods=["POST"])
    def control_command(self):  # type: ignore[no-untyped-def]
        """Pause or resume a handler or the relay, or drain and stop a node; CSRF-protected form.

        Nothing happens without ``confirm=yes`` (the dashboard's buttons ask first and add it): an
        unconfirmed post only renders a page asking for the confirmation, naming what it touches."""
        command, target = request.form.get("command", ""), request.form.get("target") or None
        allowed = {"pause_handler", "resume_handler", "pause_relay", "resume_relay", "drain_stop"}
        if command not in allowed or (command.endswith("_handler") and target not in runtime().handlers):
            abort(400)
        node = self._node(target) if command == "drain_stop" else None
        if command == "drain_stop" and node is None:
            abort(400)
        if command == "drain_stop" and not can("admin"):
            return forbidden_page("admin")
        question = control_question(command, target, node)
        if request.form.get("confirm") != "yes":
            return self.render("admin/control_confirm.html", question=question, command=command, target=target,
                               label=CONTROL_LABELS[command])
        with causal_context(correlation_id=g.get("correlation_id"), actor=actor()):
            with runtime().unit_of_work() as uow:
                control.issue(uow, command, target, actor())  # type: ignore[arg-type]
                audit("control.issued", target=target, uow=uow, command=command)
                uow.commit()
        flash(f"Sent to the cluster: {CONTROL_LABELS[command].lower()} {control_subject(command, target, node)}.",
              "success")
        return redirect(url_for(".index"))

    @staticmethod
    def _node(target: str | None) -> dict[str, Any] | None:
        try:
            key = uuid.UUID(target or "")
        except ValueError:
            return None
        row = db_session().get(NodeRow, key)
        return {"kind": row.kind, "host": row.host, "pid": row.pid} if row is not None else None


CONTROL_LABELS = {"pause_handler": "Pause", "resume_handler": "Resume", "pause_relay": "Pause relay",
                  "resume_relay": "Resume relay", "drain_stop": "Drain and stop"}


def node_name(node: dict[str, Any]) -> str:
    """A node as operators know it: ``worker on host-1 (pid 4242)``."""
    return f"{node['kind']} on {node['host']} (pid {node['pid']})"


def control_subject(command: str, target: str | None, node: dict[str, Any] | None = None) -> str:
    if command == "drain_stop":
        return f"the {node_name(node)}" if node else "the node"
    if command.endswith("_handler"):
        return f"handler {target}"
    return "the relays"


def control_question(command: str, target: str | None, node: dict[str, Any] | None = None) -> str:
    """The confirmation a control button asks, naming what it touches."""
    return {
        "pause_handler": f"Pause handler {target} on every worker? Its deliveries wait until it is resumed.",
        "resume_handler": f"Resume handler {target} on every worker?",
        "pause_relay": "Pause every relay in the cluster? New events wait in the outbox until the relay is resumed.",
        "resume_relay": "Resume every relay in the cluster?",
        "drain_stop": (f"Drain and stop the {node_name(node) if node else 'node'}? It finishes the work it has"
                       " started, then exits; it is not restarted here."),
    }[command]


def events_chart(per_minute: list[dict[str, Any]]) -> Markup:
    """An inline SVG bar chart of events per minute over the last hour (no JavaScript needed)."""
    width, height, bars = 720, 140, 60
    counts = {row["minute"][11:16]: row["count"] for row in per_minute}
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    minutes = [(now - timedelta(minutes=bars - 1 - i)).strftime("%H:%M") for i in range(bars)]
    peak = max([counts.get(m, 0) for m in minutes] + [1])
    step = width / bars
    rects = []
    for i, minute in enumerate(minutes):
        n = counts.get(minute, 0)
        h = round((height - 20) * n / peak, 1)
        rects.append(
            f'<rect x="{i * step:.1f}" y="{height - 15 - h}" width="{step - 2:.1f}" height="{h}" fill="#2c7be5">'
            f"<title>{minute} UTC: {n} events</title></rect>"
        )
    labels = "".join(
        f'<text x="{i * step:.1f}" y="{height - 2}" font-size="10">{minutes[i]}</text>' for i in range(0, bars, 10)
    )
    return Markup(
        f'<svg role="img" aria-label="events per minute" width="100%" viewBox="0 0 {width} {height}">'
        f'{"".join(rects)}{labels}<text x="{width - 4}" y="12" font-size="11" text-anchor="end">peak {peak}/min</text></svg>'
    )


def _pretty_json(view, context, model, name):  # type: ignore[no-untyped-def]
    value = getattr(model, name)
    return Markup(f"<pre class='mb-0'>{escape(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>")


def _pre(view, context, model, name):  # type: ignore[no-untyped-def]
    value = getattr(model, name)
    return Markup(f"<pre class='mb-0 small'>{escape(value)}</pre>") if value else ""


def not_dispatched() -> ColumnElement[bool]:
    """Events not yet dispatched, as two arms that the relay's partial indexes serve (waiting to be
    claimed, parked); ``dispatched_at IS NULL`` alone would walk the whole log."""
    waiting = and_(OutboxEvent.dispatched_at.is_(None), OutboxEvent.parked_at.is_(None))
    parked = and_(OutboxEvent.dispatched_at.is_(None), OutboxEvent.parked_at.is_not(None))
    return or_(waiting, parked)


#: A list filtered by a time range is newest first by ``(occurred_at, id)``, the order of
#: ``ix_ozzy_outbox_occurred_at``: a page reads one page of index entries wherever the range lies in
#: the log. Ordered by ``id`` alone, the planner walks the primary key from the newest event and
#: filters out every event after the range (a third of a second at a million events). The log is
#: written in time order, so both orders agree but for events committed out of their time order.
NEWEST_BY_TIME = (OutboxEvent.occurred_at.desc(), OutboxEvent.id.desc())


def before_in_time(cursor: int) -> ColumnElement[bool]:
    """Events after ``cursor`` (an event id of a previous page) in :data:`NEWEST_BY_TIME` order.

    A cursor whose event is gone (retention) takes the time of the next event left after it in the
    log (or, if none, before it): a page may then repeat a few events, it skips none written in time
    order."""
    def nearest(condition: ColumnElement[bool], order: Any) -> Any:
        return select(OutboxEvent.occurred_at).where(condition).order_by(order).limit(1).scalar_subquery()

    at = func.coalesce(nearest(OutboxEvent.id >= cursor, OutboxEvent.id.asc()),
                       nearest(OutboxEvent.id < cursor, OutboxEvent.id.desc()))
    return tuple_(OutboxEvent.occurred_at, OutboxEvent.id) < tuple_(at, cursor)


class OccurredFilter(DateTimeBetweenFilter):
    """The event log's time range; while it is applied the list is in :data:`NEWEST_BY_TIME` order."""


#: Set while :meth:`EventLogView.get_list` builds a list with an :class:`OccurredFilter` and no
#: sort of the operator's choosing (a view object serves every request thread).
_by_time: ContextVar[bool] = ContextVar("ozzy_admin_events_by_time", default=False)


class DispatchedFilter(BaseSQLAFilter):
    """Dispatched or not."""

    def apply(self, query, value, alias=None):  # type: ignore[no-untyped-def]
        return query.filter(OutboxEvent.dispatched_at.is_not(None) if value == "1" else not_dispatched())

    def operation(self) -> str:
        return "is"


class ExactUuidSearch:
    """Search by exact id on indexed columns instead of Flask-Admin's ``ILIKE '%…%'`` over casts,
    which would scan a million-row table: a UUID matches the event, correlation, causation or
    aggregate id; any other term matches the aggregate id. Values are bound parameters, never concatenated SQL."""

    def _apply_search(self, query, count_query, joins, count_joins, search):  # type: ignore[no-untyped-def]
        for term in filter(None, search.split()):
            clause = self._search_clause(term)
            query = query.filter(clause)
            if count_query is not None:
                count_query = count_query.filter(clause)
        return query, count_query, joins, count_joins

    def _search_clause(self, term: str):  # type: ignore[no-untyped-def]
        try:
            key = uuid.UUID(term)
        except ValueError:
            return OutboxEvent.aggregate_id == term
        return or_(OutboxEvent.event_id == key, OutboxEvent.correlation_id == key, OutboxEvent.causation_id == key,
                   OutboxEvent.aggregate_id == str(key))


class UuidEqualFilter(FilterEqual):
    """Equality on a UUID column; a value that is no UUID is ignored rather than sent to the database."""

    def validate(self, value):  # type: ignore[no-untyped-def]
        try:
            uuid.UUID(str(value).strip())
        except ValueError:
            return False
        return True

    def clean(self, value):  # type: ignore[no-untyped-def]
        return uuid.UUID(str(value).strip())


def _status_badge(view, context, model, name):  # type: ignore[no-untyped-def]
    return badge(getattr(model, name))


def _uuid(view, context, model, name):  # type: ignore[no-untyped-def]
    return short_id(getattr(model, name))


def _correlation(view, context, model, name):  # type: ignore[no-untyped-def]
    value = getattr(model, name)
    return short_id(value, events_url(correlation_id=value)) if value else ""


def _aggregate(view, context, model, name):  # type: ignore[no-untyped-def]
    value = getattr(model, name)
    if not value:
        return ""
    return short_id(value, events_url(aggregate_id=value)) if len(str(value)) > 12 else Markup(
        f'<a href="{escape(events_url(aggregate_id=value))}">{escape(value)}</a>')


def _cause(view, context, model, name):  # type: ignore[no-untyped-def]
    value = getattr(model, name)
    return short_id(value, event_details_url(value)) if value else ""


def _event_id_with_deliveries(view, context, model, name):  # type: ignore[no-untyped-def]
    value = getattr(model, name)
    return short_id(value) + Markup(
        f' <a class="small ml-2" id="event-deliveries-link" href="{escape(deliveries_of_event_url(value))}">'
        "its deliveries</a>")


def _delivery_event(view, context, model, name):  # type: ignore[no-untyped-def]
    """A delivery's event id, linked to the event's details (the list already joins the event)."""
    event = model.event
    href = url_for("events.details_view", id=event.id) if event is not None else None
    return short_id(model.event_id, href)


class ReadOnlyModelView(Secured, ModelView):
    """A list and details view that never writes."""

    column_type_formatters = LIST_TYPE_FORMATTERS

    can_create = False
    can_edit = False
    can_delete = False
    can_view_details = True
    page_size = 50
    named_filter_urls = True  # ?flt0_handler_equals=x rather than ?flt0_3=x, stable for links


class EventLogView(ExactUuidSearch, ReadOnlyModelView):
    details_template = "admin/event_details.html"
    # No COUNT(*) over the whole table per page; pages walk the primary key, newest first.
    simple_list_pager = True
    column_default_sort = ("id", True)
    column_list = ["id", "occurred_at", "event_type", "aggregate_type", "aggregate_id", "correlation_id",
                   "dispatched_at", "parked_at"]
    column_details_list = ["id", "event_id", "event_type", "event_version", "aggregate_type", "aggregate_id",
                           "correlation_id", "causation_id", "occurred_at", "dispatched_at", "parked_at",
                           "park_reason", "payload", "metadata_"]
    column_labels = {"metadata_": "Metadata", "occurred_at": "Occurred", "event_type": "Type"}
    column_sortable_list = ["id"]
    column_searchable_list = ["event_id"]  # enables the search box; see ExactUuidSearch
    column_filters = [
        FilterEqual(OutboxEvent.event_type, "Type"),
        FilterEqual(OutboxEvent.aggregate_id, "Aggregate id"),
        UuidEqualFilter(OutboxEvent.correlation_id, "Correlation id"),
        OccurredFilter(OutboxEvent.occurred_at, "Occurred"),
        DispatchedFilter(OutboxEvent.dispatched_at, "Dispatched", options=(("1", "yes"), ("0", "no"))),
    ]
    column_formatters = {"correlation_id": _correlation, "aggregate_id": _aggregate}
    column_formatters_detail = {"payload": _pretty_json, "metadata_": _pretty_json, "event_id": _event_id_with_deliveries,
                                "correlation_id": _correlation, "causation_id": _cause, "aggregate_id": _aggregate}
    can_export = True
    export_types = ["csv"]
    export_max_rows = 100_000
    column_export_list = ["id", "event_id", "event_type", "event_version", "aggregate_type", "aggregate_id",
                          "correlation_id", "causation_id", "occurred_at", "dispatched_at", "payload", "metadata_"]
    column_formatters_export = {"payload": lambda v, c, m, n: json.dumps(m.payload),
                                "metadata_": lambda v, c, m, n: json.dumps(m.metadata_)}

    def search_placeholder(self) -> str:
        return "Event, correlation or causation id; aggregate id"

    def get_list(self, page, sort_column, sort_desc, search, filters, execute=True, page_size=None):  # type: ignore[no-untyped-def]
        timed = sort_column is None and any(isinstance(self._filters[idx], OccurredFilter)
                                            for idx, _, _ in filters or [])
        token = _by_time.set(timed)
        try:
            return super().get_list(page, sort_column, sort_desc, search, filters, execute=execute,
                                    page_size=page_size)
        finally:
            _by_time.reset(token)

    def _apply_sorting(self, query, joins, sort_column, sort_desc):  # type: ignore[no-untyped-def]
        if sort_column is None and _by_time.get():
            return query.order_by(*NEWEST_BY_TIME), joins
        return super()._apply_sorting(query, joins, sort_column, sort_desc)

    def render(self, template: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        model = kwargs.get("model")
        if template == self.details_template and model is not None:
            kwargs["caused"] = caused_chain(self.db, model.event_id)
            kwargs["cause"] = (
                self.db.scalar(select(OutboxEvent).where(OutboxEvent.event_id == model.causation_id))
                if model.causation_id else None
            )
            kwargs.update(badge=badge, compact_time=compact_time, events_url=events_url,
                          deliveries_of_event_url=deliveries_of_event_url)
            kwargs["deliveries"] = self.db.scalars(
                select(Delivery).where(Delivery.event_id == model.event_id).order_by(Delivery.handler)
            ).all()
        return super().render(template, **kwargs)


def caused_chain(session, event_id: uuid.UUID, depth: int = 5, limit: int = 200) -> list[tuple[int, OutboxEvent]]:  # type: ignore[no-untyped-def]
    """The events this one caused, and what they caused, depth first (bounded)."""
    result: list[tuple[int, OutboxEvent]] = []

    def walk(parent: uuid.UUID, level: int) -> None:
        if level > depth or len(result) >= limit:
            return
        children = session.scalars(
            select(OutboxEvent).where(OutboxEvent.causation_id == parent).order_by(OutboxEvent.id).limit(limit)
        ).all()
        for child in children:
            result.append((level, child))
            walk(child.event_id, level + 1)

    walk(event_id, 1)
    return result


class HandlerFilterMixin:
    def _handler_options(self):  # type: ignore[no-untyped-def]
        return [(name, name) for name in sorted(runtime().handlers)]


class EventTypeFilter(FilterEqual):
    """Deliveries of one event type. The list query already joins each delivery's event; a filter
    on ``OutboxEvent.event_type`` itself would make Flask-Admin add a join of its own, which it
    cannot build without a foreign key (migration 0007 dropped it)."""

    def apply(self, query, value, alias=None):  # type: ignore[no-untyped-def]
        return query.filter(OutboxEvent.event_type == value)


class DeliveriesView(ReadOnlyModelView):
    list_template = "admin/deliveries_list.html"
    details_template = "admin/delivery_details.html"  # blocked by whom, Replay, earlier outcomes
    column_default_sort = ("id", True)
    simple_list_pager = True
    column_list = ["id", "handler", "event.event_type", "event_id", "status", "attempts", "enqueued_at",
                   "updated_at", "dead_reason"]
    column_details_list = ["id", "handler", "event.event_type", "event_id", "status", "attempts", "dead_reason",
                           "created_at", "enqueued_at", "updated_at", "completed_at", "first_failed_at",
                           "last_failed_at", "last_error", "order_key", "replay_id"]
    column_sortable_list = ["id", "attempts", "enqueued_at", "updated_at"]
    column_filters = [
        FilterEqual(Delivery.status, "Status",
                    options=[(s, s) for s in ("pending", "retrying", "dead", "done", "resolved", "parked", "blocked")]),
        FilterEqual(Delivery.handler, "Handler"),
        EventTypeFilter(Delivery.event_id, "Event type"),
        FilterEqual(Delivery.dead_reason, "Dead reason"),
        UuidEqualFilter(Delivery.event_id, "Event id"),
    ]
    column_labels = {"event.event_type": "Event type", "event_id": "Event"}
    column_formatters_detail = {"last_error": _pre, "status": _status_badge, "event_id": _delivery_event}
    column_formatters = {
        "last_error": lambda v, c, m, n: (m.last_error or "").strip().splitlines()[-1:][0] if m.last_error else "",
        "status": _status_badge,
        "event_id": _delivery_event,
    }

    def get_query(self):  # type: ignore[no-untyped-def]
        return self.db.query(Delivery).join(OutboxEvent, OutboxEvent.event_id == Delivery.event_id)

    def render(self, template: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        if template == self.details_template and kwargs.get("model") is not None:
            from admin.replay import delivery_page_context  # admin.replay builds on this module

            kwargs.update(delivery_page_context(kwargs["model"]))
        return super().render(template, **kwargs)

    def get_count_query(self):  # type: ignore[no-untyped-def]
        from sqlalchemy import func

        return self.db.query(func.count(Delivery.id)).join(OutboxEvent, OutboxEvent.event_id == Delivery.event_id)

    @action("retry", "Retry", "Retry the {n} selected deliveries with a fresh retry budget? Finished ones are left as they are.")
    def action_retry(self, ids: list[str]) -> None:
        count = deadletters.retry_dead(runtime(), ids=[int(i) for i in ids], statuses=deadletters.RETRYABLE)
        audit("deliveries.retried", target=",".join(ids[:50]), selected=len(ids), count=count)
        flash(f"{count} of {len(ids)} deliveries enqueued again (finished ones are left as they are).", "success")

    @action("resolve", "Mark resolved", "Mark the {n} selected deliveries resolved? Their handlers will not run them again.")
    def action_resolve(self, ids: list[str]) -> None:
        count = deadletters.resolve(runtime(), [int(i) for i in ids], actor())
        audit("deliveries.resolved", target=",".join(ids[:50]), selected=len(ids), count=count)
        flash(f"{count} deliveries marked resolved.", "success")

    def matching_ids(self) -> list[int]:
        """Ids of every delivery matching the list's current filters and search, all pages."""
        view_args = self._get_list_extra_args()
        filters = self._get_list_filter_args()
        # page_size=0: every page, not just the visible one
        _, query = self.get_list(0, None, None, view_args.search, filters, execute=False, page_size=0)
        return [row.id for row in query.with_entities(Delivery.id)]

    def _unknown_handlers(self, ids: list[int]) -> list[str]:
        handlers = {h for (h,) in self.db.query(Delivery.handler).filter(Delivery.id.in_(ids)).distinct()}
        return sorted(handlers - set(runtime().handlers))

    @expose("/retry-matching/", methods=["GET", "POST"])
    def retry_matching(self):  # type: ignore[no-untyped-def]
        ids = self.matching_ids()
        if request.method == "POST":
            count = deadletters.retry_dead(runtime(), ids=ids, statuses=deadletters.RETRYABLE) if ids else 0
            audit("deliveries.retried", target="; ".join(self.described_filters()) or "all", matched=len(ids),
                  count=count)
            flash(f"{count} deliveries matching the filter enqueued again.", "success")
            unknown = self._unknown_handlers(ids)
            if unknown:
                flash(f"Not retried: handlers this web process does not load: {', '.join(unknown)}.", "warning")
            return redirect(self.get_url(".index_view", **request.args))
        retryable = self.db.query(Delivery).filter(
            Delivery.id.in_(ids), Delivery.status.in_(deadletters.RETRYABLE)
        ).count() if ids else 0
        return self.render("admin/retry_confirm.html", matching=len(ids), retryable=retryable,
                           back=self.get_url(".index_view", **request.args), conditions=self.described_filters())

    def described_filters(self) -> list[str]:
        """The list's current filters and search in words: ``Handler equals test.audit``."""
        words = [f"{self._filters[idx].name} {self._filters[idx].operation()} {value}"
                 for idx, _, value in (self._get_list_filter_args() or [])]
        search = self._get_list_extra_args().search
        return words + ([f"search {search}"] if search else [])


class DeadLettersView(DeliveriesView):
    column_list = ["id", "handler", "event.event_type", "event_id", "attempts", "dead_reason",
                   "first_failed_at", "last_failed_at", "last_error"]
    column_filters = [
        FilterEqual(Delivery.handler, "Handler"),
        EventTypeFilter(Delivery.event_id, "Event type"),
        FilterEqual(Delivery.dead_reason, "Dead reason"),
        UuidEqualFilter(Delivery.event_id, "Event id"),
    ]
    column_sortable_list = ["id", "attempts", "first_failed_at", "last_failed_at"]

    def get_query(self):  # type: ignore[no-untyped-def]
        return super().get_query().filter(Delivery.status == "dead")

    def get_count_query(self):  # type: ignore[no-untyped-def]
        return super().get_count_query().filter(Delivery.status == "dead")


class _ChangeThroughDomain:
    """Create and edit through a unit of work, so every change is a domain event with its actor, and
    on the audit trail in the same transaction. Creating and editing need the operator role."""

    @property
    def can_create(self) -> bool:
        return can("operator")

    @property
    def can_edit(self) -> bool:
        return can("operator")

    def _commit_change(self, change, action: str, target: str) -> bool:  # type: ignore[no-untyped-def]
        try:
            with causal_context(correlation_id=g.get("correlation_id"), actor=actor()):
                with runtime().unit_of_work() as uow:
                    change(uow)
                    audit(action, target=target, uow=uow)
                    uow.commit()
        except dynamic.InvalidSettingValue as exc:
            flash(str(exc), "error")
            return False
        self.db.expire_all()
        return True


class SettingsView(_ChangeThroughDomain, Secured, ModelView):
    can_delete = False
    can_view_details = True
    column_list = ["key", "type", "value", "description", "updated_at", "updated_by", "version"]
    column_formatters = {"value": lambda v, c, m, n: json.dumps(m.value)}
    column_type_formatters = LIST_TYPE_FORMATTERS
    column_searchable_list = ["key"]
    column_default_sort = "key"
    form_columns = ["key", "type", "value", "description"]
    form_overrides = {"value": TextAreaField, "type": SelectField}
    form_args = {
        "key": {"validators": [DataRequired(), Length(max=200), Regexp(r"^[a-zA-Z0-9_.\-]+$")]},
        "type": {"choices": list(dynamic.SETTING_TYPES)},
        "value": {"description": "string: as is; integer: 42; boolean: true/false; json: any JSON"},
    }

    def edit_form(self, obj=None):  # type: ignore[no-untyped-def]
        # The key and the type are fixed once created: the edit form changes value and description.
        form = super().edit_form(obj)
        del form.key
        del form.type
        return form

    def on_form_prefill(self, form, id):  # type: ignore[no-untyped-def]
        model = self.get_one(id)
        form.value.data = model.value if model.type == "string" else json.dumps(model.value)

    def create_model(self, form):  # type: ignore[no-untyped-def]
        ok = self._commit_change(lambda uow: dynamic.define_setting(
            uow, form.key.data, form.type.data, self._raw(form.type.data, form.value.data),
            form.description.data or "", actor()), "setting.changed", form.key.data)
        return self.get_one(tools.escape(form.key.data)) if ok else False

    def update_model(self, form, model):  # type: ignore[no-untyped-def]
        key = model.key

        def change(uow):  # type: ignore[no-untyped-def]
            setting = dynamic.change_setting(uow, key, self._raw(model.type, form.value.data), actor())
            setting.description = form.description.data or ""

        return self._commit_change(change, "setting.changed", key)

    @staticmethod
    def _raw(kind: str, text: str | None) -> Any:
        return text or "" if kind == "string" else (text or "").strip()


class FlagsView(_ChangeThroughDomain, Secured, ModelView):
    can_delete = False
    column_list = ["name", "enabled", "description", "updated_at", "updated_by", "version"]
    column_type_formatters = LIST_TYPE_FORMATTERS
    column_default_sort = "name"
    column_searchable_list = ["name"]
    form_columns = ["name", "enabled", "description"]
    form_overrides = {"enabled": BooleanField, "description": StringField}
    form_args = {"name": {"validators": [DataRequired(), Length(max=200), Regexp(r"^[a-zA-Z0-9_.\-]+$")]}}

    def edit_form(self, obj=None):  # type: ignore[no-untyped-def]
        form = super().edit_form(obj)
        del form.name
        return form

    def create_model(self, form):  # type: ignore[no-untyped-def]
        ok = self._commit_change(
            lambda uow: dynamic.set_flag(uow, form.name.data, bool(form.enabled.data), actor(), form.description.data or ""),
            "flag.changed", form.name.data)
        return self.get_one(tools.escape(form.name.data)) if ok else False

    def update_model(self, form, model):  # type: ignore[no-untyped-def]
        name = model.name
        return self._commit_change(
            lambda uow: dynamic.set_flag(uow, name, bool(form.enabled.data), actor(), form.description.data or ""),
            "flag.changed", name)

    @action("toggle", "Toggle", "Switch the {n} selected flags on or off? Code reading them sees the change at once.")
    def action_toggle(self, ids: list[str]) -> None:
        for encoded in ids:
            name = tools.iterdecode(encoded)[0]  # Flask-Admin escapes "." in ids
            flag = self.db.get(dynamic.FeatureFlag, name)
            if flag is None:
                abort(404)
            enabled = not flag.enabled
            self._commit_change(lambda uow, n=name, e=enabled: dynamic.set_flag(uow, n, e, actor()), "flag.changed", name)
        flash(f"{len(ids)} flags switched.", "success")


def _node_state(view, context, model, name):  # type: ignore[no-untyped-def]
    if model.stopped_at is None:
        return badge("live")
    return badge("gone" if (model.info or {}).get("gone") else "stopped")


class NodesView(ReadOnlyModelView):
    column_default_sort = ("heartbeat_at", True)
    column_list = ["kind", "host", "pid", "state", "version", "started_at", "heartbeat_at", "stopped_at"]
    column_details_list = ["id", "kind", "host", "pid", "state", "version", "started_at", "heartbeat_at", "stopped_at",
                           "info"]
    column_sortable_list = ["kind", "host", "started_at", "heartbeat_at", "stopped_at"]
    column_labels = {"pid": "PID", "heartbeat_at": "Last heartbeat", "started_at": "Started", "stopped_at": "Stopped"}
    column_formatters = {"state": _node_state}
    column_formatters_detail = {"info": _pretty_json, "state": _node_state, "id": _uuid}
    column_filters = ["kind"]


__all__ = ["BaseView"]
