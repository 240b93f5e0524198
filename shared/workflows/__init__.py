"""Workflows on the event log: sagas (process managers) that wait for events and deadlines, and
recurring jobs. Scheduled events themselves are part of the unit of work (``uow.schedule``)."""
