"""The loan example's rules, aggregate, use cases and handlers, unit-tested with shared.testing."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from services.loans.model import (
    APPROVED,
    CREDIT_CHECKED,
    REJECTED,
    SUBMITTED,
    CreditChecked,
    LoanApplication,
    LoanApplicationSubmitted,
    LoanApproved,
    LoanRejected,
    Notification,
    credit_score,
    decide,
)
from services.loans.use_cases import application_view, submit_application
from shared import PermanentError
from shared.testing import InMemoryStore
from workers.handlers.loans import decide_application, notify_approved, notify_rejected, run_credit_check

HANDLERS = [run_credit_check, decide_application, notify_approved, notify_rejected]


def _first(kind: bool) -> tuple[str, Decimal, int]:
    """An (e-mail, amount, score) that the rules approve (kind=True) or reject (kind=False)."""
    for n in range(1000):
        email, amount = f"applicant{n}@example.com", Decimal(500)
        score = credit_score(email, amount)
        if decide(score, amount)[0] is kind:
            return email, amount, score
    raise AssertionError("no such applicant in 1000 tries")


# --- the rules ----------------------------------------------------------------------------------

def test_the_credit_score_is_the_documented_hash_in_300_to_850() -> None:
    import hashlib

    digest = hashlib.sha256(b"ada@example.com|1500.00").hexdigest()
    assert credit_score("Ada@Example.com", Decimal("1500")) == 300 + int(digest[:8], 16) % 551
    assert all(300 <= credit_score(f"x{i}@example.com", Decimal(i + 1)) <= 850 for i in range(200))


@pytest.mark.parametrize(
    ("score", "amount", "approved"),
    [(599, Decimal(1), False), (600, Decimal(60000), True), (600, Decimal("60000.01"), False), (850, Decimal(85000), True)],
)
def test_decide_needs_a_score_of_600_and_an_amount_up_to_100_per_point(score: int, amount: Decimal, approved: bool) -> None:
    ok, reason = decide(score, amount)
    assert ok is approved
    assert reason == "approved" if approved else str(score) in reason


# --- the aggregate ------------------------------------------------------------------------------

def test_an_application_goes_submitted_checked_decided_and_records_each_step() -> None:
    email, amount, score = _first(True)
    app = LoanApplication.submit("Ada", email, amount)
    assert app.status == SUBMITTED
    app.record_credit_check(score)
    assert (app.status, app.credit_score) == (CREDIT_CHECKED, score)
    app.decide()
    assert app.status == APPROVED and app.decided_at is not None
    events = [e for _, e in app.pending_events()]
    assert [type(e) for e in events] == [LoanApplicationSubmitted, CreditChecked, LoanApproved]


def test_a_replayed_step_changes_nothing() -> None:
    email, amount, score = _first(False)
    app = LoanApplication.submit("Ada", email, amount)
    app.record_credit_check(score)
    app.decide()
    recorded = len(app.pending_events())
    app.record_credit_check(score + 1)
    app.decide()
    assert (app.status, app.credit_score, len(app.pending_events())) == (REJECTED, score, recorded)


# --- use cases and handlers, on the in-memory store -----------------------------------------------

@pytest.mark.parametrize("approved", [True, False])
def test_an_application_is_checked_decided_and_notified_exactly_once(approved: bool) -> None:
    # Given a submitted application
    email, amount, score = _first(approved)
    store = InMemoryStore()
    with store.unit_of_work() as uow:
        application_id = submit_application(uow, "Ada Lovelace", email, amount)
    # When every loan handler runs until nothing is left
    assert store.run_until_idle(HANDLERS) == 3
    # Then the decision follows the rule and exactly one notification of that kind was sent
    app = store.get(LoanApplication, application_id)
    assert app is not None and app.status == (APPROVED if approved else REJECTED) and app.credit_score == score
    assert [n.kind for n in store.all(Notification, application_id=application_id)] == [app.status]
    decided = LoanApproved if approved else LoanRejected
    assert [type(e) for e in store.events()] == [LoanApplicationSubmitted, CreditChecked, decided]
    assert app.version == 3  # submitted, checked, decided


def test_the_view_shows_the_application_and_its_notifications() -> None:
    email, amount, _ = _first(True)
    store = InMemoryStore()
    with store.unit_of_work() as uow:
        application_id = submit_application(uow, "Ada", email, amount)
    store.run_until_idle(HANDLERS)
    with store.unit_of_work() as uow:
        view = application_view(uow, application_id)
        assert application_view(uow, uuid.uuid4()) is None
    assert view is not None and view["status"] == APPROVED and view["amount"] == 500.0
    assert [n["kind"] for n in view["notifications"]] == ["approved"]


def test_each_handler_alone() -> None:
    email, amount, score = _first(True)
    store = InMemoryStore()
    with store.unit_of_work() as uow:
        application_id = submit_application(uow, "Ada", email, amount)
    (submitted,) = store.events()
    assert store.handle(run_credit_check, submitted) == [CreditChecked(application_id=application_id, score=score)]
    (approved,) = store.handle(decide_application, store.events(CreditChecked)[0])
    assert isinstance(approved, LoanApproved) and approved.amount == amount
    assert store.handle(notify_approved, approved) == []
    (note,) = store.all(Notification)
    assert (note.kind, note.recipient) == ("approved", email) and "500.00" in note.subject


def test_a_handler_for_an_unknown_application_fails_permanently() -> None:
    store = InMemoryStore()
    with pytest.raises(PermanentError, match="does not exist"):
        store.handle(decide_application, CreditChecked(application_id=uuid.uuid4(), score=700))
    with pytest.raises(PermanentError):
        store.handle(notify_rejected, LoanRejected(application_id=uuid.uuid4(), score=1, reason="r"))


# --- offers that expire: the loans.offer saga ------------------------------------------------------

from services.loans.model import ACCEPTED, EXPIRED, OfferNotAcceptable  # noqa: E402
from services.loans.use_cases import accept_offer  # noqa: E402
from workers.handlers.loan_offers import LoanOffer  # noqa: E402
from workers.handlers.loans import notify_expired  # noqa: E402

OFFER_HANDLERS = [*HANDLERS, LoanOffer, notify_expired]


def _approved(store: InMemoryStore) -> uuid.UUID:
    email, amount, _ = _first(True)
    with store.unit_of_work() as uow:
        application_id = submit_application(uow, "Ada", email, amount)
    store.run_until_idle(OFFER_HANDLERS)
    return application_id


def test_an_offer_not_accepted_in_time_expires_with_one_more_notification() -> None:
    store = InMemoryStore(settings={"loans.offer_ttl_seconds": 120})
    application_id = _approved(store)
    app = store.get(LoanApplication, application_id)
    assert app is not None and app.offer_expires_at is not None
    assert (app.offer_expires_at - app.decided_at).total_seconds() == 120  # type: ignore[operator]
    assert store.advance(119) == 0
    assert store.advance(1) == 1
    store.run_until_idle(OFFER_HANDLERS)
    assert store.get(LoanApplication, application_id).status == EXPIRED  # type: ignore[union-attr]
    assert [n.kind for n in store.all(Notification, application_id=application_id)] == ["approved", "offer_expired"]
    with pytest.raises(OfferNotAcceptable), store.unit_of_work() as uow:
        accept_offer(uow, application_id)


def test_an_accepted_offer_cancels_its_deadline_and_gets_no_more_notifications() -> None:
    store = InMemoryStore(settings={"loans.offer_ttl_seconds": 60})
    application_id = _approved(store)
    with store.unit_of_work() as uow:
        accept_offer(uow, application_id)
    assert store.scheduled() == []
    store.run_until_idle(OFFER_HANDLERS)
    assert store.advance(3600) == 0
    app = store.get(LoanApplication, application_id)
    assert app is not None and app.status == ACCEPTED
    assert [n.kind for n in store.all(Notification, application_id=application_id)] == ["approved"]
    with pytest.raises(OfferNotAcceptable, match="accepted"), store.unit_of_work() as uow:
        accept_offer(uow, application_id)


def test_the_ttl_in_force_when_the_offer_is_made_applies() -> None:
    store = InMemoryStore(settings={"loans.offer_ttl_seconds": 30})
    first = _approved(store)
    store.values.settings_by_key["loans.offer_ttl_seconds"] = 300
    second = _approved(store)
    assert [round((e.offer_expires_at - store.get(LoanApplication, e.application_id).decided_at).total_seconds())  # type: ignore[union-attr,operator]
            for e in store.events(LoanApproved)] == [30, 300]
    assert store.advance(31) == 1
    store.run_until_idle(OFFER_HANDLERS)
    assert [store.get(LoanApplication, i).status for i in (first, second)] == [EXPIRED, APPROVED]  # type: ignore[union-attr]


def test_rejected_or_undecided_applications_cannot_be_accepted() -> None:
    email, amount, _ = _first(False)
    store = InMemoryStore()
    with store.unit_of_work() as uow:
        application_id = submit_application(uow, "Ada", email, amount)
    with pytest.raises(OfferNotAcceptable, match="submitted"), store.unit_of_work() as uow:
        accept_offer(uow, application_id)
    store.run_until_idle(OFFER_HANDLERS)
    with pytest.raises(OfferNotAcceptable, match="rejected"), store.unit_of_work() as uow:
        accept_offer(uow, application_id)
