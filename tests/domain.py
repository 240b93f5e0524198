"""A small domain used by the framework's own tests: accounts that receive deposits."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone
from decimal import Decimal

from pydantic import BaseModel
from sqlalchemy import DateTime, ForeignKey, Numeric, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared import Aggregate, Base, Event


class Currency(enum.Enum):
    EUR = "EUR"
    USD = "USD"


class Money(BaseModel, frozen=True):
    amount: Decimal
    currency: Currency


class AccountOpened(Event, name="test.account_opened", version=1):
    account_id: uuid.UUID
    owner: str


class Deposited(Event, name="test.deposited", version=1):
    account_id: uuid.UUID
    money: Money
    at: datetime


class DepositAudited(Event, name="test.deposit_audited", version=1):
    account_id: uuid.UUID
    amount: Decimal


class Account(Aggregate):
    __tablename__ = "test_accounts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(100))
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal("0"))

    @classmethod
    def open(cls, owner: str) -> Account:
        account = cls(id=uuid.uuid4(), owner=owner, balance=Decimal("0"))
        account.record(AccountOpened(account_id=account.id, owner=owner))
        return account

    def deposit(self, amount: Decimal, at: datetime) -> None:
        self.balance += amount
        self.record(Deposited(account_id=self.id, money=Money(amount=amount, currency=Currency.EUR), at=at))


class SideEffect(Base):
    """One row per (handler, event) a test handler ran for: counts prove effects happen once."""

    __tablename__ = "test_side_effects"

    id: Mapped[int] = mapped_column(primary_key=True)
    handler: Mapped[str] = mapped_column(Text)
    event_key: Mapped[str] = mapped_column(Text)
    account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("test_accounts.id"), nullable=True)


class Sighting(Base):
    """One row per (process, event) a cluster-wide test listener saw; ``id`` order is the order seen."""

    __tablename__ = "test_sightings"

    id: Mapped[int] = mapped_column(primary_key=True)
    node: Mapped[str] = mapped_column(Text)
    event_id: Mapped[uuid.UUID]
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(timezone.utc))
