"""``@handles``: declare a function as the handler of one event type.

Declaring does not touch a broker: the registry is read by the composition root
(:func:`shared.runtime.bootstrap`), which turns each handler into one Dramatiq actor, and by the relay,
which enqueues one message per handler of each event.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from shared.errors import HandlerError
from shared.events import Event

if TYPE_CHECKING:
    from shared.uow import UnitOfWork

E = TypeVar("E", bound=Event)
HandlerFn = Callable[[E, "UnitOfWork"], None]
F = TypeVar("F", bound=Callable[..., None])

_QUEUE_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9._-]*$")
_INVALID = re.compile(r"[^a-zA-Z0-9._-]")


@dataclass(frozen=True)
class HandlerSpec:
    """A registered handler: what it handles, where its messages go, how it is retried."""

    name: str
    event_type: type[Event]
    fn: Callable[..., None]
    queue: str
    #: Dramatiq actor options (``max_retries``, ``min_backoff``, ``max_backoff``, ``time_limit``);
    #: the ones left out take the project-wide defaults from the settings.
    options: dict[str, Any] = field(default_factory=dict)


_handlers: dict[str, HandlerSpec] = {}


def handles(
    event_type: type[E],
    *,
    name: str | None = None,
    queue: str | None = None,
    max_retries: int | None = None,
    min_backoff: int | None = None,
    max_backoff: int | None = None,
    time_limit: int | None = None,
) -> Callable[[F], F]:
    """Register the decorated ``fn(event, uow)`` as a handler of ``event_type``.

    ``name`` identifies the handler in the delivery log and defaults to ``module.function``; keep it
    stable once events were delivered to it. ``queue`` defaults to the name. Backoffs and the time
    limit are in milliseconds. The function is returned unchanged, so it stays directly callable.
    """
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise HandlerError(f"@handles needs an Event subclass, got {event_type!r}")
    options = {
        k: v
        for k, v in {
            "max_retries": max_retries,
            "min_backoff": min_backoff,
            "max_backoff": max_backoff,
            "time_limit": time_limit,
        }.items()
        if v is not None
    }

    def register(fn: F) -> F:
        handler_name = name or _INVALID.sub("_", f"{fn.__module__}.{fn.__qualname__}")
        spec = HandlerSpec(handler_name, event_type, fn, queue or handler_name, options)
        _add(spec)
        return fn

    return register


def _add(spec: HandlerSpec) -> None:
    if not _QUEUE_NAME.match(spec.queue):
        raise HandlerError(f"handler {spec.name!r}: invalid queue name {spec.queue!r}")
    existing = _handlers.get(spec.name)
    if existing is not None and _origin(existing.fn) != _origin(spec.fn):
        raise HandlerError(f"two handlers are named {spec.name!r}: {_origin(existing.fn)} and {_origin(spec.fn)}")
    _handlers[spec.name] = spec


def _origin(fn: Callable[..., Any]) -> str:
    # Where the function was written: the same handler imported twice is not a conflict.
    code = getattr(fn, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code else ""
    return f"{fn.__module__}.{fn.__qualname__}{where}"


def registered_handlers() -> dict[str, HandlerSpec]:
    """Handler name to spec, for every handler imported so far."""
    return dict(_handlers)


def unregister(name: str) -> None:
    """Forget a handler (tests that declare handlers on the fly use this to clean up)."""
    _handlers.pop(name, None)


def handlers_by_event_type(specs: Iterable[HandlerSpec]) -> dict[str, list[HandlerSpec]]:
    """Event type name to its handlers, in name order (a stable fan-out order for the relay)."""
    result: dict[str, list[HandlerSpec]] = {}
    for spec in sorted(specs, key=lambda s: s.name):
        result.setdefault(spec.event_type.event_type, []).append(spec)
    return result


def import_handler_modules(names: Iterable[str]) -> None:
    """Import each module, and every submodule of each package, so their ``@handles`` run."""
    for name in names:
        module = importlib.import_module(name)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{name}."):
            importlib.import_module(info.name)
