"""``@handles``: declare a function as the handler of one event type.

Declaring touches nothing global: the decorator validates the declaration and marks the function
with its :class:`HandlerSpec`. The composition root (:func:`shared.runtime.bootstrap`) collects the
marked functions of the configured modules into a :class:`HandlerRegistry`, which the relay routes
by and the broker turns into one Dramatiq actor per handler.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from shared.discovery import import_modules, marked
from shared.errors import HandlerError
from shared.model.events import Event

if TYPE_CHECKING:
    from shared.model.unit_of_work import UnitOfWork

E = TypeVar("E", bound=Event)
F = TypeVar("F", bound=Callable[..., None])
HandlerFn = Callable[[Any, "UnitOfWork"], None]

#: The attribute ``@handles`` sets on the function it declares.
MARK = "__ozzy_handler__"

_QUEUE_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9._-]*$")


@dataclass(frozen=True)
class HandlerSpec:
    """A declared handler: what it handles, where its messages go, how it is retried."""

    name: str
    event_type: type[Event]
    fn: HandlerFn
    queue: str
    #: Dramatiq actor options (``max_retries``, ``min_backoff``, ``max_backoff``, ``time_limit``);
    #: the ones left out take the project-wide defaults from the configuration.
    options: dict[str, Any] = field(default_factory=dict)
    #: Ordered handlers only: the event field (a name) or function giving the key whose events are
    #: handled one at a time, in dispatch order (see :mod:`shared.delivery.ordering`).
    ordered_by: str | Callable[[Any], Any] | None = None

    def order_key(self, event: Event) -> str | None:
        """The ordering key of ``event`` for this handler, as text (None: not ordered, or no key)."""
        if self.ordered_by is None:
            return None
        value = getattr(event, self.ordered_by) if isinstance(self.ordered_by, str) else self.ordered_by(event)
        return None if value is None else str(value)

    @property
    def origin(self) -> str:
        """Where the function was written: the same handler imported twice is not a conflict."""
        code = getattr(self.fn, "__code__", None)
        where = f" ({code.co_filename}:{code.co_firstlineno})" if code else ""
        return f"{self.fn.__module__}.{self.fn.__qualname__}{where}"


def handles(
    event_type: type[E],
    *,
    name: str | None = None,
    queue: str | None = None,
    max_retries: int | None = None,
    min_backoff: int | None = None,
    max_backoff: int | None = None,
    time_limit: int | None = None,
    ordered_by: str | Callable[[E], Any] | None = None,
) -> Callable[[F], F]:
    """Declare the decorated ``fn(event, uow)`` as a handler of ``event_type``.

    ``name`` is required: it is the handler's identity in the delivery log (the inbox, dead letters,
    pauses), so it must not change when the function is renamed or moved; keep it stable once events
    were delivered to it. ``queue`` defaults to the name. Backoffs and the time limit are in
    milliseconds. The function is returned unchanged, so it stays directly callable (and
    unit-testable).

    ``ordered_by`` (a field name of the event, or a function of the event) makes the handler
    ordered: events with the same key are handled one at a time, in the log's dispatch order,
    however many relays, workers and threads run; different keys still run in parallel. A delivery
    that fails for good blocks the later ones of its key until an operator retries or resolves it.
    """
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise HandlerError(f"@handles needs an Event subclass, got {event_type!r}")
    if not name:
        raise HandlerError(
            f"@handles({event_type.__name__}) needs name=, the handler's stable identity in the delivery log,"
            f" for example name=\"{event_type.event_type.split('.')[0]}.<what_it_does>\""
        )
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
    if isinstance(ordered_by, str) and ordered_by not in event_type.model_fields:
        raise HandlerError(f"@handles({event_type.__name__}, ordered_by={ordered_by!r}): no such field"
                           f" (fields: {', '.join(event_type.model_fields)})")
    if ordered_by is not None and not isinstance(ordered_by, str) and not callable(ordered_by):
        raise HandlerError(f"@handles({event_type.__name__}): ordered_by must be a field name or a function")

    def declare(fn: F) -> F:
        spec = HandlerSpec(name, event_type, fn, queue or name, options, ordered_by)
        if not _QUEUE_NAME.match(spec.queue):
            raise HandlerError(f"handler {spec.name!r}: invalid queue name {spec.queue!r}")
        if MARK in vars(fn):
            raise HandlerError(f"{spec.origin} is already a handler: declare one function per event type")
        setattr(fn, MARK, spec)
        return fn

    return declare


def specs_of(declared: Any) -> list[HandlerSpec]:
    """The specs a declaration carries: a spec, a ``@handles`` function, or a class that declares
    several handlers (a saga: one per step), marked with a tuple of specs."""
    mark = declared if isinstance(declared, (HandlerSpec, tuple)) else vars(declared).get(MARK)
    if isinstance(mark, HandlerSpec):
        return [mark]
    if isinstance(mark, tuple) and all(isinstance(s, HandlerSpec) for s in mark):
        return list(mark)
    raise HandlerError(f"{declared!r} declares no handler (@handles, or a saga)")


def spec_of(handler: HandlerSpec | Callable[..., Any]) -> HandlerSpec:
    """The spec of a function declared with ``@handles`` (or the spec itself)."""
    if isinstance(handler, HandlerSpec):
        return handler
    spec = getattr(handler, MARK, None)
    if not isinstance(spec, HandlerSpec):
        raise HandlerError(f"{handler!r} is not declared with @handles")
    return spec


class HandlerRegistry(Mapping[str, HandlerSpec]):
    """The handlers one process runs or routes to, by name; immutable once built."""

    def __init__(self, handlers: Iterable[Any] = ()) -> None:
        self._specs: dict[str, HandlerSpec] = {}
        for spec in (s for declared in handlers for s in specs_of(declared)):
            existing = self._specs.get(spec.name)
            if existing is not None and existing.origin != spec.origin:
                raise HandlerError(f"two handlers are named {spec.name!r}: {existing.origin} and {spec.origin}")
            self._specs[spec.name] = spec
        self.by_event_type = _by_event_type(self._specs.values())

    @classmethod
    def from_modules(cls, names: Iterable[str]) -> HandlerRegistry:
        """Every handler declared in the modules ``names`` (packages are walked)."""
        return cls(marked(import_modules(names), MARK))

    def __getitem__(self, name: str) -> HandlerSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def queues(self) -> set[str]:
        return {spec.queue for spec in self._specs.values()}

    def routes(self) -> list[tuple[str, str]]:
        """(event type name, handler name) for every handler, in fan-out order."""
        return [(t, spec.name) for t, specs in self.by_event_type.items() for spec in specs]


def _by_event_type(specs: Iterable[HandlerSpec]) -> dict[str, list[HandlerSpec]]:
    """Event type name to its handlers, in name order (a stable fan-out order for the relay)."""
    result: dict[str, list[HandlerSpec]] = {}
    for spec in sorted(specs, key=lambda s: s.name):
        result.setdefault(spec.event_type.event_type, []).append(spec)
    return result
