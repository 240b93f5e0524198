"""The node registry: every process records itself and heartbeats, so operators see who runs."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

#: Insert or refresh this node's row: a process that started while the database was down
#: registers at its first successful heartbeat.
UPSERT_NODE = text(
    """
    INSERT INTO ozzy_nodes (id, kind, host, pid, version, started_at, heartbeat_at, info)
    VALUES (:id, :kind, :host, :pid, :version, :started_at, now(), CAST(:info AS jsonb))
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), info = EXCLUDED.info
    """
)


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
        from datetime import datetime, timezone

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
                conn.execute(UPSERT_NODE, params)
        except SQLAlchemyError as exc:
            log.warning("node heartbeat failed: %s", exc)
            return False
        return True

    register = heartbeat

    def stopped(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(text("UPDATE ozzy_nodes SET stopped_at = now() WHERE id = :id"), {"id": self.id})
        except SQLAlchemyError as exc:
            log.warning("could not record the node's stop: %s", exc)
