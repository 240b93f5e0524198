"""Feature flags that operators toggle in the back office: ``flags.is_enabled("name")``."""

from __future__ import annotations

from shared.cluster.cache import current


def is_enabled(name: str, default: bool = False) -> bool:
    """Whether flag ``name`` is on; ``default`` if no such flag exists."""
    return current().flags().get(name, default)
