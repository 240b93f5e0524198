"""Sagas on PostgreSQL and Redis: no lost update under concurrent events for one instance, and the
loan offer example (accept in time, or expire once), through HTTP, the relay and the handlers."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest
from pydantic import BaseModel

from services.app import create_app
from shared import Saga, SagaContext, step
from shared.delivery.relay import Relay
from shared.testing.pipeline import run_until_idle
from shared.workflows.instances import SagaInstance
from tests.domain import AccountOpened, DepositAudited
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until
from workers.handlers.loan_offers import LoanOffer

LOANS = ["loans.credit_check", "loans.decide", "loans.notify_approved", "loans.notify_rejected", "loans.notify_expired"]


class Tally(BaseModel):
    count: int = 0
    total: Decimal = Decimal(0)


class Audits(Saga[Tally], name="sagatest.audits", state=Tally):
    @step(AccountOpened, by="account_id", start=True)
    def opened(self, event: AccountOpened, ctx: SagaContext[Tally]) -> None:
        ctx.state = Tally()

    @step(DepositAudited, by="account_id")
    def audited(self, event: DepositAudited, ctx: SagaContext[Tally]) -> None:
        assert ctx.state is not None
        ctx.state.count += 1
        ctx.state.total += event.amount


def test_two_hundred_concurrent_events_for_one_instance_lose_no_update(clean_db) -> None:
    # Given a started instance and 200 events for it, handled by a worker with 8 threads
    runtime = make_runtime(clean_db, handlers=[Audits], worker_idle_ms=100)
    account = uuid.uuid4()
    try:
        with runtime.unit_of_work() as uow:
            uow.publish(AccountOpened(account_id=account, owner="ada"))
            uow.commit()
        run_until_idle(runtime)
        with runtime.unit_of_work() as uow:
            for i in range(200):
                uow.publish(DepositAudited(account_id=account, amount=Decimal(i)))
            uow.commit()
        relay = Relay(runtime)
        with running_worker(runtime, threads=8):
            relay.drain()
            wait_until(lambda: scalar(runtime, "SELECT steps FROM ozzy_sagas") == 201, timeout=120)
        # Then every event counted once, in one row, one version per step
        with runtime.unit_of_work() as uow:
            instance = uow.get(SagaInstance, ("sagatest.audits", str(account)))
            assert instance is not None
            assert instance.state == {"count": 200, "total": str(sum(range(200)))} and instance.version == 201
        assert scalar(runtime, "SELECT count(*) FROM ozzy_saga_steps") == 201
        assert scalar(runtime, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'") == 201
    finally:
        runtime.close()


@pytest.fixture
def offers(clean_db):
    runtime = make_runtime(clean_db, handlers=[*LOANS, LoanOffer])
    yield runtime
    runtime.close()


def _set_ttl(client, seconds: int) -> None:
    from shared.ops.accounts import create_token, create_user

    app = client.application
    rt = app.extensions["ozzy"]
    with rt.session_factory() as session:
        user = create_user(session, f"ops-{uuid.uuid4().hex[:6]}", "correct horse battery")
        _, secret = create_token(session, user, "tests")
        session.commit()
    response = client.put("/api/settings/loans.offer_ttl_seconds", headers={"Authorization": f"Bearer {secret}"},
                          json={"value": seconds, "type": "integer"})
    assert response.status_code == 200, response.get_json()


def _submit(client, email: str, amount: int = 500) -> str:
    from services.loans.model import credit_score, decide

    assert decide(credit_score(email, Decimal(amount)), Decimal(amount))[0], "pick an applicant the rule approves"
    return client.post("/loan-applications", json={"applicant_name": "Ada", "email": email, "amount": amount}).get_json()["id"]


def _approved_email(n: int) -> str:
    from services.loans.model import credit_score, decide

    found = [e for e in (f"offer{k}@example.com" for k in range(500)) if decide(credit_score(e, Decimal(500)), Decimal(500))[0]]
    return found[n]


def test_an_offer_accepted_in_time_then_one_left_to_expire(offers) -> None:
    client = create_app(offers).test_client()
    _set_ttl(client, 2)
    accepted, lapsed = _submit(client, _approved_email(0)), _submit(client, _approved_email(1))
    run_until_idle(offers)
    views = {i: client.get(f"/loan-applications/{i}").get_json() for i in (accepted, lapsed)}
    assert all(v["status"] == "approved" and v["offer_expires_at"] for v in views.values())
    # When one is accepted in time
    response = client.post(f"/loan-applications/{accepted}/accept")
    assert response.status_code == 200 and response.get_json() == {"id": accepted, "status": "accepted"}
    assert client.post(f"/loan-applications/{accepted}/accept").status_code == 409
    # and the other's deadline passes
    wait_until(lambda: run_until_idle(offers) >= 0 and
               client.get(f"/loan-applications/{lapsed}").get_json()["status"] == "expired", timeout=30)
    time.sleep(2.5)
    run_until_idle(offers)
    # Then the accepted one got no further notification and its deadline never fired
    assert [n["kind"] for n in client.get(f"/loan-applications/{accepted}").get_json()["notifications"]] == ["approved"]
    assert [n["kind"] for n in client.get(f"/loan-applications/{lapsed}").get_json()["notifications"]] == [
        "approved", "offer_expired"]
    assert scalar(offers, "SELECT string_agg(status, ',' ORDER BY status) FROM ozzy_scheduled") == "cancelled,fired"
    assert scalar(offers, "SELECT count(*) FROM ozzy_sagas WHERE status = 'completed'") == 2
    conflict = client.post(f"/loan-applications/{lapsed}/accept")
    assert conflict.status_code == 409 and conflict.get_json()["error"]["code"] == "conflict"
    assert client.post(f"/loan-applications/{uuid.uuid4()}/accept").status_code == 404
    assert client.post("/loan-applications/not-a-uuid/accept").status_code == 404


def test_acceptance_racing_the_deadline_ends_accepted_or_expired_never_both(offers) -> None:
    client = create_app(offers).test_client()
    _set_ttl(client, 2)
    ids = [_submit(client, _approved_email(n)) for n in range(12)]
    run_until_idle(offers)
    deadline = min(client.get(f"/loan-applications/{i}").get_json()["offer_expires_at"] for i in ids)
    # When the acceptances are sent around the deadline while a relay fires timers
    relay = Relay(offers)
    relay.start()
    try:
        from datetime import datetime, timezone

        pause = (datetime.fromisoformat(deadline) - datetime.now(timezone.utc)).total_seconds() - 0.05
        time.sleep(max(0.0, pause))
        codes = {i: client.post(f"/loan-applications/{i}/accept").status_code for i in ids}
        time.sleep(1)
        run_until_idle(offers)
    finally:
        relay.stop()
    run_until_idle(offers)
    # Then each ends in exactly one state with the notifications of that state only
    for i in ids:
        view = client.get(f"/loan-applications/{i}").get_json()
        kinds = [n["kind"] for n in view["notifications"]]
        if codes[i] == 200:
            assert view["status"] == "accepted" and kinds == ["approved"], (codes[i], view)
        else:
            assert codes[i] == 409 and view["status"] == "expired" and kinds == ["approved", "offer_expired"], view
    assert scalar(offers, "SELECT count(*) FROM ozzy_sagas WHERE status = 'completed'") == 12
