"""The composition root (:class:`Runtime`, :func:`bootstrap`) and the process lifecycle."""

from shared.runtime.root import Runtime, bootstrap

__all__ = ["Runtime", "bootstrap"]
