"""Engine, sessions and migrations. Nothing here connects until a function is called."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from shared.config import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    """Declarative base for application tables (aggregates and read models)."""


def _json_default(value: Any) -> Any:
    # Payloads are already JSON-ready (pydantic's json mode); this covers metadata extras only.
    return str(value)


def make_engine(settings: Settings, **overrides: Any) -> Engine:
    """A pooled engine for ``settings.database_url`` (psycopg 3); connects lazily."""
    options: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_pool_size,
        "pool_pre_ping": True,
        # Fail fast when the server is unreachable instead of hanging on the OS's TCP timeout.
        "connect_args": {"connect_timeout": 5},
        "json_serializer": lambda obj: json.dumps(obj, default=_json_default, separators=(",", ":")),
    }
    options.update(overrides)
    return create_engine(settings.sqlalchemy_url, **options)


def make_session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


def alembic_config(settings: Settings) -> Config:
    """Alembic config for the framework's migrations plus each application migration package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    locations = [str(MIGRATIONS_DIR / "versions")] + _app_migration_dirs(settings)
    cfg.set_main_option("version_locations", " ".join(locations))
    cfg.set_main_option("path_separator", "space")
    cfg.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return cfg


def _app_migration_dirs(settings: Settings) -> list[str]:
    dirs = []
    for name in settings.migration_packages:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(spec.submodule_search_locations)
    return dirs


def migrate(settings: Settings, revision: str = "heads") -> None:
    """Bring the database schema up to ``revision`` (all heads by default)."""
    command.upgrade(alembic_config(settings), revision)
