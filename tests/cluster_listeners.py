"""Cluster-wide listeners for the cluster tests, loaded by every process through
``OZZY_HANDLER_MODULES``. Each records what its process saw, in the order it saw it."""

from __future__ import annotations

import os
import socket
import uuid

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from shared import flags
from shared import on_every_node
from shared.cluster.values import FlagChanged
from tests.domain import AccountOpened, Sighting

_engine = None


def _node() -> str:
    return os.environ.get("OZZY_NODE_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def _record(event_id, detail: str | None = None) -> None:  # type: ignore[no-untyped-def]
    global _engine
    if _engine is None:  # created on first use, never at import
        url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
        _engine = create_engine(url, pool_size=1)
    with Session(_engine) as session:
        session.add(Sighting(node=_node(), event_id=event_id, detail=detail))
        session.commit()


@on_every_node(AccountOpened, name="test.accounts_seen", start="checkpoint")
def account_seen(event: AccountOpened) -> None:
    _record(event.account_id)


@on_every_node(FlagChanged, name="test.flag_seen")
def flag_seen(event: FlagChanged) -> None:
    # Runs after the built-in cache listener: what flags.is_enabled answers here is what the process sees.
    _record(uuid.uuid5(uuid.NAMESPACE_DNS, event.name), f"{event.name}={flags.is_enabled(event.name)}")
