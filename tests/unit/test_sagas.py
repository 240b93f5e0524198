"""Sagas on the in-memory store: start, steps, timeouts, completion, the missing policy."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from shared import Event, HandlerError, Saga, SagaContext, SagaInstanceMissing, step
from shared.delivery.handlers import HandlerRegistry
from shared.testing import InMemoryStore
from shared.workflows.instances import SagaInstance, SagaStep


class OrderPlaced(Event, name="sagatest.order_placed"):
    order_id: uuid.UUID


class PaymentReceived(Event, name="sagatest.payment_received"):
    order_id: uuid.UUID
    amount: int


class PaymentDue(Event, name="sagatest.payment_due"):
    order_id: uuid.UUID


class OrderCancelled(Event, name="sagatest.order_cancelled"):
    order_id: uuid.UUID


class Paid(BaseModel):
    order_id: uuid.UUID
    received: int = 0


class Payment(Saga[Paid], name="sagatest.payment", state=Paid, missing="ignore"):
    @step(OrderPlaced, by="order_id", start=True)
    def placed(self, event: OrderPlaced, ctx: SagaContext[Paid]) -> None:
        ctx.state = Paid(order_id=event.order_id)
        ctx.schedule_timeout(PaymentDue(order_id=event.order_id), after=3600)

    @step(PaymentReceived, by="order_id")
    def received(self, event: PaymentReceived, ctx: SagaContext[Paid]) -> None:
        assert ctx.state is not None
        ctx.state.received += event.amount
        if ctx.state.received >= 100:
            ctx.complete()

    @step(PaymentDue, by="order_id")
    def due(self, event: PaymentDue, ctx: SagaContext[Paid]) -> None:
        ctx.publish(OrderCancelled(order_id=event.order_id))
        ctx.complete()


class Strict(Saga[Paid], name="sagatest.strict", state=Paid, missing="park"):
    @step(OrderPlaced, by="order_id", start=True)
    def placed(self, event: OrderPlaced, ctx: SagaContext[Paid]) -> None:
        ctx.state = Paid(order_id=event.order_id)

    @step(PaymentReceived, by="order_id")
    def received(self, event: PaymentReceived, ctx: SagaContext[Paid]) -> None:
        ctx.complete()


def _instance(store: InMemoryStore, saga: type[Saga[Paid]], order_id: uuid.UUID) -> SagaInstance | None:
    return store.get(SagaInstance, (saga.saga_name, str(order_id)))


def test_a_saga_is_one_handler_per_step_with_stable_names() -> None:
    registry = HandlerRegistry([Payment])
    assert sorted(registry) == ["sagatest.payment.due", "sagatest.payment.placed", "sagatest.payment.received"]
    assert registry["sagatest.payment.received"].event_type is PaymentReceived


def test_state_survives_between_events_and_completion_cancels_the_timeout() -> None:
    store = InMemoryStore()
    order = uuid.uuid4()
    store.publish(OrderPlaced(order_id=order), PaymentReceived(order_id=order, amount=60))
    store.run_until_idle([Payment])
    instance = _instance(store, Payment, order)
    assert instance is not None and instance.status == "running" and instance.state["received"] == 60
    assert [type(e) for _, e in store.scheduled()] == [PaymentDue] and len(instance.timeouts) == 1
    store.publish(PaymentReceived(order_id=order, amount=40))
    store.run_until_idle([Payment])
    instance = _instance(store, Payment, order)
    assert instance is not None and instance.status == "completed" and instance.state["received"] == 100
    assert store.scheduled() == [] and instance.timeouts == []
    assert store.advance(7200) == 0  # the cancelled timeout never fires
    history = store.all(SagaStep, saga_type="sagatest.payment", instance_key=str(order))
    assert [(s.seq, s.step, s.status) for s in history] == [(1, "placed", "running"), (2, "received", "running"),
                                                          (3, "received", "completed")]


def test_a_timeout_fires_once_into_its_instance_and_events_after_completion_are_ignored() -> None:
    store = InMemoryStore()
    order = uuid.uuid4()
    store.publish(OrderPlaced(order_id=order))
    store.run_until_idle([Payment])
    assert store.advance(3600) == 1
    store.run_until_idle([Payment])
    assert [type(e) for e in store.events()] == [OrderPlaced, PaymentDue, OrderCancelled]
    instance = _instance(store, Payment, order)
    assert instance is not None and instance.status == "completed"
    store.publish(PaymentReceived(order_id=order, amount=100))  # too late: ignored
    assert store.run_until_idle([Payment]) == 1
    assert _instance(store, Payment, order).steps == 2  # type: ignore[union-attr]


def test_an_event_for_no_instance_is_ignored_or_parked_as_declared() -> None:
    store = InMemoryStore()
    store.publish(PaymentReceived(order_id=uuid.uuid4(), amount=1))
    assert store.run_until_idle([Payment]) == 1 and store.all(SagaInstance) == []
    with pytest.raises(SagaInstanceMissing):
        store.run_until_idle([Strict])


def test_declarations_are_checked() -> None:
    with pytest.raises(HandlerError, match="start=True"):
        class NoStart(Saga[Paid], name="sagatest.nostart", state=Paid):
            @step(PaymentReceived, by="order_id")
            def received(self, event: PaymentReceived, ctx: SagaContext[Paid]) -> None: ...
    with pytest.raises(HandlerError, match="no field"):
        step(PaymentReceived, by="nope")
