"""Saga instances and their history, as rows: ``ozzy_sagas`` and ``ozzy_saga_steps``."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime, Integer, Text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from shared.model.aggregate import Aggregate
from shared.model.base import Base

RUNNING, COMPLETED = "running", "completed"


class SagaInstance(Aggregate):
    """One instance of a saga type, found by its key (the correlation field's value).

    A versioned aggregate: a step loads it with a row lock, so two events for one instance are
    handled one after the other and neither update is lost."""

    __tablename__ = "ozzy_sagas"
    aggregate_type = "ozzy.saga"

    saga_type: Mapped[str] = mapped_column(Text, primary_key=True)
    instance_key: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[str] = mapped_column(Text)
    state: Mapped[Any] = mapped_column(JSONB, nullable=True)
    #: Pending timeouts: ``[{"key", "event_id", "type", "due_at"}]``.
    timeouts: Mapped[Any] = mapped_column(JSONB)
    steps: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    @classmethod
    def begin(cls, saga_type: str, key: str) -> SagaInstance:
        now = datetime.now(timezone.utc)
        return cls(saga_type=saga_type, instance_key=key, status=RUNNING, state=None, timeouts=[], steps=0,
                   started_at=now, updated_at=now, completed_at=None)


class SagaStep(Base):
    """One handled event of one instance: which step ran, on which event, and the state after it."""

    __tablename__ = "ozzy_saga_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    saga_type: Mapped[str] = mapped_column(Text)
    instance_key: Mapped[str] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(Integer)
    step: Mapped[str] = mapped_column(Text)
    event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    event_type: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    state: Mapped[Any] = mapped_column(JSONB, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
