"""The node registry: every process records itself and heartbeats, so operators see who runs."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

import logging

log = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return version("ozzy")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


class Node:
    """This process in ``ozzy_nodes``: registered at start, heartbeated, marked stopped at exit."""

    def __init__(self, engine: Engine, kind: str, info: Callable[[], dict[str, Any]] = dict) -> None:
        self.engine = engine
        self.kind = kind
        self.id = uuid.uuid4()
        self._info = info

    def register(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO ozzy_nodes (id, kind, host, pid, version, info)"
                    " VALUES (:id, :kind, :host, :pid, :version, CAST(:info AS jsonb))"
                ),
                {
                    "id": self.id,
                    "kind": self.kind,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "version": package_version(),
                    "info": json.dumps(self._info(), default=str),
                },
            )

    def heartbeat(self) -> None:
        """Record that this node is alive, with its current status; failures only log."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    text("UPDATE ozzy_nodes SET heartbeat_at = now(), info = CAST(:info AS jsonb) WHERE id = :id"),
                    {"id": self.id, "info": json.dumps(self._info(), default=str)},
                )
        except SQLAlchemyError as exc:
            log.warning("node heartbeat failed: %s", exc)

    def stopped(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(text("UPDATE ozzy_nodes SET stopped_at = now() WHERE id = :id"), {"id": self.id})
        except SQLAlchemyError as exc:
            log.warning("could not record the node's stop: %s", exc)
