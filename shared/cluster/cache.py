"""This process's view of runtime settings and feature flags, behind :mod:`shared.settings` and
:mod:`shared.flags`.

Once the process's cluster listeners run, the values live in memory: loaded at start and updated by
a cluster-wide listener on every change event, so reading costs no database round trip. Before that
(a script, a test), each read goes to PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from shared.cluster import values
from shared.cluster.listeners import ListenerSpec, listener
from shared.errors import ConfigurationError


class ValuesSource(Protocol):
    """Where :mod:`shared.settings` and :mod:`shared.flags` read from."""

    def settings(self) -> dict[str, Any]: ...

    def flags(self) -> dict[str, bool]: ...


class ValuesCache:
    """Settings and flags, read through to PostgreSQL until :meth:`load` is called."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory
        self._cache: tuple[dict[str, Any], dict[str, bool]] | None = None
        self._lock = threading.Lock()

    def _read(self) -> tuple[dict[str, Any], dict[str, bool]]:
        with self._sessions() as session:
            return values.load_all(session)

    def load(self) -> None:
        """Read everything and serve from memory from now on."""
        loaded = self._read()
        with self._lock:
            self._cache = loaded

    def apply(self, event: values.SettingChanged | values.FlagChanged) -> None:
        with self._lock:
            if self._cache is None:
                return
            settings, flags = dict(self._cache[0]), dict(self._cache[1])
            if isinstance(event, values.SettingChanged):
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

    def listener(self) -> ListenerSpec:
        """The cluster-wide listener that keeps this cache current (the composition root adds it
        to the process's listeners, first, so later listeners see the new value)."""
        return listener(
            self.apply, values.SettingChanged, values.FlagChanged, name="ozzy.settings_cache", start="now",
            on_start=self.load,
        )


#: The values :mod:`shared.settings` and :mod:`shared.flags` read: set by the process's composition
#: root (one per process, like Flask's ``current_app``), so business code can read a flag anywhere.
_current: ValuesSource | None = None


def install(source: ValuesSource) -> None:
    global _current
    _current = source


@contextmanager
def installed(source: ValuesSource) -> Iterator[None]:
    """``source`` is what settings and flags read within this block (the test kit's values)."""
    global _current
    previous, _current = _current, source
    try:
        yield
    finally:
        _current = previous


def current() -> ValuesSource:
    if _current is None:
        raise ConfigurationError("no runtime: call shared.bootstrap() before reading settings or flags")
    return _current
