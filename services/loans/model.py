"""Loan applications: the aggregate, its events and the credit rules.

Flow: submitted → (credit check) credit_checked → (decision) approved | rejected → one notification.
An approval is an offer: the applicant accepts it (accepted) before ``offer_expires_at``, or it
expires (expired, one more notification). The ``loans.offer`` saga (:mod:`services.loans.offer`)
waits for one or the other.

The rules are deterministic so that anyone can predict an outcome:

* credit score = 300 + (first 8 hex digits of SHA-256 of ``"<lower-case e-mail>|<amount as 2-decimal
  string>"``, read as an integer) mod 551, so it lies in 300..850;
* approved when the score is at least 600 **and** the amount is at most ``score × 100``;
  otherwise rejected.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import DateTime, ForeignKey, Integer, Numeric, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared import Aggregate, Base, Event
from shared.workflows.sagas import timeout_key

SUBMITTED, CREDIT_CHECKED, APPROVED, REJECTED = "submitted", "credit_checked", "approved", "rejected"
ACCEPTED, EXPIRED = "accepted", "expired"
#: The runtime setting that says how long an offer waits, and its default (one week).
OFFER_TTL_SETTING, DEFAULT_OFFER_TTL_SECONDS = "loans.offer_ttl_seconds", 604800
MIN_APPROVED_SCORE = 600
AMOUNT_PER_SCORE_POINT = Decimal(100)


class LoanApplicationSubmitted(Event, name="loans.application_submitted", version=1):
    application_id: uuid.UUID
    applicant_name: str
    email: str
    amount: Decimal


class CreditChecked(Event, name="loans.credit_checked", version=1):
    application_id: uuid.UUID
    score: int


class LoanApproved(Event, name="loans.approved", version=1):
    application_id: uuid.UUID
    amount: Decimal
    score: int
    #: When the offer lapses unless accepted (absent from approvals made before offers expired).
    offer_expires_at: datetime | None = None


class LoanRejected(Event, name="loans.rejected", version=1):
    application_id: uuid.UUID
    score: int
    reason: str


class OfferAccepted(Event, name="loans.offer_accepted", version=1):
    application_id: uuid.UUID


class OfferDeadlineReached(Event, name="loans.offer_deadline_reached", version=1):
    """The offer's timeout: scheduled by the saga for ``offer_expires_at``."""

    application_id: uuid.UUID


class OfferExpired(Event, name="loans.offer_expired", version=1):
    application_id: uuid.UUID


#: The saga that waits for an offer's acceptance (workers/handlers/loan_offers.py).
OFFER_SAGA = "loans.offer"


def offer_deadline_key(application_id: uuid.UUID) -> str:
    """The scheduled-event name of an offer's deadline (so accepting can cancel it)."""
    return timeout_key(OFFER_SAGA, str(application_id), OfferDeadlineReached)


class OfferNotAcceptable(Exception):
    """The application is not an open offer (rejected, expired, accepted, or not decided yet)."""


def credit_score(email: str, amount: Decimal) -> int:
    """The simulated credit bureau's score for an application (see the module docstring)."""
    digest = hashlib.sha256(f"{email.lower()}|{amount:.2f}".encode()).hexdigest()
    return 300 + int(digest[:8], 16) % 551


def decide(score: int, amount: Decimal) -> tuple[bool, str]:
    """(approved?, reason) for a scored application."""
    if score < MIN_APPROVED_SCORE:
        return False, f"credit score {score} is below {MIN_APPROVED_SCORE}"
    limit = score * AMOUNT_PER_SCORE_POINT
    if amount > limit:
        return False, f"amount {amount:.2f} exceeds the limit {limit:.2f} for score {score}"
    return True, "approved"


class LoanApplication(Aggregate):
    __tablename__ = "loan_applications"
    aggregate_type = "loans.application"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    applicant_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    status: Mapped[str] = mapped_column(String(20))
    credit_score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    offer_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    @classmethod
    def submit(cls, applicant_name: str, email: str, amount: Decimal) -> LoanApplication:
        app = cls(
            id=uuid.uuid4(),
            applicant_name=applicant_name,
            email=email,
            amount=amount,
            status=SUBMITTED,
            submitted_at=datetime.now(timezone.utc),
        )
        app.record(
            LoanApplicationSubmitted(application_id=app.id, applicant_name=applicant_name, email=email, amount=amount)
        )
        return app

    def record_credit_check(self, score: int) -> None:
        if self.status != SUBMITTED:
            return  # already checked: a replayed event changes nothing
        self.credit_score = score
        self.status = CREDIT_CHECKED
        self.record(CreditChecked(application_id=self.id, score=score))

    def decide(self, offer_ttl_seconds: int = DEFAULT_OFFER_TTL_SECONDS) -> None:
        """Approve (an offer open for ``offer_ttl_seconds``) or reject, by the documented rule."""
        if self.status != CREDIT_CHECKED or self.credit_score is None:
            return
        approved, reason = decide(self.credit_score, self.amount)
        self.status = APPROVED if approved else REJECTED
        self.decided_at = datetime.now(timezone.utc)
        if approved:
            self.offer_expires_at = self.decided_at + timedelta(seconds=offer_ttl_seconds)
            self.record(LoanApproved(application_id=self.id, amount=self.amount, score=self.credit_score,
                                     offer_expires_at=self.offer_expires_at))
        else:
            self.record(LoanRejected(application_id=self.id, score=self.credit_score, reason=reason))


    def accept(self, now: datetime) -> None:
        """The applicant takes the offer: only an approved application whose offer is still open."""
        if self.status != APPROVED or self.offer_expires_at is None or now >= self.offer_expires_at:
            raise OfferNotAcceptable(f"the application is {self.status}" if self.status != APPROVED
                                     else "the offer has expired")
        self.status = ACCEPTED
        self.record(OfferAccepted(application_id=self.id))

    def expire(self) -> None:
        """The offer lapsed: an approved application that was not accepted becomes expired."""
        if self.status != APPROVED:
            return  # accepted in time (or already expired): nothing to do
        self.status = EXPIRED
        self.record(OfferExpired(application_id=self.id))


class Notification(Base):
    """A simulated e-mail to the applicant; exactly one per decision."""

    __tablename__ = "loan_notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    application_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("loan_applications.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
