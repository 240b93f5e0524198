"""Engine and sessions. Nothing here connects until a function is called."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Config


def _json_default(value: Any) -> Any:
    # Payloads are already JSON-ready (pydantic's json mode); this covers metadata extras only.
    return str(value)


#: Set by :func:`unpinged`: checkouts in this context skip the pre-ping.
_skip_ping: ContextVar[bool] = ContextVar("ozzy_skip_ping", default=False)
#: In a pooled connection's ``info`` until its first checkout (a new connection needs no ping).
_FRESH = "ozzy_fresh"


@contextmanager
def unpinged() -> Iterator[None]:
    """Checkouts in this block (this thread or task) skip the pre-ping.

    For callers that treat a lost connection themselves (the worker retries the delivery, without
    spending its retry budget): the ping is a round trip per checkout, which on the worker's hot
    path is a round trip per event. A failure on a dead connection still invalidates the pool, so
    the retry and every later checkout get new connections."""
    token = _skip_ping.set(True)
    try:
        yield
    finally:
        _skip_ping.reset(token)


def _install_pre_ping(engine: Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, skipped inside :func:`unpinged`: a ping on every checkout
    of a connection that was used before; a dead one invalidates the pool and is replaced."""
    dialect = engine.dialect

    @event.listens_for(engine, "connect")
    def _connected(dbapi_connection: Any, record: Any) -> None:
        record.info[_FRESH] = True

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if record.info.pop(_FRESH, False) or _skip_ping.get():
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as err:
            if dialect.is_disconnect(err, dbapi_connection, None):
                raise exc.InvalidatePoolError() from err  # the pool retries with a new connection
            raise


def make_engine(config: Config, **overrides: Any) -> Engine:
    """A pooled engine for ``config.database_url`` (psycopg 3); connects lazily.

    Checkouts are pre-pinged (``pool_pre_ping``, default on), except inside :func:`unpinged`."""
    options: dict[str, Any] = {
        "pool_size": config.db_pool_size,
        "max_overflow": config.db_pool_size,
        "pool_pre_ping": True,
        # Fail fast when the server is unreachable instead of hanging on the OS's TCP timeout.
        "connect_args": {"connect_timeout": 5},
        "json_serializer": lambda obj: json.dumps(obj, default=_json_default, separators=(",", ":")),
    }
    options.update(overrides)
    pre_ping = options.pop("pool_pre_ping")
    engine = create_engine(config.sqlalchemy_url, **options)
    if pre_ping:
        _install_pre_ping(engine)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)
