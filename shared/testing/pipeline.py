"""Integration tests on the real PostgreSQL and Redis, without ``ozzy relay`` or ``ozzy worker``:
run the real relay and the real handlers synchronously in the test's process until nothing is left
to do (as Dramatiq's stub broker does with ``join``)::

    runtime = bootstrap(config)
    with runtime.unit_of_work() as uow:
        submit_application(uow, "Ada", "ada@example.com", Decimal(500))
    run_until_idle(runtime)            # relay → Redis → handlers → their events → ... → idle

Messages are taken from the same Redis queues a worker reads, and each runs through the worker's
own code path (inbox, one transaction, causation). A handler's error is recorded as a dead delivery
and raised in the test (``raise_errors=False`` records and goes on).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, cast

from dramatiq import Message

from shared.db import sql
from shared.db.tables import DEAD
from shared.delivery.relay import Relay
from shared.delivery.worker import dead_reason, run_handler
from shared.model.stored import StoredEvent
from shared.runtime.root import Runtime

log = logging.getLogger(__name__)


def run_until_idle(runtime: Runtime, *, raise_errors: bool = True, max_rounds: int = 1000) -> int:
    """Relay every undispatched event, then run every queued message of the runtime's handlers,
    round after round, until a round finds nothing; return how many handler runs there were."""
    relay = Relay(runtime)
    runs = 0
    for _ in range(max_rounds):
        relayed = relay.fire_due() + relay.drain()
        handled = _run_queued(runtime, raise_errors)
        runs += handled
        if relayed == 0 and handled == 0:
            return runs
    raise RuntimeError(f"still busy after {max_rounds} rounds: do the handlers raise events forever?")


def _run_queued(runtime: Runtime, raise_errors: bool) -> int:
    ran = 0
    for queue in sorted(runtime.handlers.queues()):
        while (message := _pop(runtime, queue)) is not None:
            _run(runtime, message, raise_errors)
            ran += 1
    return ran


def _pop(runtime: Runtime, queue: str) -> Message[Any] | None:
    """Take the next message of ``queue`` off Redis, as a consumer would, and acknowledge it."""
    key = f"{runtime.config.redis_namespace}:{queue}"
    while True:
        redis_id = cast(bytes | None, runtime.redis.lpop(key))
        if redis_id is None:
            return None
        body = cast(bytes | None, runtime.redis.hget(f"{key}.msgs", redis_id))
        runtime.redis.hdel(f"{key}.msgs", redis_id)
        if body is not None:
            return Message.decode(body)


def _run(runtime: Runtime, message: Message[Any], raise_errors: bool) -> None:
    spec = runtime.handlers[message.actor_name]
    stored = StoredEvent.from_message(message.args[0])
    try:
        run_handler(runtime, spec, stored)
    except Exception as exc:
        _record_dead(runtime, spec.name, stored, exc)
        if raise_errors:
            raise
        log.warning("%s failed on %s %s: %s", spec.name, stored.type, stored.event_id, type(exc).__name__)


def _record_dead(runtime: Runtime, handler: str, stored: StoredEvent, exc: BaseException) -> None:
    params = {"event_id": stored.event_id, "handler": handler, "status": DEAD,
              "error": "".join(traceback.format_exception(exc)), "dead_reason": dead_reason(exc)}
    with runtime.engine.begin() as conn:
        conn.execute(sql.RECORD_FAILURE, params)
