"""Schema migrations: the framework's Alembic revisions, then each application package's."""

from __future__ import annotations

import importlib.util
from contextlib import AbstractContextManager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from shared.config import Config, StartupError
from shared.logs import quiet

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


def _quiet_alembic() -> AbstractContextManager[None]:
    """Alembic's INFO lines (plugins, context) say nothing useful about a mere check."""
    return quiet("alembic")


def schema_state(config: Config) -> tuple[set[str], set[str], set[str]]:
    """(the database's revisions, the scripts' heads, every revision the scripts know)."""
    with _quiet_alembic():
        return _schema_state(config)


def _schema_state(config: Config) -> tuple[set[str], set[str], set[str]]:
    cfg = alembic_config(config)
    scripts = ScriptDirectory.from_config(cfg)
    known = {rev.revision for rev in scripts.walk_revisions()}
    engine = create_engine(config.sqlalchemy_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()
    return current, set(scripts.get_heads()), known


def _unknown_revision(revisions: set[str]) -> StartupError:
    names = ", ".join(sorted(revisions))
    return StartupError(
        f"the database is at revision {names} which this code does not know: check out the code that made it,"
        " or run `ozzy db downgrade <revision>` with that code"
    )


def check_schema(config: Config) -> None:
    """Raise a :class:`StartupError` unless the database is at the scripts' heads. Revisions of
    other migration packages (not configured here) are tolerated once every head here is applied."""
    current, heads, known = schema_state(config)
    missing = heads - current
    if not missing:
        return
    unknown = current - known
    if unknown:
        raise _unknown_revision(unknown)
    what = "has no schema yet" if not current else "is behind this code"
    raise StartupError(f"the database {what}: run `ozzy db upgrade`")


def migrate(config: Config, revision: str = "heads") -> None:
    """Bring the database schema up to ``revision`` (all heads by default)."""
    current, _heads, known = schema_state(config)
    if current - known:
        raise _unknown_revision(current - known)
    command.upgrade(alembic_config(config), revision)


def downgrade(config: Config, revision: str) -> None:
    """Take the database schema back to ``revision`` (this code's scripts must know its revisions)."""
    current, _heads, known = schema_state(config)
    if current - known:
        raise _unknown_revision(current - known)
    command.downgrade(alembic_config(config), revision)
