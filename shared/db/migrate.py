"""Schema migrations: the framework's Alembic revisions, then each application package's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig

from shared.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(config: Config) -> AlembicConfig:
    """Alembic config for the framework's migrations plus each application migration package."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    locations = [str(MIGRATIONS_DIR / "versions")] + _app_migration_dirs(config)
    cfg.set_main_option("version_locations", " ".join(locations))
    cfg.set_main_option("path_separator", "space")
    cfg.set_main_option("sqlalchemy.url", config.sqlalchemy_url.replace("%", "%%"))
    return cfg


def _app_migration_dirs(config: Config) -> list[str]:
    dirs: list[str] = []
    for name in config.migration_packages:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(spec.submodule_search_locations)
    return dirs


def migrate(config: Config, revision: str = "heads") -> None:
    """Bring the database schema up to ``revision`` (all heads by default)."""
    command.upgrade(alembic_config(config), revision)
