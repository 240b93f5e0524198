"""The loan offer saga: an approval waits for the applicant's acceptance, or expires at its deadline.

Started by ``LoanApproved``; the timeout is ``OfferDeadlineReached``, scheduled for the offer's
``offer_expires_at`` (computed at the decision from the ``loans.offer_ttl_seconds`` setting then in
force). Accepting the offer (``POST /loan-applications/<id>/accept``) cancels the timeout in its own
transaction and publishes ``OfferAccepted``, which ends the saga. If the deadline comes first, the
application expires, and ``loans.notify_expired`` sends the one last notification.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel

from services.loans.model import (
    APPROVED,
    OFFER_SAGA,
    LoanApplication,
    LoanApproved,
    OfferAccepted,
    OfferDeadlineReached,
)
from shared import Saga, SagaContext, step


class OfferState(BaseModel):
    application_id: uuid.UUID
    expires_at: datetime | None = None
    outcome: str | None = None


class LoanOffer(Saga[OfferState], name=OFFER_SAGA, state=OfferState, missing="ignore"):
    """Waits for the applicant to accept an approved application, or expires the offer."""

    @step(LoanApproved, by="application_id", start=True)
    def offered(self, event: LoanApproved, ctx: SagaContext[OfferState]) -> None:
        ctx.state = OfferState(application_id=event.application_id, expires_at=event.offer_expires_at)
        app = ctx.uow.get(LoanApplication, event.application_id, for_update=True)
        if app is None or app.status != APPROVED or event.offer_expires_at is None:
            # accepted before this step ran (or an approval from before offers expired)
            ctx.state.outcome = app.status if app is not None else "gone"
            ctx.complete()
            return
        ctx.schedule_timeout(OfferDeadlineReached(application_id=event.application_id), at=event.offer_expires_at)

    @step(OfferAccepted, by="application_id")
    def accepted(self, event: OfferAccepted, ctx: SagaContext[OfferState]) -> None:
        assert ctx.state is not None
        ctx.state.outcome = "accepted"
        ctx.complete()  # cancels the deadline, if the acceptance had not already

    @step(OfferDeadlineReached, by="application_id")
    def deadline(self, event: OfferDeadlineReached, ctx: SagaContext[OfferState]) -> None:
        assert ctx.state is not None
        app = ctx.uow.get(LoanApplication, event.application_id, for_update=True)
        if app is not None:
            app.expire()  # no-op if the applicant accepted meanwhile
            ctx.state.outcome = app.status
        ctx.complete()
