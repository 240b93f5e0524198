"""The process's view of runtime settings and feature flags, behind ``shared.settings`` and
``shared.flags``. The composition root installs it (:func:`install`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import sessionmaker

from shared import dynamic  # noqa: F401  (registers the settings and flag events in every process)
from shared.errors import ConfigurationError


class Store:
    """Reads settings and flags from PostgreSQL."""

    def __init__(self, session_factory: sessionmaker) -> None:
        self._sessions = session_factory

    def _load(self) -> tuple[dict[str, Any], dict[str, bool]]:
        from shared.dynamic import load_all

        with self._sessions() as session:
            return load_all(session)

    def settings(self) -> dict[str, Any]:
        return self._load()[0]

    def flags(self) -> dict[str, bool]:
        return self._load()[1]


_current: Store | None = None


def install(store: Store) -> None:
    global _current
    _current = store


def current_store() -> Store:
    if _current is None:
        raise ConfigurationError("no runtime: call shared.bootstrap() before reading settings or flags")
    return _current
