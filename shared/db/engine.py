"""Engine and sessions. Nothing here connects until a function is called."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Config


def _json_default(value: Any) -> Any:
    # Payloads are already JSON-ready (pydantic's json mode); this covers metadata extras only.
    return str(value)


def make_engine(config: Config, **overrides: Any) -> Engine:
    """A pooled engine for ``config.database_url`` (psycopg 3); connects lazily."""
    options: dict[str, Any] = {
        "pool_size": config.db_pool_size,
        "max_overflow": config.db_pool_size,
        "pool_pre_ping": True,
        # Fail fast when the server is unreachable instead of hanging on the OS's TCP timeout.
        "connect_args": {"connect_timeout": 5},
        "json_serializer": lambda obj: json.dumps(obj, default=_json_default, separators=(",", ":")),
    }
    options.update(overrides)
    return create_engine(config.sqlalchemy_url, **options)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)
