"""The model: events, their stored form, aggregates and the unit-of-work port. No I/O here."""
