"""Observability: Prometheus metrics, the metrics port with its health probes, trace context.

The lowest layer of ``shared``: it imports nothing from the framework's other layers, so the outbox,
the relay, the worker and the web layer can all record into it. What reads PostgreSQL for metrics
(:mod:`shared.ops.gauges`) and what starts the metrics port per process (:mod:`shared.runtime.observe`)
live in the layers that own those concerns. OpenTelemetry is optional (the ``otel`` extra) and
imported only when tracing is configured.
"""
