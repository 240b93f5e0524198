"""Traces across processes with OpenTelemetry, when the ``otel`` extra is installed and configured.

A request's span, the unit of work's commit, the relay's dispatch of each event and each handler's
run form one trace: the trace context (W3C ``traceparent``) is written into the metadata of every
event at the moment it is recorded, so it travels in the outbox row and in every message made from
it. A handler's run is a child of the context its event carries; the events it raises carry the
run's context, and so on down the chain. The relay's dispatch of an event is a child of the same
context (a sibling of the handler's run: the relay moves the message, it does not cause the run).

Nothing here imports OpenTelemetry until :func:`configure` or :func:`configure_from_env` runs, and
every function is a cheap no-op while tracing is off (the default): without the extra, or without
``OTEL_*`` variables that ask for an exporter, nothing changes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

#: The tracer once configured; None while tracing is off.
_tracer: Any = None
#: OpenTelemetry's modules, imported by :func:`configure`.
_otel: dict[str, Any] = {}
#: Metadata keys the trace context may use (W3C trace context and baggage).
CONTEXT_KEYS = ("traceparent", "tracestate", "baggage")


def active() -> bool:
    """True while traces are recorded."""
    return _tracer is not None


def configure(provider: Any = None) -> bool:
    """Record traces with ``provider`` (an SDK ``TracerProvider``; default: the global one).
    False if OpenTelemetry is not installed."""
    global _tracer
    try:
        from opentelemetry import context, propagate, trace
    except ImportError:
        return False
    _otel.update(context=context, propagate=propagate, trace=trace)
    _tracer = (provider or trace.get_tracer_provider()).get_tracer("ozzy")
    return True


def disable() -> None:
    """Stop recording traces (tests switch tracing off again with this)."""
    global _tracer
    _tracer = None


def configure_from_env(service_name: str) -> bool:
    """Set up the SDK from the usual variables, as a process starts: ``OTEL_TRACES_EXPORTER``
    (``otlp``, ``console``, several with commas; ``otlp`` is implied by
    ``OTEL_EXPORTER_OTLP_ENDPOINT``), ``OTEL_SERVICE_NAME`` (default ``service_name``),
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SDK_DISABLED``. True if traces are now recorded."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not names and (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = "otlp"
    if not names or names == "none":
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed: pip install 'ozzy[otel]'")
        return False
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in (n.strip() for n in names.split(",")):
        exporter = _exporter(name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return configure(provider)


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        try:
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found,unused-ignore]
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs an exporter: pip install opentelemetry-exporter-otlp")
            return None
        return OTLPSpanExporter()
    log.warning("unknown OTEL_TRACES_EXPORTER %r ignored (otlp, console)", name)
    return None


def shutdown() -> None:
    """Flush what is buffered (a process stopping)."""
    if _tracer is not None:
        provider = _otel["trace"].get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


# --- the context in event metadata ------------------------------------------------------------

def add_context(metadata: dict[str, Any]) -> None:
    """Write the current trace context into an event's ``metadata`` (nothing while tracing is off)."""
    if _tracer is not None:
        _otel["propagate"].inject(metadata)


def context_of(metadata: dict[str, Any] | None) -> Any:
    """The trace context an event's metadata carries (None if it carries none)."""
    if not metadata or "traceparent" not in metadata:
        return None
    return _otel["propagate"].extract({k: metadata[k] for k in CONTEXT_KEYS if k in metadata})


# --- spans -------------------------------------------------------------------------------------

@contextmanager
def span(name: str, *, kind: str = "INTERNAL", **attributes: Any) -> Iterator[None]:
    """A span around the block, the current one inside it (nothing while tracing is off)."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, kind=_kind(kind), attributes=attributes):
        yield


def start(name: str, *, kind: str = "INTERNAL", parent: Any = None, **attributes: Any) -> Any:
    """Start a span and make it current until :func:`end` (for hooks that cannot wrap a block:
    a request's before and after, a message's before and after). None while tracing is off."""
    if _tracer is None:
        return None
    s = _tracer.start_span(name, context=parent, kind=_kind(kind), attributes=attributes)
    token = _otel["context"].attach(_otel["trace"].set_span_in_context(s))
    return s, token


def end(handle: Any, *, error: BaseException | None = None, **attributes: Any) -> None:
    """End a span from :func:`start`, recording ``error`` if given."""
    if handle is None:
        return
    s, token = handle
    try:
        if attributes:
            s.set_attributes(attributes)
        if error is not None:
            s.record_exception(error)
            s.set_status(_otel["trace"].Status(_otel["trace"].StatusCode.ERROR, type(error).__name__))
        s.end()
    finally:
        _otel["context"].detach(token)


def dispatched(events: Sequence[tuple[str, str, str]], started_ns: int) -> None:
    """The relay sent these events (``(event id, type, metadata JSON text)``) in a batch that began
    at ``started_ns``: one span per event that carries a trace context, a child of that context."""
    if _tracer is None:
        return
    ended = time.time_ns()
    for event_id, event_type, metadata in events:
        if "traceparent" not in metadata:
            continue
        parent = context_of(json.loads(metadata))
        s = _tracer.start_span(f"ozzy.relay.dispatch {event_type}", context=parent, kind=_kind("PRODUCER"),
                               start_time=started_ns,
                               attributes={"ozzy.event_id": event_id, "ozzy.event_type": event_type})
        s.end(end_time=ended)


def _kind(name: str) -> Any:
    return getattr(_otel["trace"].SpanKind, name)
