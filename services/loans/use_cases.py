"""Use cases of the loan example, written against the unit of work only (no HTTP here)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from datetime import datetime, timezone

from services.loans.model import LoanApplication, Notification, offer_deadline_key
from shared import UnitOfWork


def submit_application(uow: UnitOfWork, applicant_name: str, email: str, amount: Decimal) -> uuid.UUID:
    """Save a new application and its ``LoanApplicationSubmitted`` event in one transaction."""
    application = LoanApplication.submit(applicant_name, email, amount)
    uow.add(application)
    uow.commit()
    return application.id


class UnknownApplication(LookupError):
    """No loan application has this id."""


def accept_offer(uow: UnitOfWork, application_id: uuid.UUID) -> None:
    """The applicant accepts the offer: ``OfferNotAcceptable`` unless it is approved and still open.

    The saga's deadline is cancelled in this same transaction, so an accepted offer's deadline
    never fires; if the saga has not scheduled it yet, it finds the application accepted and
    schedules nothing."""
    app = uow.get(LoanApplication, application_id, for_update=True)
    if app is None:
        raise UnknownApplication(str(application_id))
    app.accept(datetime.now(timezone.utc))
    uow.cancel_scheduled(key=offer_deadline_key(application_id))
    uow.commit()


def application_view(uow: UnitOfWork, application_id: uuid.UUID) -> dict[str, Any] | None:
    """The application as the API shows it, with its notifications; None if unknown."""
    app = uow.get(LoanApplication, application_id)
    if app is None:
        return None
    notes = uow.all(Notification, application_id=application_id)
    return {
        "id": str(app.id),
        "applicant_name": app.applicant_name,
        "email": app.email,
        "amount": float(app.amount),
        "status": app.status,
        "credit_score": app.credit_score,
        "submitted_at": app.submitted_at.isoformat(),
        "decided_at": app.decided_at.isoformat() if app.decided_at else None,
        "offer_expires_at": app.offer_expires_at.isoformat() if app.offer_expires_at else None,
        "notifications": [
            {"kind": n.kind, "recipient": n.recipient, "subject": n.subject, "sent_at": n.sent_at.isoformat()}
            for n in notes
        ],
    }
