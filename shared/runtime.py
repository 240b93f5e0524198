"""The composition root: one :class:`Runtime` per process, built by :func:`bootstrap`.

Import-time code never connects to anything; ``bootstrap`` builds the engine, the Redis clients and
(on first use) the Dramatiq broker with one actor per registered handler.
"""

from __future__ import annotations

import logging
from functools import cached_property

import dramatiq
import redis
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from shared.broker import OzzyBroker
from shared.db import make_engine, make_session_factory
from shared.fastchannel import WakeNotifier, bounded_client, relay_channel
from shared.handlers import HandlerSpec, import_handler_modules, registered_handlers
from shared.config import Settings, load_settings
from shared import store
from shared.uow import UnitOfWork

log = logging.getLogger(__name__)


class Runtime:
    """Everything a process needs, built once: engine, sessions, Redis, broker, handler registry."""

    def __init__(self, settings: Settings, engine: Engine, handlers: dict[str, HandlerSpec]) -> None:
        self.settings = settings
        self.engine = engine
        self.session_factory: sessionmaker = make_session_factory(engine)
        self.handlers = handlers
        # Commands that may wait (the relay's pipeline, workers) use this client ...
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
        # ... the write path's wake-up uses one that gives up quickly.
        self.notifier = WakeNotifier(
            bounded_client(settings.redis_url, settings.notify_timeout),
            relay_channel(settings.redis_namespace),
        )
        # shared.settings.get and shared.flags.is_enabled read through this process's runtime.
        store.install(store.Store(self.session_factory))

    def unit_of_work(self) -> UnitOfWork:
        """A new unit of work; use it as a context manager and call ``commit()`` to save."""
        return UnitOfWork(self.session_factory(), on_commit=self.notifier.notify)

    @cached_property
    def broker(self) -> OzzyBroker:
        """The Dramatiq broker with one actor per handler; created on first use, set as global."""
        from shared.worker import DeliveryState, actor_function  # the worker path imports the broker

        s = self.settings
        middleware = [
            AgeLimit(),
            TimeLimit(time_limit=s.time_limit_ms),
            ShutdownNotifications(),
            Callbacks(),
            Pipelines(),
            # Dramatiq runs "after" hooks in reverse order: listed before Retries, DeliveryState
            # runs after it and knows whether a failure will be retried or was final.
            DeliveryState(self),
            Retries(max_retries=s.max_retries, min_backoff=s.min_backoff_ms, max_backoff=s.max_backoff_ms),
        ]
        broker = OzzyBroker(
            client=self.redis,
            namespace=s.redis_namespace,
            middleware=middleware,
            heartbeat_timeout=s.heartbeat_timeout_ms,
        )
        dramatiq.set_broker(broker)
        for spec in self.handlers.values():
            dramatiq.Actor(
                actor_function(self, spec),
                broker=broker,
                actor_name=spec.name,
                queue_name=spec.queue,
                priority=0,
                options=actor_options(spec),
            )
        return broker

    def close(self) -> None:
        self.notifier.close()
        if "broker" in self.__dict__:
            self.broker.close()
        self.redis.close()
        self.engine.dispose()


def actor_options(spec: HandlerSpec) -> dict[str, object]:
    from shared.errors import EventDecodeError, PermanentError, UnknownEventType

    return {**spec.options, "throws": (PermanentError, UnknownEventType, EventDecodeError)}


def bootstrap(settings: Settings | None = None, *, import_handlers: bool = True) -> Runtime:
    """Build the runtime of this process. Handler modules are imported first (unless told not to),
    so every process sees the same registry."""
    settings = settings or load_settings()
    if import_handlers:
        import_handler_modules(settings.handler_modules)
    return Runtime(settings, make_engine(settings), registered_handlers())
