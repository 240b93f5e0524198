"""Projections: read models fed by the event log in dispatch order, each with a checkpoint stored
in the transaction of its writes. Declare one with :class:`Projection` and :func:`applies`; the
relays keep them live (:class:`~shared.projections.runner.Projector`), ``ozzy projections
rebuild NAME`` replays the whole log into one, ``ozzy projections status`` shows their lag."""

from shared.projections.projection import Applied, Projection, applies, projections_in

__all__ = ["Applied", "Projection", "applies", "projections_in"]
