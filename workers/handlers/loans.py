"""Handlers of the loan example: credit check → decision → one notification per decision.

Each is ordered by application (``ordered_by="application_id"``): the events of one application are
handled one at a time, in the log's order, while different applications run in parallel."""

from __future__ import annotations

from datetime import datetime, timezone

from services.loans.model import (
    DEFAULT_OFFER_TTL_SECONDS,
    OFFER_TTL_SETTING,
    CreditChecked,
    LoanApplication,
    LoanApplicationSubmitted,
    LoanApproved,
    LoanRejected,
    Notification,
    OfferExpired,
    credit_score,
)
from shared import PermanentError, UnitOfWork, handles, settings


def _application(uow: UnitOfWork, application_id: object) -> LoanApplication:
    app = uow.get(LoanApplication, application_id, for_update=True)
    if app is None:
        raise PermanentError(f"loan application {application_id} does not exist")
    return app


@handles(LoanApplicationSubmitted, name="loans.credit_check", max_retries=5, ordered_by="application_id")
def run_credit_check(event: LoanApplicationSubmitted, uow: UnitOfWork) -> None:
    """Ask the (simulated) credit bureau for a score and record it."""
    _application(uow, event.application_id).record_credit_check(credit_score(event.email, event.amount))


@handles(CreditChecked, name="loans.decide", max_retries=5, ordered_by="application_id")
def decide_application(event: CreditChecked, uow: UnitOfWork) -> None:
    """Approve (an offer open for the ``loans.offer_ttl_seconds`` in force now) or reject."""
    ttl = int(settings.get(OFFER_TTL_SETTING, DEFAULT_OFFER_TTL_SECONDS))
    _application(uow, event.application_id).decide(offer_ttl_seconds=ttl)


def _notify(uow: UnitOfWork, application_id: object, kind: str, subject: str) -> None:
    app = _application(uow, application_id)
    uow.add(
        Notification(
            application_id=app.id,
            kind=kind,
            recipient=app.email,
            subject=subject,
            sent_at=datetime.now(timezone.utc),
        )
    )


@handles(LoanApproved, name="loans.notify_approved", ordered_by="application_id")
def notify_approved(event: LoanApproved, uow: UnitOfWork) -> None:
    """Send the applicant the good news (simulated: one notification row)."""
    _notify(uow, event.application_id, "approved", f"Your loan of {event.amount:.2f} is approved")


@handles(LoanRejected, name="loans.notify_rejected", ordered_by="application_id")
def notify_rejected(event: LoanRejected, uow: UnitOfWork) -> None:
    """Tell the applicant why (simulated: one notification row)."""
    _notify(uow, event.application_id, "rejected", f"Your loan application was declined: {event.reason}")


@handles(OfferExpired, name="loans.notify_expired", ordered_by="application_id")
def notify_expired(event: OfferExpired, uow: UnitOfWork) -> None:
    """Tell the applicant the offer lapsed (simulated: one notification row)."""
    _notify(uow, event.application_id, "offer_expired", "Your loan offer has expired")
