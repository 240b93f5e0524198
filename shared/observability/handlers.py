"""What a worker records per message, as Dramatiq middleware: the handler's metrics, its log
context and its trace span.

Listed first among the broker's middleware, so its "after" hook runs last: the failure lines that
:class:`shared.delivery.worker.DeliveryState` logs still carry the message's log context, and
``message.failed`` (set by ``Retries``) tells a retry from a dead delivery. Everything it keeps per
message lives in the worker thread that runs it (Dramatiq runs the hooks and the actor there).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
from dramatiq import Middleware
from dramatiq.broker import MessageProxy

from shared import logs
from shared.observability import metrics, tracing


#: What came of a message that did not run its handler (see :func:`outcome`).
DUPLICATE, PARKED_OUTCOME, WAITING = "duplicate", "parked", "waiting"
#: Per worker thread: the outcome of the message it runs, when that is not a run.
_run = threading.local()


def outcome(what: str) -> None:
    """Tell the middleware what came of the message this thread runs, when it did not run the
    handler: ``duplicate`` (its (event, handler) was done already: counted as a duplicate),
    ``parked`` (set aside to be delivered later: counted as a failure of kind parked) or ``waiting``
    (an ordered handler's key is busy; it is sent again later: not counted). A run is timed."""
    _run.outcome = what


class HandlerObservability(Middleware):
    """Duration, failures and duplicates per handler; log fields and a span per message."""

    def __init__(self) -> None:
        self._local = threading.local()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        envelope: dict[str, Any] = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
        metadata = envelope.get("metadata") or {}
        handler = message.actor_name
        token = logs.bind(event_id=envelope.get("event_id"), event_type=envelope.get("type"), handler=handler,
                          attempt=message.options.get("retries", 0) + 1,
                          correlation_id=metadata.get("correlation_id"))
        span = None
        if tracing.active():
            span = tracing.start(f"ozzy.handle {handler}", kind="CONSUMER", parent=tracing.context_of(metadata),
                                 **{"ozzy.handler": handler, "ozzy.event_type": envelope.get("type", ""),
                                    "ozzy.event_id": envelope.get("event_id", ""),
                                    "ozzy.attempt": message.options.get("retries", 0) + 1})
        _run.outcome = None
        self._local.state = (time.perf_counter(), token, span)

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        state = getattr(self._local, "state", None)
        if state is None:
            return
        self._local.state = None
        started, token, span = state
        handler = metrics.for_handler(message.actor_name)
        what = getattr(_run, "outcome", None)
        _run.outcome = None
        if exception is not None:
            handler.failures[metrics.DEAD if message.failed else metrics.RETRY].inc()
        elif what is None:
            handler.duration.observe(time.perf_counter() - started)
        elif what == DUPLICATE:
            handler.duplicates.inc()
        elif what == PARKED_OUTCOME:
            handler.failures[metrics.PARKED].inc()
        tracing.end(span, error=exception, **({"ozzy.outcome": what} if what else {}))
        logs.unbind(token)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        state = getattr(self._local, "state", None)
        if state is not None:
            self._local.state = None
            tracing.end(state[2])
            logs.unbind(state[1])
