"""Feature flags that operators toggle in the back office: ``flags.is_enabled("name")``."""

from __future__ import annotations

from shared.store import current_store


def is_enabled(name: str, default: bool = False) -> bool:
    """Whether flag ``name`` is on; ``default`` if no such flag exists."""
    return current_store().flags().get(name, default)
