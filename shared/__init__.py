"""Ozzy: an event-driven backend framework.

Business code changes state and records domain events; a unit of work saves both in one PostgreSQL
transaction (the outbox, which is also the event log). A relay moves new events to Redis: pub/sub for
live subscribers and one Dramatiq message per ``@handles`` handler. Workers run handlers once per
event, whatever Redis does.

This module is what applications write code against, and nothing else. Importing it to declare
events, aggregates and handlers loads no broker, Redis client, driver or web framework: the process
side (:func:`bootstrap`, :class:`Runtime`) is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shared import flags, settings
from shared.cluster.listeners import on_every_node
from shared.config import Config, load_config
from shared.delivery.handlers import handles
from shared.errors import (
    ConcurrencyError,
    ConfigurationError,
    DuplicateEventType,
    EventDecodeError,
    HandlerError,
    OzzyError,
    PermanentError,
    SagaInstanceMissing,
    UnknownEventType,
)
from shared.model.aggregate import Aggregate
from shared.model.base import Base
from shared.model.events import Event, causal_context
from shared.model.unit_of_work import UnitOfWork
from shared.workflows.recurring import recurring
from shared.workflows.sagas import Saga, SagaContext, step

if TYPE_CHECKING:
    from shared.runtime.root import Runtime, bootstrap

#: Names imported only when first used, because they pull in the process side (Redis, Dramatiq).
_LAZY = {"Runtime": "shared.runtime.root", "bootstrap": "shared.runtime.root"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shared' has no attribute {name!r}")


__all__ = [
    # Modelling
    "Aggregate",
    "Base",
    "Event",
    "causal_context",
    # Writing and handling
    "UnitOfWork",
    "handles",
    "on_every_node",
    # Workflows: sagas and recurring jobs (scheduled events are uow.schedule)
    "Saga",
    "SagaContext",
    "step",
    "recurring",
    # Runtime settings and feature flags (operators change them in the back office)
    "flags",
    "settings",
    # Process set-up
    "Config",
    "Runtime",
    "bootstrap",
    "load_config",
    # Errors
    "OzzyError",
    "ConfigurationError",
    "ConcurrencyError",
    "DuplicateEventType",
    "EventDecodeError",
    "HandlerError",
    "PermanentError",
    "SagaInstanceMissing",
    "UnknownEventType",
]
