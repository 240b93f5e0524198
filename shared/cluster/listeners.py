"""Cluster-wide listeners: ``@on_every_node(EventType)`` runs a function in **every** process
(web, relay, worker) that loaded it, once per process, in dispatch order.

Handlers (``@handles``) are competing consumers: one worker runs each. Listeners are the other half,
for things every node must hear: settings and flag changes, control commands, cache invalidation.

Declaring only marks the function (this module imports no driver); :mod:`shared.cluster.reader`
delivers. Delivery reads the event log by ``dispatch_seq`` (a position the relay assigns under a lock at commit,
so a later position is never visible before an earlier one) from the listener's position. The relay's
pub/sub announcement only wakes the reader at once; when it is lost or the subscriber was cut off,
the poll every ``OZZY_POLL_INTERVAL`` catches up. Where a listener starts is an explicit choice:

* ``start="now"`` (caches): from the end of the log when the process starts; pair it with a full
  reload at start (``on_start``).
* ``start="checkpoint"``: from a position saved in ``ozzy_checkpoints`` under
  ``<OZZY_NODE_NAME>:<listener>``, so a restarted node handles what it missed. A new checkpoint starts
  at the end of the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from shared.discovery import import_modules, marked
from shared.errors import HandlerError
from shared.model.events import Event

Start = Literal["now", "checkpoint"]


#: The attribute ``@on_every_node`` sets on the function it declares.
MARK = "__ozzy_listener__"


@dataclass(frozen=True)
class ListenerSpec:
    name: str
    event_types: tuple[type[Event], ...]
    fn: Callable[[Any], None]
    start: Start
    on_start: Callable[[], None] | None = None

    @property
    def type_names(self) -> frozenset[str]:
        return frozenset(t.event_type for t in self.event_types)


def on_every_node(
    *event_types: type[Event],
    name: str | None = None,
    start: Start = "now",
    on_start: Callable[[], None] | None = None,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Declare ``fn(event)`` to run in every process that loads it, for each event of ``event_types``.

    Like ``@handles``, this only marks the function: a process runs the listeners of the modules
    its composition root collects (``OZZY_HANDLER_MODULES``)."""
    if not event_types or not all(isinstance(t, type) and issubclass(t, Event) for t in event_types):
        raise HandlerError("@on_every_node needs one or more Event subclasses")
    if start not in ("now", "checkpoint"):
        raise HandlerError("start must be 'now' or 'checkpoint'")

    def declare(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        setattr(fn, MARK, listener(fn, *event_types, name=name, start=start, on_start=on_start))
        return fn

    return declare


def listener(
    fn: Callable[[Any], None],
    *event_types: type[Event],
    name: str | None = None,
    start: Start = "now",
    on_start: Callable[[], None] | None = None,
) -> ListenerSpec:
    """A listener spec for ``fn``, for a composition root that wires a listener in code."""
    return ListenerSpec(name or f"{fn.__module__}.{fn.__qualname__}", tuple(event_types), fn, start, on_start)


class ListenerCommand(Event, name="ozzy.listener_command", version=1):
    """An operator's decision about a listener that stopped on an event: ``retry`` it (a fresh
    budget of tries) or ``skip`` the event at ``position`` (only if that is where it stopped). On
    every node, or only on ``node`` (a node id). The reader applies it itself, so a command
    reaches even a failed framework listener."""

    action: Literal["retry", "skip"]
    listener: str
    node: str | None = None
    position: int | None = None


def listeners_in(module_names: Iterable[str]) -> list[ListenerSpec]:
    """Every listener declared in the modules ``module_names`` (packages are walked)."""
    return list(marked(import_modules(module_names), MARK))
