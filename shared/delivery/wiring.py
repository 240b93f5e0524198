"""What the delivery layer needs from its process, as a type: the composition root's
:class:`shared.runtime.Runtime` provides it, and so can a test."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Config
from shared.delivery.handlers import HandlerRegistry

if TYPE_CHECKING:
    from shared.delivery.broker import OzzyBroker


class Wiring(Protocol):
    """The parts of a process that the relay, the worker side and the recovery chores use."""

    config: Config
    engine: Engine
    session_factory: sessionmaker[Session]
    redis: redis.Redis
    handlers: HandlerRegistry

    @property
    def broker(self) -> OzzyBroker: ...

    def wake_relays(self) -> None:
        """Ask the relays for a drain soon (after a handler committed new events)."""
