"""Several deliveries in one transaction: the worker threads of :class:`BatchingWorker`.

A worker thread that finds several prefetched messages waiting for handlers that can share a
transaction (every handler but the ordered ones) takes up to ``OZZY_WORKER_BATCH`` of them and runs
them one after the other in ONE PostgreSQL transaction, each delivery inside a SAVEPOINT that
travels with its inbox claim (one round trip), then COMMITs once and acknowledges the messages to
Redis in one pipeline. Each message still goes through Dramatiq's middleware on its own (metrics,
log context, time limit, retries), exactly as when it runs alone.

* A handler that raises rolls back to its savepoint: its effects, its events and its inbox claim go,
  the others of the batch stay. Its failure is recorded (retrying or dead) and its retry scheduled
  as always.
* Nothing is acknowledged before the COMMIT: a process killed mid-batch leaves its messages
  unacknowledged (they come back), and the inbox turns any that did commit into duplicates.
* When the batch's transaction is lost (the database went away, or a handler rolled the whole
  session back), the deliveries it held run again one at a time, on the usual path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from queue import Empty
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.worker import WorkerThread
from sqlalchemy import Connection, Engine

from shared.db.engine import unpinged
from shared.delivery.broker import _QuickWakeConsumer

log = logging.getLogger(__name__)

#: The savepoint each delivery of a batch runs in (released when the next one starts).
SAVEPOINT = "ozzy_delivery"
#: A batch starts no delivery after it has run this long (seconds): it commits, and hands the
#: messages it had taken back to the work queue. Bounds how long a batch holds its locks and how
#: long its first delivery waits for its COMMIT; slow handlers end up one per transaction.
BUDGET = 0.2

_local = threading.local()


@dataclass(frozen=True)
class Batching:
    """What a worker needs to batch: set on the broker by :func:`shared.delivery.worker.build_broker`."""

    engine: Engine
    #: The handlers whose deliveries may share a transaction (not the ordered ones).
    handlers: frozenset[str]
    #: Most deliveries per transaction (1: each its own, as plain Dramatiq).
    size: int
    #: Called once a COMMIT wrote events (the relays' wake-up).
    on_events: Callable[[], None]


def current() -> Batch | None:
    """The batch this worker thread is running, if any."""
    batch: Batch | None = getattr(_local, "batch", None)
    return batch


Key = tuple[str, str]


class Batch:
    """One transaction shared by several deliveries of a worker thread."""

    def __init__(self, batching: Batching) -> None:
        self._batching = batching
        self.connection: Connection | None = None
        #: False once the transaction is gone for good (the database was lost): the rest of the
        #: batch runs one at a time.
        self.usable = True
        #: Deliveries whose effects wait for the COMMIT.
        self.pending: list[Key] = []
        #: Deliveries whose effects were rolled back under them: they run again.
        self.lost: list[Key] = []
        #: False while a failed delivery's rollback to its savepoint is not known to be done: the
        #: batch may still hold its locks, so its failure is recorded after the batch ends.
        self.settled = True
        self._events = False
        self._later: list[Callable[[], None]] = []

    def connect(self) -> Connection:
        """The batch's connection, in a transaction (SQLAlchemy's; the server's starts with the
        first claim, see :func:`shared.delivery.worker.inbox_claim_in_batch`)."""
        if self.connection is None:
            with unpinged():  # a lost connection fails the claim, and the batch falls back
                self.connection = self._batching.engine.connect()
        if not self.connection.in_transaction():
            self.connection.begin()
        return self.connection

    def transaction_lost(self) -> None:
        """The server's transaction was rolled back: what it held must run again."""
        self.lost.extend(self.pending)
        self.pending.clear()

    def abandon(self) -> None:
        """The connection is gone, or in a state nobody knows: it is closed (so the server ends its
        transaction and releases its locks), what the batch held runs again, and the rest of the
        batch one at a time."""
        self.usable = False
        self.transaction_lost()
        if self.connection is not None:
            try:
                self.connection.invalidate()
            except Exception:  # noqa: BLE001 - closing what is already broken
                log.debug("invalidating a batch's connection", exc_info=True)

    def delivered(self, handler: str, event_id: Any, *, events: bool) -> None:
        self.pending.append((handler, str(event_id)))
        self._events = self._events or events

    def later(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the batch's transaction has ended (committed or not)."""
        self._later.append(action)

    def finish(self) -> set[Key]:
        """COMMIT what the batch holds; return the deliveries that must run again."""
        again = set(self.lost)
        committed = False
        try:
            if self.connection is not None and self.usable:
                committed = self._commit()
        except Exception as exc:  # noqa: BLE001 - whatever failed, the deliveries run again
            log.warning("a batch of %d deliveries could not commit, running them one at a time: %s",
                        len(self.pending), exc)
        finally:
            self._close()
        if not committed:
            again.update(self.pending)
        elif self._events:
            self._batching.on_events()
        for action in self._later:
            try:
                action()
            except Exception:  # noqa: BLE001 - one failure record must not stop the others
                log.exception("after a batch of deliveries")
        return again

    def _commit(self) -> bool:
        """COMMIT (also when the batch holds nothing: what is left are released savepoints, and a
        driver-level ROLLBACK would make psycopg drop the session's prepared statements)."""
        assert self.connection is not None
        if self.connection.in_transaction():
            self.connection.commit()
            return True
        return not self.pending

    def _close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:  # noqa: BLE001 - a dead connection is closed by the pool
                log.debug("closing a batch's connection", exc_info=True)
            self.connection = None


class BatchingWorker(dramatiq.Worker):
    """Dramatiq's worker, whose threads run several deliveries per transaction (see the module)."""

    def __init__(self, broker: dramatiq.Broker, **kw: Any) -> None:
        super().__init__(broker, **kw)
        self.batching: Batching | None = getattr(broker, "batching", None)
        if self.batching is not None and self.batching.size > 1:
            # A batch's worth per thread: with less, each thread's share of the queue (see ``_take``)
            # stays below a batch.
            self.queue_prefetch = min(max(self.queue_prefetch, self.worker_threads * self.batching.size), 65535)

    def _add_worker(self) -> None:
        if self.batching is None or self.batching.size <= 1:
            super()._add_worker()
            return
        worker = _BatchingThread(self.batching, self.workers, broker=self.broker, consumers=self.consumers,
                                 work_queue=self.work_queue, worker_timeout=self.worker_timeout)
        worker.start()
        self.workers.append(worker)


class _Deferred:
    """Stands in for the consumers while a batch runs: keeps the messages to acknowledge after the
    COMMIT instead of acknowledging each as it finishes."""

    def __init__(self) -> None:
        self.messages: list[MessageProxy] = []

    def __getitem__(self, queue_name: str) -> _Deferred:
        return self

    def post_process_message(self, message: MessageProxy) -> None:
        self.messages.append(message)


class _Counted:
    """The work queue, for a message run again: its ``task_done`` was already counted."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def task_done(self) -> None:
        pass


class _BatchingThread(WorkerThread):
    def __init__(self, batching: Batching, peers: list[WorkerThread], **kw: Any) -> None:
        super().__init__(**kw)
        self.batching = batching
        self.peers = peers

    def run(self) -> None:
        """Dramatiq's loop, taking what else waits in the work queue along with a message."""
        self.running = True
        self.broker.emit_after("worker_thread_boot", self)
        held: Any = None
        while self.running:
            if self.paused:
                self.paused_event.set()
                time.sleep(self.timeout)
                continue
            try:
                item = held if held is not None else self.work_queue.get(timeout=self.timeout)
            except Empty:
                continue
            items, held = self._take(item)
            if len(items) > 1:
                self.process_batch(items)
            else:
                self.process_message(item.message)
        if held is not None:  # taken from the queue: it runs before the thread stops
            self.process_message(held.message)
        self.broker.emit_before("worker_thread_shutdown", self)

    def _take(self, item: Any) -> tuple[list[Any], Any]:
        """``item`` and the batchable ones queued behind it, up to twice this thread's share of the
        queue: when few messages wait, the threads still run them side by side (slow handlers stay
        parallel); when many wait, every thread fills a batch. The first that is not batchable
        comes back to run next."""
        items = [item]
        if not self._batchable(item.message):
            return items, None
        share = -(-2 * (self.work_queue.qsize() + 1) // max(1, len(self.peers)))  # rounded up
        limit = min(self.batching.size, share)
        while len(items) < limit:
            try:
                other = self.work_queue.get_nowait()
            except Empty:
                break
            if not self._batchable(other.message):
                return items, other
            items.append(other)
        return items, None

    def _batchable(self, message: MessageProxy) -> bool:
        return message.actor_name in self.batching.handlers and bool(message.args)

    def process_batch(self, items: list[Any]) -> None:
        """Run the messages of ``items`` in one transaction, until :data:`BUDGET` is spent; the
        ones not started go back to the work queue."""
        batch = Batch(self.batching)
        deferred = _Deferred()
        consumers = self.consumers
        self.consumers = deferred  # type: ignore[assignment]  # only its post_process_message is used
        _local.batch = batch
        started = time.monotonic()
        try:
            for n, item in enumerate(items):
                if n and time.monotonic() - started > BUDGET:
                    self._give_back(items[n:])
                    break
                self.process_message(item.message)
        finally:
            _local.batch = None
            self.consumers = consumers
            again = batch.finish()
        rerun = [m for m in deferred.messages if not m.failed and _key(m) in again]
        self._post([m for m in deferred.messages if m not in rerun])
        for message in rerun:
            self._run_again(message)

    def _give_back(self, items: list[Any]) -> None:
        for item in items:
            self.work_queue.put(item)  # its original place: the queue orders by time queued
            self.work_queue.task_done()  # it counts once, when it is run

    def _run_again(self, message: MessageProxy) -> None:
        queue = self.work_queue
        self.work_queue = _Counted(queue)  # type: ignore[assignment]  # only its task_done is used
        try:
            self.process_message(message)
        finally:
            self.work_queue = queue

    def _post(self, messages: Iterable[MessageProxy]) -> None:
        """Acknowledge (or reject, when dead) the batch's messages: the acknowledgements of a
        queue in one Redis pipeline."""
        acks: dict[str, list[MessageProxy]] = defaultdict(list)
        for message in messages:
            if message.failed:
                self.consumers[message.queue_name].post_process_message(message)
            else:
                acks[message.queue_name].append(message)
        for queue_name, queued in acks.items():
            thread = self.consumers[queue_name]
            if len(queued) > 1 and isinstance(thread.consumer, _QuickWakeConsumer):
                try:
                    for message in queued:
                        self.broker.emit_before("ack", message)
                    thread.consumer.ack_many(queued)
                    for message in queued:
                        self.broker.emit_after("ack", message)
                    continue
                except Exception as exc:  # noqa: BLE001 - Dramatiq's own path retries until Redis is back
                    log.warning("could not acknowledge %d messages at once: %s", len(queued), exc)
            for message in queued:
                thread.post_process_message(message)


def _key(message: MessageProxy) -> Key:
    return message.actor_name, str(message.args[0].get("event_id"))
