"""Sagas (process managers): state that lives across events, deadlines, and an end.

A saga class declares its typed state (a pydantic model), its steps (methods decorated with
``@step(EventType, by="field")``: the event field whose value finds the instance; ``start=True`` on
the step that may create it), and what happens to an event for an instance that does not exist, or
no longer runs (``missing="ignore"`` or ``"park"``)::

    class LoanOffer(Saga[OfferState], name="loans.offer", state=OfferState):
        @step(LoanApproved, by="application_id", start=True)
        def offered(self, event: LoanApproved, ctx: SagaContext[OfferState]) -> None:
            ctx.state = OfferState(application_id=event.application_id)
            ctx.schedule_timeout(OfferExpired(application_id=event.application_id), at=event.offer_expires_at)

        @step(OfferExpired, by="application_id")
        def expired(self, event: OfferExpired, ctx: SagaContext[OfferState]) -> None:
            ...
            ctx.complete()

Each step is a handler (named ``<saga>.<step>``): the inbox, retries and dead letters apply
unchanged, and the composition root collects a saga class from ``OZZY_HANDLER_MODULES`` like a
``@handles`` function. A step runs in the handler's transaction with the instance row locked, so
steps of one instance never interleave and no update is lost. A timeout is a scheduled event named
after the instance (one per event type at a time); completing the saga cancels those still waiting.
A completed instance stays as history with its steps.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel

from shared.delivery.handlers import MARK, HandlerSpec
from shared.errors import HandlerError, SagaInstanceMissing
from shared.model.events import Event, current_cause
from shared.model.unit_of_work import UnitOfWork
from shared.workflows.instances import COMPLETED, SagaInstance, SagaStep

S = TypeVar("S", bound=BaseModel)
E = TypeVar("E", bound=Event)
Missing = Literal["ignore", "park"]
StepFn = Callable[[Any, Any, "SagaContext[Any]"], None]

_STEP = "__ozzy_saga_step__"


@dataclass(frozen=True)
class StepSpec:
    name: str
    event_type: type[Event]
    by: str
    start: bool
    fn: StepFn


def step(event_type: type[Event], *, by: str, start: bool = False, name: str | None = None) -> Callable[[StepFn], StepFn]:
    """Declare a saga method as the step that handles ``event_type``; ``by`` names the event field
    whose value is the instance's key; ``start`` lets this event create the instance. ``name``
    (default: the method's) is part of the handler's name: keep it stable."""
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise HandlerError(f"@step needs an Event subclass, got {event_type!r}")
    if by not in event_type.model_fields:
        raise HandlerError(f"@step({event_type.__name__}, by={by!r}): the event has no field {by!r}")

    def declare(fn: StepFn) -> StepFn:
        setattr(fn, _STEP, StepSpec(name or fn.__name__, event_type, by, start, fn))
        return fn

    return declare


def timeout_key(saga_name: str, instance_key: str, event_type: type[Event]) -> str:
    """The name under which an instance's timeout of ``event_type`` waits among the scheduled
    events: code outside the saga can cancel it with ``uow.cancel_scheduled(key=...)``."""
    return f"saga:{saga_name}:{instance_key}:{event_type.event_type}"


class SagaContext(Generic[S]):
    """What a step works with: the instance's state, the unit of work, timeouts, completion."""

    def __init__(self, saga: type[Saga[S]], instance: SagaInstance, uow: UnitOfWork) -> None:
        self._saga = saga
        self._instance = instance
        self.uow = uow
        self.key = instance.instance_key
        loaded = saga.state_model.model_validate(instance.state) if instance.state is not None else None
        self.state: S | None = loaded  # type: ignore[assignment]  # state_model is the class S stands for
        self.completed = False
        self._timeouts: list[dict[str, Any]] = list(instance.timeouts or [])

    def publish(self, event: Event) -> None:
        """Write ``event`` with this step's transaction."""
        self.uow.publish(event)

    def schedule_timeout(self, event: Event, *, at: datetime | None = None,
                         after: timedelta | float | None = None) -> uuid.UUID:
        """Deliver ``event`` to this instance at a time or after a delay, unless cancelled first.
        The event must carry the instance's key in the field its step finds it by. A timeout of the
        same event type still waiting is replaced."""
        key = self._timeout_key(type(event))
        event_id = self.uow.schedule(event, at=at, after=after, key=key, replace=True)
        due = at if at is not None else self.uow.now() + (after if isinstance(after, timedelta) else timedelta(seconds=after or 0))
        self._timeouts = [t for t in self._timeouts if t["key"] != key]
        self._timeouts.append({"key": key, "event_id": str(event_id), "type": event.event_type, "due_at": due.isoformat()})
        return event_id

    def cancel_timeout(self, event_type: type[Event]) -> bool:
        """Cancel this instance's waiting timeout of ``event_type``; True if one was waiting."""
        key = self._timeout_key(event_type)
        self._timeouts = [t for t in self._timeouts if t["key"] != key]
        return self.uow.cancel_scheduled(key=key)

    def cancel_timeouts(self) -> int:
        """Cancel every waiting timeout of this instance; return how many were waiting."""
        keys = [t["key"] for t in self._timeouts]
        self._timeouts = []
        return sum(self.uow.cancel_scheduled(key=k) for k in keys)

    def complete(self) -> None:
        """End the saga after this step: its waiting timeouts are cancelled, later events for it
        follow the ``missing`` policy, and the instance stays as history."""
        self.completed = True

    @property
    def timeouts(self) -> list[dict[str, Any]]:
        """This instance's waiting timeouts (key, event id, type, due time)."""
        return list(self._timeouts)

    def _timeout_key(self, event_type: type[Event]) -> str:
        return timeout_key(self._saga.saga_name, self.key, event_type)

    def _fired(self, event_id: uuid.UUID | None) -> None:
        self._timeouts = [t for t in self._timeouts if t["event_id"] != str(event_id)]


class Saga(Generic[S]):
    """Base of a saga class (see the module docstring)."""

    saga_name: ClassVar[str]
    state_model: ClassVar[type[BaseModel]]
    missing: ClassVar[Missing]
    step_specs: ClassVar[tuple[StepSpec, ...]]

    def __init_subclass__(cls, *, name: str, state: type[BaseModel], missing: Missing = "ignore",
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if missing not in ("ignore", "park"):
            raise HandlerError(f"saga {name!r}: missing must be 'ignore' or 'park'")
        cls.saga_name, cls.state_model, cls.missing = name, state, missing
        cls.step_specs = tuple(v.__dict__[_STEP] for v in cls.__dict__.values() if callable(v) and _STEP in vars(v))
        if not any(s.start for s in cls.step_specs):
            raise HandlerError(f"saga {name!r} needs a step with start=True")
        setattr(cls, MARK, tuple(_handler(cls, s) for s in cls.step_specs))


def _handler(saga: type[Saga[Any]], spec: StepSpec) -> HandlerSpec:
    def handle(event: Event, uow: UnitOfWork) -> None:
        run_step(saga, spec, event, uow)

    handle.__name__ = handle.__qualname__ = f"{saga.__name__}.{spec.fn.__name__}"
    handle.__module__ = saga.__module__
    name = f"{saga.saga_name}.{spec.name}"
    return HandlerSpec(name, spec.event_type, handle, name)


def run_step(saga: type[Saga[Any]], spec: StepSpec, event: Event, uow: UnitOfWork) -> None:
    """Find (or start) the instance, run the step with the row locked, save state and history."""
    key = str(getattr(event, spec.by))
    instance = uow.get(SagaInstance, (saga.saga_name, key), for_update=True)
    if instance is None and spec.start:
        instance = SagaInstance.begin(saga.saga_name, key)
        uow.add(instance)
    if instance is None or instance.status == COMPLETED:
        if saga.missing == "park":
            state = "no longer runs" if instance is not None else "does not exist"
            raise SagaInstanceMissing(f"saga {saga.saga_name} {key!r} {state}: {event.event_type} parked")
        return
    ctx: SagaContext[Any] = SagaContext(saga, instance, uow)
    ctx._fired(current_cause())
    spec.fn(saga(), event, ctx)
    _save(saga, spec, event, ctx, instance, uow)


def _save(saga: type[Saga[Any]], spec: StepSpec, event: Event, ctx: SagaContext[Any], instance: SagaInstance,
          uow: UnitOfWork) -> None:
    now = datetime.now(timezone.utc)
    if ctx.completed:
        ctx.cancel_timeouts()
        instance.status, instance.completed_at = COMPLETED, now
    instance.state = ctx.state.model_dump(mode="json") if ctx.state is not None else None
    instance.timeouts = ctx.timeouts
    instance.steps += 1
    instance.updated_at = now
    uow.add(SagaStep(saga_type=saga.saga_name, instance_key=instance.instance_key, seq=instance.steps,
                     step=spec.name, event_id=current_cause(), event_type=event.event_type,
                     status=instance.status, state=instance.state, at=now))


__all__ = ["Saga", "SagaContext", "step", "timeout_key"]
