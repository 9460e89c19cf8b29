"""OpenTelemetry tracing: one trace per query, from the API request through the queue into the worker.

`setup_tracing(settings, service)` is called once per process at each entry point (the API app, each
worker process after fork). Spans are always recorded, so every response and log line has a trace id;
they are exported over OTLP/HTTP when SLUICE_OTLP_ENDPOINT is set, to stderr with SLUICE_TRACE_CONSOLE,
else dropped. The trace context crosses the queue as a W3C `traceparent` Celery message header.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from sluice.settings import Settings

TRACER = "sluice"


def setup_tracing(settings: Settings, service: str) -> None:
    """Install an SDK tracer provider for this process (a no-op if one is installed already)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    if settings.trace_console:
        # One JSON object per line on the real stderr (Celery redirects sys.stderr into its logger).
        console = ConsoleSpanExporter(out=sys.__stderr__, formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(console))
    trace.set_tracer_provider(provider)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER)


def trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside a recorded span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def inject(carrier: dict) -> dict:
    """Add the current trace context (`traceparent`) to a headers dict and return it."""
    propagate.inject(carrier)
    return carrier


@contextmanager
def continued(carrier: Mapping[str, str], name: str, **attributes) -> Iterator[trace.Span]:
    """A span continuing the trace of `carrier` (message or HTTP headers), current for the block."""
    token = otel_context.attach(propagate.extract(dict(carrier)))
    try:
        with tracer().start_as_current_span(name, attributes=attributes) as span:
            yield span
    finally:
        otel_context.detach(token)
