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
