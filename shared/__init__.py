"""Ozzy: an event-driven backend framework.

Business code changes state and records domain events; a unit of work saves both in one PostgreSQL
transaction (the outbox, which is also the event log). A relay moves new events to Redis: pub/sub for
live subscribers and one Dramatiq message per ``@handles`` handler. Workers run handlers once per
event, whatever Redis does.
"""

from shared import flags, settings
from shared.aggregate import Aggregate
from shared.db import Base
from shared.errors import (
    ConcurrencyError,
    ConfigurationError,
    DuplicateEventType,
    EventDecodeError,
    HandlerError,
    OzzyError,
    PermanentError,
    UnknownEventType,
)
from shared.events import Event, StoredEvent, causal_context
from shared.handlers import HandlerSpec, handles
from shared.runtime import Runtime, bootstrap
from shared.config import Settings, load_settings
from shared.uow import UnitOfWork

__all__ = [
    # Modelling
    "Aggregate",
    "Base",
    "Event",
    "StoredEvent",
    "causal_context",
    # Writing and handling
    "UnitOfWork",
    "handles",
    "HandlerSpec",
    # Runtime settings and feature flags (operators change them in the back office)
    "flags",
    "settings",
    # Process set-up
    "Runtime",
    "Settings",
    "bootstrap",
    "load_settings",
    # Errors
    "OzzyError",
    "ConfigurationError",
    "ConcurrencyError",
    "DuplicateEventType",
    "EventDecodeError",
    "HandlerError",
    "PermanentError",
    "UnknownEventType",
]
