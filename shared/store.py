"""The process's view of runtime settings and feature flags, behind ``shared.settings`` and
``shared.flags``.

Once the process's cluster listeners run, the values live in memory: loaded at start and updated by
a cluster-wide listener on every change event, so reading costs no database round trip. Before that
(a script, a test), each read goes to PostgreSQL.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.orm import sessionmaker

from shared import dynamic
from shared.cluster import on_every_node
from shared.errors import ConfigurationError


class Store:
    def __init__(self, session_factory: sessionmaker) -> None:
        self._sessions = session_factory
        self._cache: tuple[dict[str, Any], dict[str, bool]] | None = None
        self._lock = threading.Lock()

    def _read(self) -> tuple[dict[str, Any], dict[str, bool]]:
        with self._sessions() as session:
            return dynamic.load_all(session)

    def load(self) -> None:
        """Read everything and serve from memory from now on."""
        values = self._read()
        with self._lock:
            self._cache = values

    def apply(self, event: dynamic.SettingChanged | dynamic.FlagChanged) -> None:
        with self._lock:
            if self._cache is None:
                return
            settings, flags = dict(self._cache[0]), dict(self._cache[1])
            if isinstance(event, dynamic.SettingChanged):
                settings[event.key] = event.new_value
            else:
                flags[event.name] = event.enabled
            self._cache = (settings, flags)

    def settings(self) -> dict[str, Any]:
        cache = self._cache
        return cache[0] if cache is not None else self._read()[0]

    def flags(self) -> dict[str, bool]:
        cache = self._cache
        return cache[1] if cache is not None else self._read()[1]


_current: Store | None = None


def install(store: Store) -> None:
    global _current
    _current = store


def current_store() -> Store:
    if _current is None:
        raise ConfigurationError("no runtime: call shared.bootstrap() before reading settings or flags")
    return _current


@on_every_node(
    dynamic.SettingChanged,
    dynamic.FlagChanged,
    name="ozzy.settings_cache",
    start="now",
    on_start=lambda: current_store().load(),
)
def _refresh(event: dynamic.SettingChanged | dynamic.FlagChanged) -> None:
    current_store().apply(event)
