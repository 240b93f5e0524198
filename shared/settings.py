"""Runtime settings that operators change in the back office: ``settings.get("name")``.

(The process's own configuration from environment variables is :mod:`shared.config`.)
"""

from __future__ import annotations

from typing import Any

from shared.cluster.cache import current
from shared.cluster.values import UnknownSetting

_MISSING: Any = object()


def get(key: str, default: Any = _MISSING) -> Any:
    """The current value of setting ``key``; ``default`` (or UnknownSetting) if it does not exist."""
    values = current().settings()
    if key in values:
        return values[key]
    if default is _MISSING:
        raise UnknownSetting(f"no setting {key!r}")
    return default
