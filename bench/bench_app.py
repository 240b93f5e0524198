"""The benchmark's own domain: items whose creation is an event, and one idempotent handler.

Loaded by ``bench/pipeline.py`` in-process and by the ``ozzy relay`` / ``ozzy worker`` processes it
starts (``OZZY_HANDLER_MODULES='["bench.bench_app"]'``). Nothing here connects to anything.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import Uuid

from shared import Aggregate, Base, Event, UnitOfWork, handles


class ItemCreated(Event, name="bench.item_created", version=1):
    item_id: uuid.UUID
    name: str
    seq: int


class BenchItem(Aggregate):
    """The business row of the benchmark's unit of work."""

    __tablename__ = "bench_items"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    seq: Mapped[int] = mapped_column(Integer)

    @classmethod
    def create(cls, name: str, seq: int, *, record: bool = True) -> BenchItem:
        item = cls(id=uuid.uuid4(), name=name, seq=seq, version=1)
        if record:
            item.record(ItemCreated(item_id=item.id, name=name, seq=seq))
        return item


class BenchEffect(Base):
    """One row per handled event: ``started_at`` is the wall-clock time the handler body began."""

    __tablename__ = "bench_effects"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    seq: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)


HANDLER_NAME = "bench.record_item"


@handles(ItemCreated, name=HANDLER_NAME, max_retries=3, min_backoff=100, max_backoff=1000)
def record_item(event: ItemCreated, uow: UnitOfWork) -> None:
    """Writes one row. Idempotent through the framework: it commits with the inbox record."""
    started = time.time()
    uow.add(BenchEffect(item_id=event.item_id, seq=event.seq, started_at=started))


TABLES = [BenchItem.__table__, BenchEffect.__table__]
