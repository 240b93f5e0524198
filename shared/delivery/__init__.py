"""Delivery: ``@handles``, the relay's drain, messages on Redis, the broker, the worker side,
redelivery and dead letters."""
