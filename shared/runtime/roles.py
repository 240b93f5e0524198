"""The relay and worker processes, wired: what ``ozzy relay`` and ``ozzy worker`` run. Both start
their job only once Redis answers (one warning while it does not; see ``Process.run``)."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from shared import settings as runtime_settings
from shared.cluster.control import CONTROL_PLANE, PAUSED_HANDLERS, RELAY_PAUSED
from shared.delivery import versions
from shared.delivery.batching import BatchingWorker
from shared.delivery.relay import Relay
from shared.ops.housekeeping import Housekeeping
from shared.projections.runner import Projector
from shared.observability import metrics
from shared.observability.window import Rate, Window
from shared.runtime.process import Process
from shared.runtime.root import Runtime, import_event_modules
from shared.workflows import recurring

log = logging.getLogger(__name__)


def run_relay(runtime: Runtime) -> int:
    """``ozzy relay``: drain on wake-ups and every poll interval, run housekeeping under the lease,
    until SIGTERM or SIGINT; finish the current batch, return 0."""
    import_event_modules(runtime.config)  # so only truly unknown event types are parked
    jobs = runtime.recurring

    def schedule_jobs(at_start: bool = False) -> None:
        try:
            recurring.ensure_scheduled(runtime.engine, jobs, at_start=at_start)
        except SQLAlchemyError as exc:  # retried at the next sweep
            log.warning("could not schedule recurring jobs: %s", exc)

    relay = Relay(runtime, while_paused=CONTROL_PLANE, after_fire=schedule_jobs)
    chores = Housekeeping(runtime)
    # Projections run in the relays: each relay hears the positions it commits at once, and the
    # checkpoint row lock lets any number of relays take turns on a projection (see runner.py).
    projector = Projector(runtime.engine, runtime.redis, runtime.config, runtime.projections)
    process = Process(
        runtime, "relay",
        info=lambda: {**relay.status(), "leader": chores.lease.held, "projections": projector.status(),
                      "dispatched_per_second": dispatch_rate.sample(relay.stats.dispatched)},
        alive={"relay": lambda: relay.running()},
        pause_relay=relay.pause, resume_relay=relay.resume,
    )
    dispatch_rate = Rate()
    metrics.export_fast_channel(lambda: relay.subscriber.status().get("state") == "connected")
    # Until the settings are loaded, assume paused: only the control plane moves.
    relay.paused = True

    def honour_pause() -> None:
        relay.paused = bool(runtime_settings.get(RELAY_PAUSED, False))

    def start() -> None:
        if jobs:
            schedule_jobs(at_start=True)  # first, so the missed-run policy sees what was missed
            process.every(runtime.config.sweep_interval, schedule_jobs, "recurring-jobs")
        relay.start(process.scheduler)
        projector.start()
        process.every(runtime.config.sweep_interval, chores.run, "housekeeping", now=True)
        log.info("relay started: %d handlers for %d event types", len(runtime.handlers), len(relay.by_type))

    def stop() -> None:
        relay.stop()
        projector.stop()
        chores.stop()

    return process.run(start=start, stop=stop, on_ready=honour_pause, needs_redis=True)


def run_worker(runtime: Runtime, *, threads: int | None = None, queues: set[str] | None = None) -> int:
    """``ozzy worker``: consume every handler queue (or ``queues``) until SIGTERM or SIGINT, then
    finish in-flight messages, hand back prefetched ones and return 0."""
    broker = runtime.broker
    worker = BatchingWorker(
        broker, queues=queues, worker_threads=threads or runtime.config.worker_threads,
        worker_timeout=runtime.config.worker_idle_ms,
    )

    def pause(name: str) -> None:
        broker.paused_queues.add(runtime.handlers[name].queue)

    def resume(name: str) -> None:
        broker.paused_queues.discard(runtime.handlers[name].queue)
        broker.wake_listener.wake_all()

    def honour_pauses() -> None:  # once the settings are loaded (the database may be down at start)
        for name in runtime_settings.get(PAUSED_HANDLERS, []):
            if name in runtime.handlers:
                broker.paused_queues.add(runtime.handlers[name].queue)

    def send_parked() -> None:
        versions.send_parked_known(runtime)

    def start() -> None:
        # Dramatiq's middleware starts on this hook (TimeLimit's watchdog among them): without it a
        # handler past OZZY_TIME_LIMIT_MS would run on.
        broker.emit_after("process_boot")
        worker.start()
        # Parked deliveries of event versions this worker knows (a rolling deploy) go on from here.
        process.every(runtime.config.sweep_interval, send_parked, "parked-versions", now=True)
        log.info("worker started: %d handlers on %d queues", len(runtime.handlers), len(broker.get_declared_queues()))

    def stop() -> None:
        log.info("worker stopping: finishing in-flight messages")
        worker.stop(timeout=runtime.config.time_limit_ms)

    window = Window()
    process = Process(
        runtime, "worker",
        info=lambda: {"handlers": sorted(runtime.handlers), "threads": worker.worker_threads,
                      "queues": sorted(queues or []), "paused_queues": sorted(broker.paused_queues),
                      "handler_stats": window.handlers()},
        alive={"worker_threads": lambda: all(t.is_alive() for t in [*worker.workers, *worker.consumers.values()])},
        handlers=lambda: set(runtime.handlers), pause_handler=pause, resume_handler=resume,
    )
    return process.run(start=start, stop=stop, on_ready=honour_pauses, needs_redis=True)
