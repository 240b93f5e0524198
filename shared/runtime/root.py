"""The composition root: one :class:`Runtime` per process, built by :func:`bootstrap`.

Import-time code never connects to anything. ``bootstrap`` collects the handlers and listeners of
the configured modules, builds the engine and the Redis clients, and (on first use) the Dramatiq
broker with one actor per handler. Everything a layer below needs is handed to it from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.channel.pubsub import WakeNotifier, bounded_client, relay_channel
from shared.cluster import cache
from shared.cluster.listeners import ListenerSpec, listeners_in
from shared.config import Config, load_config
from shared.db.engine import make_engine, make_session_factory
from shared.delivery.broker import OzzyBroker
from shared.delivery.handlers import HandlerRegistry, HandlerSpec
from shared.delivery.worker import build_broker
from shared.discovery import import_modules
from shared.outbox.unit_of_work import SqlUnitOfWork
from shared.projections.projection import Projection, projections_in
from shared.workflows.recurring import RecurringJob, jobs_in
from shared.ops.audit import Audited

log = logging.getLogger(__name__)
#: Event types every process must know although no handler asks for them: a relay parks the types
#: it does not know, and the audit trail (ozzy.audit) is written by the web process and the CLI.
FRAMEWORK_EVENTS = (Audited,)


class Runtime:
    """Everything a process needs, built once: engine, sessions, Redis, broker, handlers, listeners."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        handlers: HandlerRegistry | Iterable[HandlerSpec | Callable[..., Any]] = (),
        listeners: Iterable[ListenerSpec] = (),
        recurring: Iterable[RecurringJob] = (),
        projections: Iterable[Projection] = (),
    ) -> None:
        self.config = config
        self.engine = engine
        self.session_factory: sessionmaker[Session] = make_session_factory(engine)
        self.handlers = handlers if isinstance(handlers, HandlerRegistry) else HandlerRegistry(handlers)
        #: The application's cluster-wide listeners (the framework adds its own per process).
        self.listeners = list(listeners)
        #: Recurring jobs the relays of this deployment keep scheduled.
        self.recurring = list(recurring)
        #: Projections the relays of this deployment keep live (``ozzy projections`` manages them).
        self.projections = list(projections)
        # Commands that may wait (the relay's pipeline, workers) use this client ...
        self.redis = redis.Redis.from_url(config.redis_url, socket_timeout=10, socket_connect_timeout=5)
        # ... the write path's wake-up uses one that gives up quickly.
        self.notifier = WakeNotifier(
            bounded_client(config.redis_url, config.notify_timeout), relay_channel(config.redis_namespace)
        )
        #: Runtime settings and flags as this process sees them (read by shared.settings/flags).
        self.values = cache.ValuesCache(self.session_factory)
        cache.install(self.values)

    def unit_of_work(self) -> SqlUnitOfWork:
        """A new unit of work; use it as a context manager and call ``commit()`` to save."""
        return SqlUnitOfWork(self.session_factory(), on_commit=self.notifier.notify)

    def wake_relays(self) -> None:
        """Ask the relays for a drain soon; returns at once."""
        self.notifier.notify()

    @cached_property
    def broker(self) -> OzzyBroker:
        """The Dramatiq broker with one actor per handler; created on first use, set as global."""
        return build_broker(self)

    def close(self) -> None:
        self.notifier.close()
        if "broker" in self.__dict__:
            self.broker.close()
        self.redis.close()
        self.engine.dispose()


def bootstrap(config: Config | None = None, *, import_handlers: bool = True) -> Runtime:
    """Build the runtime of this process: the handlers and listeners declared in
    ``OZZY_HANDLER_MODULES`` (unless ``import_handlers`` is false), an engine, Redis clients."""
    config = config or load_config()
    handlers: HandlerRegistry = HandlerRegistry()
    listeners: list[ListenerSpec] = []
    jobs: list[RecurringJob] = []
    projections: list[Projection] = []
    if import_handlers:
        handlers = HandlerRegistry.from_modules(config.handler_modules)
        listeners = listeners_in(config.handler_modules)
        jobs = jobs_in(config.handler_modules)
        projections = projections_in(config.handler_modules)
    return Runtime(config, make_engine(config), handlers, listeners, jobs, projections)


def import_event_modules(config: Config) -> None:
    """Import the configured event modules, so only truly unknown event types are parked."""
    import_modules(config.event_modules)
