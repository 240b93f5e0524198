"""One exception root for the framework.

Every error raised on purpose by ``shared`` is an :class:`OzzyError`; the docstring of each class is
its default message, and a driver's error is kept as ``__cause__``.
"""

from __future__ import annotations


class OzzyError(Exception):
    """An Ozzy error occurred."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(OzzyError):
    """The settings are invalid or incomplete."""


class EventTypeError(OzzyError):
    """An event type is declared wrongly."""


class DuplicateEventType(EventTypeError):
    """Two event classes claim the same type name."""


class UnknownEventType(EventTypeError):
    """No event class is registered under this type name in this code version."""


class EventDecodeError(OzzyError):
    """A stored event payload does not validate against its event class."""


class HandlerError(OzzyError):
    """A handler is declared wrongly."""


class ConcurrencyError(OzzyError):
    """The aggregate was changed by someone else since it was loaded; nothing was saved."""


class SagaInstanceMissing(OzzyError):
    """No running saga instance for this event; the saga's policy is to park it (retried, then dead)."""

    dead_reason = "saga_instance_missing"


class PermanentError(OzzyError):
    """A handler failed in a way that retrying cannot fix; the delivery is dead-lettered at once."""
