"""The node registry: every process records itself and heartbeats, so operators see who runs."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shared.db import sql

log = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return version("ozzy")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


class Node:
    """This process in ``ozzy_nodes``: registered at start, heartbeated, marked stopped at exit.

    A failure to write is logged and never stops the process: the registry is for operators, the
    process's work does not depend on it."""

    def __init__(self, engine: Engine, kind: str, info: Callable[[], dict[str, Any]] = dict) -> None:
        self.engine = engine
        self.kind = kind
        self.id = uuid.uuid4()
        self.started_at = datetime.now(timezone.utc)
        self._info = info

    def heartbeat(self) -> bool:
        """Record that this node is alive, with its current status; False if the write failed."""
        params = {
            "id": self.id,
            "kind": self.kind,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": package_version(),
            "started_at": self.started_at,
            "info": json.dumps(self._info(), default=str),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(sql.UPSERT_NODE, params)
        except SQLAlchemyError as exc:
            log.warning("node heartbeat failed: %s", exc)
            return False
        return True

    def beat(self) -> None:
        """A heartbeat for a scheduler (failures are logged by :meth:`heartbeat`)."""
        self.heartbeat()

    def register(self) -> None:
        """Record this node at start (a failure is retried by the next heartbeat)."""
        self.heartbeat()

    def stopped(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(sql.NODE_STOPPED, {"id": self.id})
        except SQLAlchemyError as exc:
            log.warning("could not record the node's stop: %s", exc)
