"""ORM mappings of the framework's tables for the back office (the pipeline itself uses Core)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, foreign, relationship

from shared.db.tables import deliveries, nodes, outbox, recurring_jobs, scheduled


class AdminBase(DeclarativeBase):
    """A registry of its own, so these read mappings never mix with application tables."""


class OutboxEvent(AdminBase):
    __table__ = outbox
    # "metadata" is reserved on declarative classes
    __mapper_args__ = {"properties": {"metadata_": outbox.c.metadata}, "exclude_properties": ["metadata"]}

    def __str__(self) -> str:
        return f"{self.event_type} #{self.id}"


class Delivery(AdminBase):
    __table__ = deliveries

    event = relationship(
        OutboxEvent,
        primaryjoin=foreign(deliveries.c.event_id) == outbox.c.event_id,
        lazy="joined",
        viewonly=True,
        uselist=False,
    )

    def __str__(self) -> str:
        return f"{self.handler} / {self.event_id}"


class NodeRow(AdminBase):
    __table__ = nodes


class ScheduledRow(AdminBase):
    __table__ = scheduled
    __mapper_args__ = {"properties": {"metadata_": scheduled.c.metadata}, "exclude_properties": ["metadata"]}

    def __str__(self) -> str:
        return f"{self.event_type} due {self.due_at:%Y-%m-%d %H:%M:%S}"


class RecurringRow(AdminBase):
    __table__ = recurring_jobs

    def __str__(self) -> str:
        return self.name
